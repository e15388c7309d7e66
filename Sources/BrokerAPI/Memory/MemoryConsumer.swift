import Synchronization

/// A queue consumer or stream group member of the in-memory store.
final class MemoryConsumer: MessageConsumer {
    let store: MemoryStore
    let id: UInt64
    let destination: String
    private let waiterIDs = Atomic<UInt64>(0)
    private let closed = Atomic<Bool>(false)

    init(store: MemoryStore, id: UInt64, destination: String) {
        self.store = store
        self.id = id
        self.destination = destination
    }

    func next() async throws -> Delivery? {
        if closed.load(ordering: .acquiring) { return nil }
        // Waiter ids are unique per consumer: the consumer id in the high bits.
        let waiterID = (id << 24) | (waiterIDs.wrappingAdd(1, ordering: .relaxed).newValue & 0xFF_FFFF)
        let store = self.store
        let delivery = try await withTaskCancellationHandler {
            try await store.next(consumer: id, waiterID: waiterID)
        } onCancel: {
            Task { await store.cancelWaiter(waiterID) }
        }
        return delivery
    }

    func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        await store.closeConsumer(id)
    }

    deinit {
        // A consumer dropped without close() behaves like a crashed one: its unsettled
        // deliveries return after their lease; here we can release them right away.
        if !closed.load(ordering: .acquiring) {
            let store = self.store
            let id = self.id
            Task { await store.closeConsumer(id) }
        }
    }
}
