import Metrics

/// Records swift-metrics for one backend: counters `brokerkit_messages_total` with an
/// `event` dimension (published, delivered, acked, retried, dead_lettered) and the timer
/// `brokerkit_handler_duration` (nanoseconds), both with `backend` and `destination`.
public final class DeliveryObserver: Sendable {
    public enum Event: String, Sendable {
        case published
        case delivered
        case acked
        case retried
        case deadLettered = "dead_lettered"
    }

    public let backend: String

    public init(backend: String) { self.backend = backend }

    public func record(_ event: Event, destination: String, count: Int = 1) {
        Counter(
            label: "brokerkit_messages_total",
            dimensions: [("backend", backend), ("destination", destination), ("event", event.rawValue)]
        ).increment(by: count)
    }

    public func recordHandlerDuration(_ duration: Duration, destination: String) {
        let (seconds, attoseconds) = duration.components
        Metrics.Timer(label: "brokerkit_handler_duration", dimensions: [("backend", backend), ("destination", destination)])
            .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
