import Metrics
import Synchronization

/// Records swift-metrics for one backend: counters `brokerkit_messages_total` with an
/// `event` dimension (published, delivered, acked, retried, dead_lettered) and the timer
/// `brokerkit_handler_duration` (nanoseconds), both with `backend` and `destination`.
///
/// Metric handles are created once per destination (the five counters together, when the
/// destination is first seen) and reused: creating them per message would cost a factory
/// lookup and an allocation on every ack. Consumers keep their destination's
/// ``Destination`` and count through it, so a delivery or an ack hashes no name.
@_spi(BrokerBackend) public final class DeliveryObserver: Sendable {
    public enum Event: String, Sendable, CaseIterable {
        case published
        case delivered
        case acked
        case retried
        case deadLettered = "dead_lettered"
    }

    public let backend: String
    private let destinations = Mutex<[String: Destination]>([:])
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

    /// The counters of one destination. Looking one up hashes its name under a lock; a
    /// consumer looks its destination up once and records through it, so counting a delivery
    /// or an ack then hashes nothing and takes no lock.
    public func destination(_ name: String) -> Destination {
        destinations.withLock { table in
            if let known = table[name] { return known }
            let destination = Destination(name: name, backend: backend)
            // Bound the cache: apps with unbounded destination names must not leak.
            if table.count > 10_000 { table.removeAll() }
            table[name] = destination
            return destination
        }
    }

    public func record(_ event: Event, destination: String, count: Int = 1) {
        self.destination(destination).record(event, count: count)
    }

    /// The `brokerkit_messages_total` counters of one destination, one per event, all made
    /// when the destination is first looked up (see ``DeliveryObserver/destination(_:)``; they
    /// read 0 until counted). Immutable afterwards, so recording takes no lock.
    public final class Destination: Sendable {
        public let name: String
        /// In `Event.allCases` order.
        private let counters: [Counter]

        init(name: String, backend: String) {
            self.name = name
            counters = Event.allCases.map { event in
                Counter(
                    label: "brokerkit_messages_total",
                    dimensions: [("backend", backend), ("destination", name), ("event", event.rawValue)]
                )
            }
        }

        public func record(_ event: Event, count: Int = 1) {
            let index =
                switch event {
                case .published: 0
                case .delivered: 1
                case .acked: 2
                case .retried: 3
                case .deadLettered: 4
                }
            counters[index].increment(by: count)
        }
    }

    public func recordHandlerDuration(_ duration: Duration, destination: String) {
        Self.record(duration, on: handlerTimer(destination))
    }

    /// The `brokerkit_handler_duration` timer of one destination (looked up under a lock: a
    /// caller that records many durations keeps it).
    func handlerTimer(_ destination: String) -> Metrics.Timer {
        timers.withLock { table -> Metrics.Timer in
            if let timer = table[destination] { return timer }
            let timer = Metrics.Timer(
                label: "brokerkit_handler_duration",
                dimensions: [("backend", backend), ("destination", destination)]
            )
            if table.count > 10_000 { table.removeAll() }
            table[destination] = timer
            return timer
        }
    }

    static func record(_ duration: Duration, on timer: Metrics.Timer) {
        let (seconds, attoseconds) = duration.components
        timer.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
