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
    /// The backend's consumer and its one close (not handed out: holding it would not keep it
    /// open).
    private let closing: ClosingConsumer
    private var consumer: any MessageConsumer { closing.consumer }
    private let closed = Atomic<Bool>(false)
    private let logger: Logger
    private let failures: FailureLog
    /// The `delivered` counter of the destination handed out last (looked up again only when
    /// the destination changes: a lookup takes a global lock and two name hashes).
    private let counter = Mutex<(backend: String, destination: String, metrics: DeliveryObserver.Destination)?>(nil)

    /// `onClosed` runs once, when the backend's consumer has closed (after ``close()`` or once
    /// this was dropped).
    public convenience init(
        _ consumer: any MessageConsumer,
        logger: Logger = Logger(label: "brokerkit.consumer"),
        onClosed: @escaping @Sendable () -> Void = {}
    ) {
        self.init(ClosingConsumer(consumer, onClosed: onClosed), logger: logger)
    }

    init(_ closing: ClosingConsumer, logger: Logger) {
        self.closing = closing
        self.logger = logger
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
        closed.store(true, ordering: .releasing)
        await closing.close()
    }

    public func stopFetching() async { await consumer.stopFetching() }

    deinit {
        guard !closed.load(ordering: .acquiring) else { return }
        let closing = self.closing
        Task { await closing.close() }
    }
}

/// A backend consumer closed once however many ask (the app, a dropped ``OwnedConsumer``, the
/// client's own ``BrokerClient/close()``); every caller returns only when it is closed, so a
/// client never closes its driver under a consumer that is still closing (a RabbitMQ stream
/// member stores its position on close, a Kafka member leaves its group).
final class ClosingConsumer: Sendable {
    let consumer: any MessageConsumer
    private let task = Mutex<Task<Void, Never>?>(nil)
    private let onClosed: @Sendable () -> Void

    init(_ consumer: any MessageConsumer, onClosed: @escaping @Sendable () -> Void) {
        self.consumer = consumer
        self.onClosed = onClosed
    }

    func close() async {
        let closing = task.withLock { task in
            if let task { return task }
            let consumer = self.consumer
            let onClosed = self.onClosed
            let started = Task {
                await consumer.close()
                onClosed()
            }
            task = started
            return started
        }
        await closing.value
    }
}
