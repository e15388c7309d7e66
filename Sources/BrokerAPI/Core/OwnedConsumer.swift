import Logging
import Synchronization

/// What `consumeQueue` and `consumeStream` hand the app: the backend's consumer, closed for
/// the app once it has dropped this and every delivery it handed out without calling
/// ``close()``.
///
/// A backend's consumer is kept alive by its own fetch loop and by its broker, which closes
/// it on `close()`; without this, a consumer the app forgot kept fetching (and its broker,
/// connections and threads stayed) until the process ended. Dropped, it is closed as
/// ``close()`` closes it: deliveries handed out and never settled go back for redelivery.
/// Each delivery it hands out holds it, settled or not, so a delivery outlives the consumer it
/// came from: `try await broker.consumeQueue(q).next()` returns a delivery that can still be
/// acked (and an app that keeps settled deliveries around keeps their consumer open too).
///
/// It counts what it hands out (`delivered`), and it is also where records BrokerKit cannot
/// use stop: a delivery whose backend found a
/// ``Delivery/defect`` (a field out of range, not UTF-8, too many headers…) is dead-lettered
/// here with that reason, logged, and never handed to the app; the next one is.
@_spi(BrokerBackend) public final class OwnedConsumer: MessageConsumer {
    /// The backend's consumer (not handed out: holding it would not keep it open).
    private let consumer: any MessageConsumer
    private let closed = Atomic<Bool>(false)
    private let logger: Logger
    private let failures: FailureLog
    private let onClose: @Sendable () -> Void
    /// The `delivered` counter of the destination handed out last (looked up again only when
    /// the destination changes: a lookup takes a global lock and two name hashes).
    private let counter = Mutex<(backend: String, destination: String, metrics: DeliveryObserver.Destination)?>(nil)

    /// `onClose` runs once, when the consumer is closed or dropped.
    public init(
        _ consumer: any MessageConsumer,
        logger: Logger = Logger(label: "brokerkit.consumer"),
        onClose: @escaping @Sendable () -> Void = {}
    ) {
        self.consumer = consumer
        self.logger = logger
        self.onClose = onClose
        failures = FailureLog(logger: logger, what: "dead-lettering an unusable record", level: .error)
    }

    public func next() async throws -> Delivery? {
        while true {
            guard let delivery = try await consumer.next() else { return nil }
            guard let defect = delivery.defect else {
                countDelivered(delivery)
                return delivery.owned(by: self)
            }
            await deadLetterUnusable(delivery, defect: defect)
        }
    }

    private func countDelivered(_ delivery: Delivery) {
        let metrics = counter.withLock { cached in
            if let cached, cached.destination == delivery.destination, cached.backend == delivery.backend {
                return cached.metrics
            }
            let found = DeliveryObserver.shared(for: delivery.backend).destination(delivery.destination)
            cached = (delivery.backend, delivery.destination, found)
            return found
        }
        metrics.record(.delivered)
    }

    /// Poison input never reaches the app and never stops the destination: it goes to the
    /// DLQ naming what is wrong. If even that fails, the delivery is given back (``Delivery``
    /// does so on a failed step) and comes again after a pause.
    private func deadLetterUnusable(_ delivery: Delivery, defect: String) async {
        let reason = "unusable record: \(defect)"
        do {
            try await delivery.deadLetter(reason: reason)
            logger.warning(
                "dead-lettered message '\(delivery.message.id)' of '\(delivery.destination)' at \(delivery.position.map { "\($0)" } ?? "?"): \(reason)"
            )
            failures.succeeded()
        } catch {
            try? await Task.sleep(
                for: failures.failed("message '\(delivery.message.id)' of '\(delivery.destination)': \(error)")
            )
        }
    }

    public func close() async {
        if !closed.exchange(true, ordering: .acquiringAndReleasing) { onClose() }
        await consumer.close()
    }

    public func stopFetching() async { await consumer.stopFetching() }

    deinit {
        guard !closed.load(ordering: .acquiring) else { return }
        onClose()
        let consumer = self.consumer
        Task { await consumer.close() }
    }
}
