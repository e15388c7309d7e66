import Instrumentation
import ServiceContextModule
import Tracing

/// Carries distributed-tracing context in message headers (W3C `traceparent` or whatever the
/// bootstrapped instrument uses), so a consumer's span continues the publisher's trace.
public enum TraceContext {
    struct HeadersInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
            carrier[key] = value
        }
    }
    struct HeadersExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }

    /// Adds the current task's trace context to `headers` (existing keys are kept).
    public static func inject(into headers: inout [String: String]) {
        guard let injected = currentHeaders() else { return }
        add(injected, to: &headers)
    }

    /// Adds headers from ``currentHeaders()`` to `headers`, keeping existing keys.
    public static func add(_ injected: [String: String], to headers: inout [String: String]) {
        for (key, value) in injected where headers[key] == nil { headers[key] = value }
    }

    /// The headers ``inject(into:)`` adds for the current task's context (nil without one).
    public static func currentHeaders() -> [String: String]? {
        guard let context = ServiceContext.current else { return nil }
        var injected: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &injected, using: HeadersInjector())
        return injected
    }

    /// The trace context carried by `headers`.
    public static func extract(from headers: [String: String]) -> ServiceContext {
        var context = ServiceContext.topLevel
        InstrumentationSystem.instrument.extract(headers, into: &context, using: HeadersExtractor())
        return context
    }

    /// Whether a tracer is bootstrapped (not the no-op one). Reading it takes the
    /// instrumentation system's lock: a processor checks once when it starts, not per message.
    static var isTracing: Bool { !(InstrumentationSystem.tracer is NoOpTracer) }

    /// Runs `body` in a consumer span linked to the message's trace context.
    public static func withConsumerSpan<T: Sendable>(
        _ delivery: Delivery,
        _ body: () async throws -> T
    ) async throws -> T {
        let context = extract(from: delivery.message.headers)
        return try await withSpan("process \(delivery.destination)", context: context, ofKind: .consumer) { span in
            // Setting attributes on a span nobody records (no tracer bootstrapped) would still
            // build a dictionary per message.
            guard span.isRecording else { return try await body() }
            span.attributes["messaging.system"] = delivery.backend
            span.attributes["messaging.destination.name"] = delivery.destination
            span.attributes["messaging.message.id"] = delivery.message.id
            span.attributes["messaging.delivery.attempt"] = delivery.attempt
            return try await body()
        }
    }
}
