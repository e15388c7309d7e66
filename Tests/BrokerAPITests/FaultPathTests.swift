@_spi(BrokerBackend) import BrokerAPI
import BrokerConformance
import Dispatch
import Foundation
import Logging
import Synchronization
import Testing

/// Issue 22: the front's fault paths (a settlement step that fails, an unusable record, a
/// handler that outlives the shutdown timeout, a consumer that keeps failing).
@Suite("Fault paths")
struct FaultPathTests {
    /// A settler whose steps fail on demand and that records what it was asked.
    final class FlakySettler: DeliverySettler {
        let calls = Mutex<[String]>([])
        let failing: Set<String>
        init(failing: Set<String>) { self.failing = failing }
        private func step(_ name: String) throws {
            calls.withLock { $0.append(name) }
            if failing.contains(name) {
                throw BrokerError(.timeout, "\(name) did not reach the broker", backend: "test")
            }
        }
        func ack() async throws { try step("ack") }
        func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {
            try step("retry")
        }
        func deadLetter(_ envelope: DeadLetterEnvelope) async throws { try step("deadLetter:\(envelope.lastError)") }
        func release() async throws { try step("release") }
    }

    func delivery(_ settler: FlakySettler, attempt: Int = 1, defect: String? = nil, maxAttempts: Int = 3) -> Delivery {
        Delivery(
            message: Message(id: "m-\(attempt)", text: "x"),
            destination: "q",
            attempt: attempt,
            firstFailureAt: nil,
            position: nil,
            retryPolicy: RetryPolicy(maxAttempts: maxAttempts, backoff: .none),
            backend: "test",
            settler: settler,
            observer: nil,
            defect: defect
        )
    }

    /// Item 7: a nack whose retry copy (or dead letter) could not be written gave nothing
    /// back: the delivery was marked settled, its prefetch slot and broker-side hold kept
    /// until the connection closed. Now the failed step is followed by a release.
    @Test(arguments: [(1, "retry"), (3, "deadLetter:boom")])
    func aFailedNackStepGivesTheDeliveryBack(attempt: Int, failingStep: String) async throws {
        let settler = FlakySettler(failing: [failingStep])
        let delivery = delivery(settler, attempt: attempt)
        await #expect(throws: BrokerError.self) { try await delivery.nack(error: "boom") }
        #expect(settler.calls.withLock { $0 } == [failingStep, "release"])
        #expect(delivery.isSettled)
        await #expect(throws: BrokerError.self) { try await delivery.ack() }  // alreadySettled
        #expect(settler.calls.withLock { $0 } == [failingStep, "release"])
    }

    @Test func aStepThatWorksIsNotFollowedByARelease() async throws {
        let settler = FlakySettler(failing: [])
        try await delivery(settler).nack(error: "boom")
        try await delivery(settler, attempt: 2).ack()
        #expect(settler.calls.withLock { $0 } == ["retry", "ack"])
    }

    /// An attempt number read from a broker can be anything; the delivery clamps it, so that
    /// `attempt + 1` in a nack can never overflow (issue 22, item 1 crashed on it).
    @Test func aHugeAttemptNumberCannotOverflow() async throws {
        let settler = FlakySettler(failing: [])
        let huge = delivery(settler, attempt: Int.max, maxAttempts: Int.max)
        #expect(huge.attempt == Delivery.maxAttempt)
        let outcome = try await huge.nack(error: "boom")
        #expect(outcome == .retried(after: .zero, nextAttempt: Delivery.maxAttempt + 1))
    }

    /// A consumer of canned deliveries.
    final class CannedConsumer: MessageConsumer {
        let queue: Mutex<[Delivery]>
        init(_ deliveries: [Delivery]) { queue = Mutex(deliveries) }
        func next() async throws -> Delivery? { queue.withLock { $0.isEmpty ? nil : $0.removeFirst() } }
        func close() async {}
    }

    /// A record the backend could not use is dead-lettered by the front with the backend's
    /// reason and never handed to the app; the next one is.
    @Test func unusableRecordsAreDeadLetteredAndNeverHandedOut() async throws {
        let settler = FlakySettler(failing: [])
        let log = CapturedLog()
        let consumer = OwnedConsumer(
            CannedConsumer([
                delivery(settler, defect: "field 'attempt' is '99999999999999999999'"), delivery(settler, attempt: 2),
            ]),
            logger: log.logger
        )
        let first = try #require(try await consumer.next())
        #expect(first.attempt == 2 && first.defect == nil)
        #expect(
            settler.calls.withLock { $0 } == ["deadLetter:unusable record: field 'attempt' is '99999999999999999999'"]
        )
        #expect(log.lines.withLock { $0 }.contains { $0.level == .warning && $0.message.contains("field 'attempt'") })
        #expect(try await consumer.next() == nil)
    }

    /// Item 12: a handler that finished after the shutdown timeout cancelled it still
    /// succeeded; it was released, and so ran again.
    @Test func aHandlerThatFinishesAfterTheShutdownCancelIsAcked() async throws {
        let broker = try await Brokers.connect(url: "memory://fault-\(UUID().uuidString.prefix(8))")
        try await broker.publish(Message(text: "stubborn"), to: "q")
        let consumer = try await broker.consumeQueue("q")
        let started = Atomic<Bool>(false)
        let processor = DeliveryProcessor(
            consumer: consumer,
            options: .init(concurrency: 1, shutdownTimeout: .milliseconds(100))
        ) { _ in
            started.store(true, ordering: .releasing)
            // Work that does not notice cancellation (a blocking call, a C library).
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + 0.5) { continuation.resume() }
            }
        }
        let run = Task { try await processor.run() }
        while !started.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(5)) }
        processor.stop()
        try await run.value
        let stats = try await broker.stats(for: "q")
        #expect(stats.depth == 0 && stats.inFlight == 0, "the finished message went back: \(stats)")
        let again = try await broker.consumeQueue("q")
        #expect(try await again.next(timeout: .milliseconds(300)) == nil, "the finished message came again")
        await again.close()
        await broker.close()
    }

    /// A consumer that fails on every call (its queue was deleted) no longer logs five
    /// errors a second forever: the same failure is logged once, then with a count after
    /// a growing quiet period, and the fetch pauses grow.
    @Test func aConsumerThatKeepsFailingDoesNotFloodTheLog() async throws {
        final class Broken: MessageConsumer {
            let calls = Atomic<Int>(0)
            func next() async throws -> Delivery? {
                calls.add(1, ordering: .relaxed)
                throw BrokerError(
                    .unknownDestination,
                    "queue 'gone' does not exist",
                    backend: "test",
                    destination: "gone"
                )
            }
            func close() async {}
        }
        let broken = Broken()
        let log = CapturedLog()
        let processor = DeliveryProcessor(consumer: broken, options: .init(concurrency: 4), logger: log.logger) { _ in }
        let run = Task { try await processor.run() }
        try await Task.sleep(for: .milliseconds(2500))
        processor.stop()
        try await run.value
        let errors = log.lines.withLock { $0 }.filter { $0.message.contains("does not exist") }
        // 200 ms, 400, 800, 1600: at most 5 calls in 2.5 s (12 with the old fixed pause).
        #expect(broken.calls.load(ordering: .relaxed) <= 5, "\(broken.calls.load(ordering: .relaxed)) calls")
        #expect(errors.count <= 2, "\(errors.map(\.message))")
        #expect(
            errors.count == 2 ? errors[1].message.contains("times since the last report") : true,
            "\(errors.map(\.message))"
        )
    }

    @Test func failureLogCountsRepeatsAndReportsRecovery() {
        let log = CapturedLog()
        let failures = FailureLog(logger: log.logger, what: "fetching 'q'")
        var pauses: [Duration] = []
        for _ in 0..<5 { pauses.append(failures.failed("connection refused")) }
        #expect(
            pauses == [
                .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600),
            ]
        )
        failures.failed("another error")
        failures.succeeded()
        let lines = log.lines.withLock { $0 }.map(\.message)
        #expect(
            lines == [
                "fetching 'q': connection refused", "fetching 'q': another error",
                "fetching 'q': recovered after 6 failures in a row",
            ],
            "\(lines)"
        )
        #expect(failures.consecutiveFailures == 0)
    }

    struct Ping: Job {
        static let name = "fault.ping"
        var n: Int
    }

    /// Item 12: a job that ran but whose ack then failed left its idempotency key "running"
    /// for good, so its redelivery was postponed forever instead of dropped. The key is now
    /// complete once the job ran, whatever the ack does.
    @Test func aJobWhoseAckFailsStillCompletesItsKey() async throws {
        let broker = try await Brokers.connect(url: "memory://fault-\(UUID().uuidString.prefix(8))")
        let store = InMemoryIdempotencyStore()
        try await JobQueue(broker: broker, queue: "ackfail").dispatch(Ping(n: 1), idempotencyKey: "k1")
        let ran = Atomic<Int>(0)
        let worker = JobWorker(
            broker: broker,
            queue: "ackfail",
            options: .init(concurrency: 1, idempotencyStore: store)
        )
        worker.register(Ping.self) { _, _ in
            ran.add(1, ordering: .relaxed)
            await broker.close()  // the ack that follows cannot succeed
        }
        let run = Task { try await worker.run() }
        let deadline = ContinuousClock.now + .seconds(5)
        while ran.load(ordering: .relaxed) == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: .milliseconds(300))
        worker.stop()
        _ = try? await run.value
        #expect(ran.load(ordering: .relaxed) == 1)
        #expect(try await store.claim("k1") == .completed)
    }

    /// The store's own `claim` answers for a running key (a call on the concrete type once
    /// resolved to the protocol's default, which calls every refusal `completed`).
    @Test func theInMemoryStoreTellsRunningFromCompleted() async throws {
        let store = InMemoryIdempotencyStore()
        #expect(try await store.claim("a") == .claimed)
        #expect(try await store.claim("a") == .running)
        await store.complete("a")
        #expect(try await store.claim("a") == .completed)
    }
}
