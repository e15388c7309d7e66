@_spi(BrokerBackend) import BrokerAPI
import Foundation
import InMemoryTracing
import Instrumentation
import Metrics
import MetricsTestKit
import Testing
import Tracing

/// Process-wide test doubles: bootstrapped once, shared by every test in the process.
enum TestObservability {
    static let metrics: TestMetrics = {
        let metrics = TestMetrics()
        MetricsSystem.bootstrap(metrics)
        return metrics
    }()
    static let tracer: InMemoryTracer = {
        let tracer = InMemoryTracer()
        InstrumentationSystem.bootstrap(tracer)
        return tracer
    }()
}

@Suite("Metrics and tracing")
struct ObservabilityTests {
    @Test func countersAndHandlerTimerAreRecorded() async throws {
        let metrics = TestObservability.metrics
        let broker = try await Brokers.connect(url: "memory://obs-\(UUID().uuidString.prefix(8))")
        let queue = "metered-\(UUID().uuidString.prefix(8))"
        _ = try await broker.publish((0..<4).map { Message(text: "\($0)") }, to: queue)
        let consumer = try await broker.consumeQueue(queue, options: .init(retryPolicy: RetryPolicy(maxAttempts: 1)))
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 2)) { delivery in
            if delivery.message.text == "3" { throw NonRetryable(CancellationError()) }
        }
        let run = Task { try await processor.run() }
        for _ in 0..<200 {
            let stats = try await broker.stats(for: queue)
            if stats.deadLettered == 1 && stats.depth == 0 && stats.inFlight == 0 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        processor.stop()
        try await run.value
        func total(_ event: String) -> Int64 {
            metrics.counterTotal(
                label: "brokerkit_messages_total",
                dimensions: [("backend", "memory"), ("destination", queue), ("event", event)]
            )
        }
        #expect(total("published") == 4)
        #expect(total("delivered") == 4)
        #expect(total("acked") == 3)
        #expect(total("dead_lettered") == 1)
        let timer = try metrics.expectTimer(
            "brokerkit_handler_duration",
            [("backend", "memory"), ("destination", queue)]
        )
        #expect(timer.values.count == 4)
        await broker.close()
    }

    /// What backends' consumers rely on: a destination's counters looked up once count in the
    /// same metric as the per-call `record(_:destination:)`, and a delivery made with them
    /// counts its ack, retry and dead-lettering there.
    @Test func destinationCountersLookedUpOnceCountInTheSameMetric() async throws {
        let metrics = TestObservability.metrics
        let observer = DeliveryObserver(backend: "counted-\(UUID().uuidString.prefix(8))")
        let queue = "q-\(UUID().uuidString.prefix(8))"
        let counters = observer.destination(queue)
        #expect(observer.destination(queue) === counters, "the lookup is cached")
        counters.record(.published, count: 3)
        counters.record(.delivered)
        counters.record(.delivered, count: 2)
        observer.record(.delivered, destination: queue)
        func make(_ id: String, policy: RetryPolicy = RetryPolicy()) -> Delivery {
            Delivery(
                message: Message(id: id, text: id),
                destination: queue,
                attempt: 1,
                firstFailureAt: nil,
                position: nil,
                retryPolicy: policy,
                backend: observer.backend,
                settler: DeliveryBufferTests.NoSettler(),
                metrics: counters
            )
        }
        try await make("a").ack()
        _ = try await make("b").nack(error: "boom", delay: .milliseconds(1))
        _ = try await make("c", policy: RetryPolicy(maxAttempts: 1)).nack(error: "boom")
        try await make("d").deadLetter(reason: "bad")
        // The observer-taking initializer still counts too.
        try await Delivery(
            message: Message(id: "e", text: "e"),
            destination: queue,
            attempt: 1,
            firstFailureAt: nil,
            position: nil,
            retryPolicy: RetryPolicy(),
            backend: observer.backend,
            settler: DeliveryBufferTests.NoSettler(),
            observer: observer
        ).ack()
        func total(_ event: String) -> Int64 {
            metrics.counterTotal(
                label: "brokerkit_messages_total",
                dimensions: [("backend", observer.backend), ("destination", queue), ("event", event)]
            )
        }
        #expect(total("published") == 3)
        #expect(total("delivered") == 4)
        #expect(total("acked") == 2)
        #expect(total("retried") == 1)
        #expect(total("dead_lettered") == 2)
    }

    /// A handler that settles its delivery itself (as `JobWorker`'s does: it acks, retries or
    /// dead-letters each job) is timed too. Its duration used to be dropped, so
    /// `brokerkit_handler_duration` never had a value for a job.
    @Test func handlersThatSettleThemselvesAreTimed() async throws {
        let metrics = TestObservability.metrics
        let broker = try await Brokers.connect(url: "memory://obs-self-\(UUID().uuidString.prefix(8))")
        let queue = "self-settled-\(UUID().uuidString.prefix(8))"
        _ = try await broker.publish((0..<3).map { Message(text: "\($0)") }, to: queue)
        let consumer = try await broker.consumeQueue(queue)
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 2)) { delivery in
            try await delivery.ack()
        }
        let run = Task { try await processor.run() }
        for _ in 0..<200 {
            let stats = try await broker.stats(for: queue)
            if stats.depth == 0 && stats.inFlight == 0 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        processor.stop()
        try await run.value
        let timer = try metrics.expectTimer(
            "brokerkit_handler_duration",
            [("backend", "memory"), ("destination", queue)]
        )
        #expect(timer.values.count == 3)
        await broker.close()
    }

    @Test func traceContextTravelsInHeadersToTheConsumerSpan() async throws {
        let tracer = TestObservability.tracer
        let broker = try await Brokers.connect(url: "memory://trace-\(UUID().uuidString.prefix(8))")
        let queue = "traced-\(UUID().uuidString.prefix(8))"
        let traceID = try await withSpan("checkout") { span -> String in
            try await broker.publish(Message(text: "order"), to: queue)
            return try #require(span.context.inMemorySpanContext?.traceID)
        }
        let consumer = try await broker.consumeQueue(queue)
        let processor = DeliveryProcessor(consumer: consumer) { delivery in
            #expect(delivery.message.headers[InMemoryTracer.traceIDKey] == traceID)
        }
        let run = Task { try await processor.run() }
        for _ in 0..<200 where !tracer.finishedSpans.contains(where: { $0.operationName == "process \(queue)" }) {
            try await Task.sleep(for: .milliseconds(10))
        }
        processor.stop()
        try await run.value
        let span = try #require(tracer.finishedSpans.first { $0.operationName == "process \(queue)" })
        #expect(span.traceID == traceID)
        #expect(span.kind == .consumer)
        await broker.close()
    }
}
