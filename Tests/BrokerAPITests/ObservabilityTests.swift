import BrokerAPI
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
                label: "brokerkit_messages_total", dimensions: [("backend", "memory"), ("destination", queue), ("event", event)])
        }
        #expect(total("published") == 4)
        #expect(total("delivered") == 4)
        #expect(total("acked") == 3)
        #expect(total("dead_lettered") == 1)
        let timer = try metrics.expectTimer("brokerkit_handler_duration", [("backend", "memory"), ("destination", queue)])
        #expect(timer.values.count == 4)
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
