import Metrics
import Synchronization

/// Records swift-metrics for one backend: counters `brokerkit_messages_total` with an
/// `event` dimension (published, delivered, acked, retried, dead_lettered) and the timer
/// `brokerkit_handler_duration` (nanoseconds), both with `backend` and `destination`.
///
/// Metric handles are created once per (destination, event) and reused: creating them per
/// message would cost a factory lookup and an allocation on every ack.
public final class DeliveryObserver: Sendable {
    public enum Event: String, Sendable, CaseIterable {
        case published
        case delivered
        case acked
        case retried
        case deadLettered = "dead_lettered"
    }

    public let backend: String
    private struct Key: Hashable {
        let destination: String
        let event: Event
    }
    private let counters = Mutex<[Key: Counter]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])

    public init(backend: String) { self.backend = backend }

    private static let shared = Mutex<[String: DeliveryObserver]>([:])

    /// The process-wide observer of `backend` (so its metric handles are shared).
    public static func shared(for backend: String) -> DeliveryObserver {
        shared.withLock { table in
            if let observer = table[backend] { return observer }
            let observer = DeliveryObserver(backend: backend)
            table[backend] = observer
            return observer
        }
    }

    public func record(_ event: Event, destination: String, count: Int = 1) {
        let key = Key(destination: destination, event: event)
        let counter = counters.withLock { table -> Counter in
            if let counter = table[key] { return counter }
            let counter = Counter(
                label: "brokerkit_messages_total",
                dimensions: [("backend", backend), ("destination", destination), ("event", event.rawValue)])
            // Bound the cache: apps with unbounded destination names must not leak.
            if table.count > 10_000 { table.removeAll() }
            table[key] = counter
            return counter
        }
        counter.increment(by: count)
    }

    public func recordHandlerDuration(_ duration: Duration, destination: String) {
        let (seconds, attoseconds) = duration.components
        let timer = timers.withLock { table -> Metrics.Timer in
            if let timer = table[destination] { return timer }
            let timer = Metrics.Timer(label: "brokerkit_handler_duration", dimensions: [("backend", backend), ("destination", destination)])
            if table.count > 10_000 { table.removeAll() }
            table[destination] = timer
            return timer
        }
        timer.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
