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
public final class OwnedConsumer: MessageConsumer {
    /// The backend's consumer (not handed out: holding it would not keep it open).
    private let consumer: any MessageConsumer
    private let closed = Atomic<Bool>(false)

    public init(_ consumer: any MessageConsumer) { self.consumer = consumer }

    public func next() async throws -> Delivery? {
        try await consumer.next()?.owned(by: self)
    }

    public func close() async {
        closed.store(true, ordering: .releasing)
        await consumer.close()
    }

    public func stopFetching() async { await consumer.stopFetching() }

    deinit {
        guard !closed.load(ordering: .acquiring) else { return }
        let consumer = self.consumer
        Task { await consumer.close() }
    }
}
