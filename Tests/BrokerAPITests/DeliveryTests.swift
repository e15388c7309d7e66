import BrokerAPI
import BrokerConformance
import Foundation
import Logging
import Synchronization
import Testing

@Suite("Delivery and processor")
struct DeliveryTests {
    func broker() async throws -> any Broker {
        try await Brokers.connect(url: "memory://unit-\(UUID().uuidString.prefix(8))")
    }

    @Test func settlingTwiceIsAnError() async throws {
        let broker = try await broker()
        try await broker.publish(Message(text: "once"), to: "q")
        let consumer = try await broker.consumeQueue("q")
        let delivery = try #require(try await consumer.next(timeout: .seconds(2)))
        try await delivery.ack()
        #expect(delivery.isSettled)
        await #expect(throws: BrokerError.self) { try await delivery.nack(error: "late") }
        await consumer.close()
        await broker.close()
    }

    /// Publish validation: a header with an empty name is refused before anything is sent,
    /// with an error naming the message.
    @Test func anEmptyHeaderNameIsRefusedByMessage() async throws {
        let broker = try await broker()
        let bad = Message(text: "bad", headers: ["": "x"])
        do {
            _ = try await broker.publish([Message(text: "fine", headers: ["a": "1"]), bad], to: "headers")
            Issue.record("a message with an empty header name was published")
        } catch let error as BrokerError {
            #expect(
                error.code == .invalidMessage && error.message.contains(bad.id)
                    && error.message.contains("empty header name"),
                "\(error)"
            )
        }
        let consumer = try await broker.consumeQueue("headers")
        #expect(try await consumer.next(timeout: .milliseconds(200)) == nil, "part of a refused batch was sent")
        await consumer.close()
        await broker.close()
    }

    @Test func processorNacksFailuresAndAcksSuccesses() async throws {
        let broker = try await broker()
        _ = try await broker.publish((0..<10).map { Message(text: "\($0)") }, to: "work")
        let consumer = try await broker.consumeQueue(
            "work",
            options: .init(retryPolicy: RetryPolicy(maxAttempts: 2, backoff: .fixed(.milliseconds(10))))
        )
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 3)) { delivery in
            if Int(delivery.message.text ?? "") == 3 { throw NonRetryable(CancellationError()) }
        }
        let run = Task { try await processor.run() }
        for _ in 0..<200 {
            if try await broker.stats(for: "work").depth == 0, try await broker.stats(for: "work").inFlight == 0 {
                break
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        processor.stop()
        try await run.value
        let stats = try await broker.stats(for: "work")
        #expect(stats.depth == 0 && stats.inFlight == 0 && stats.deadLettered == 1)
        await broker.close()
    }

    /// Workers wait for deliveries inside the consumer; a stop ends those waits at once,
    /// while a handler that is running when the stop comes finishes uncancelled.
    @Test func stopEndsWaitingWorkersAtOnceAndLetsRunningHandlersFinish() async throws {
        let broker = try await broker()
        try await broker.createQueue("idle")
        let consumer = try await broker.consumeQueue("idle")
        let outcome = Mutex<(started: Bool, finished: Bool, cancelled: Bool)>((false, false, false))
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 8)) { _ in
            outcome.withLock { $0.started = true }
            do {
                try await Task.sleep(for: .milliseconds(300))
                outcome.withLock { $0.finished = true }
            } catch {
                outcome.withLock { $0.cancelled = true }
            }
        }
        let run = Task { try await processor.run() }
        try await broker.publish(Message(text: "slow"), to: "idle")
        let deadline = ContinuousClock.now + .seconds(5)
        while !outcome.withLock({ $0.started }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let stopped = ContinuousClock.now
        processor.stop()
        try await run.value
        // Seven idle workers and the running handler: done when the handler is, not later.
        #expect(ContinuousClock.now - stopped < .seconds(2))
        let result = outcome.withLock { $0 }
        #expect(result.started && result.finished && !result.cancelled, "\(result)")
        #expect(try await broker.stats(for: "idle").depth == 0)
        await broker.close()
    }

    @Test func streamRetryIsInPlaceAndKeepsOrder() async throws {
        let broker = try await broker()
        try await broker.createStream("s", options: .init(partitions: 1))
        _ = try await broker.publish((0..<3).map { Message(key: "k", text: "\($0)") }, to: "s")
        let consumer = try await broker.consumeStream(
            "s",
            group: "g",
            options: .init(
                start: .earliest,
                prefetch: 1,
                retryPolicy: .init(maxAttempts: 3, backoff: .fixed(.milliseconds(30)))
            )
        )
        let first = try #require(try await consumer.next(timeout: .seconds(2)))
        try await first.nack(error: "once")
        let again = try #require(try await consumer.next(timeout: .seconds(2)))
        #expect(again.message.text == "0" && again.attempt == 2)
        try await again.ack()
        let next = try #require(try await consumer.next(timeout: .seconds(2)))
        #expect(next.message.text == "1")
        await consumer.close()
        await broker.close()
    }
}

extension DeliveryTests {
    /// A handler that succeeded but whose ack failed (here: the consumer closed meanwhile) is
    /// reported as that, not as a handler that settled the message itself.
    @Test func anAckThatFailsAfterTheHandlerSucceededIsLoggedAsSuch() async throws {
        let broker = try await broker()
        try await broker.publish(Message(text: "late ack"), to: "late")
        let consumer = try await broker.consumeQueue("late")
        let log = CapturedLog()
        let processor = DeliveryProcessor(consumer: consumer, logger: log.logger) { _ in
            await consumer.close()
        }
        try await processor.run()  // ends once the closed consumer returns nil
        let warnings = log.lines.withLock { $0 }.filter { $0.level == .warning }.map(\.message)
        #expect(
            warnings.count == 1 && warnings[0].contains("could not ack") && warnings[0].contains("closed"),
            "\(log.lines.withLock { $0 })"
        )
        let again = try await broker.consumeQueue("late")
        #expect(
            try await again.next(timeout: .seconds(2))?.message.text == "late ack",
            "the unacked message did not come back"
        )
        await again.close()
        await broker.close()
    }
}
