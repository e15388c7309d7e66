import Synchronization

/// A thread-safe FIFO of deliveries between a backend's fetch loop and `MessageConsumer.next()`.
/// `next()` waits for an element, returns `nil` once finished and drained, and throws
/// `CancellationError` when its task is cancelled (the waiting slot is freed, nothing is lost).
@_spi(BrokerBackend) public final class DeliveryBuffer: Sendable {
    private struct State {
        /// Taken slots are set to nil at once: the app owns a delivery it took, and the
        /// compaction below then never runs a delivery's deinit under the lock.
        var items: [Delivery?] = []
        var head = 0
        var waiters: [(UInt64, CheckedContinuation<Delivery?, any Error>)] = []
        var nextWaiter: UInt64 = 0
        var cancelled: Set<UInt64> = []
        var finished = false
        var failure: BrokerError?
    }
    private let state = Mutex(State())

    public init() {}

    /// Deliveries waiting to be taken.
    public var count: Int { state.withLock { $0.items.count - $0.head } }

    /// Adds a delivery (dropped if the buffer is finished; returns whether it was taken).
    @discardableResult
    public func push(_ delivery: Delivery) -> Bool {
        let waiter = state.withLock { s -> CheckedContinuation<Delivery?, any Error>?? in
            guard !s.finished else { return .none }
            if !s.waiters.isEmpty { return .some(s.waiters.removeFirst().1) }
            s.items.append(delivery)
            return .some(nil)
        }
        switch waiter {
        case .none: return false
        case .some(let continuation?):
            continuation.resume(returning: delivery)
            return true
        case .some(nil): return true
        }
    }

    /// Adds deliveries in order under one lock (waiting callers get the first ones). Returns
    /// those not taken because the buffer is finished (empty otherwise).
    @discardableResult
    public func push(contentsOf deliveries: [Delivery]) -> [Delivery] {
        guard !deliveries.isEmpty else { return [] }
        let (handed, rejected) = state.withLock {
            s -> ([(CheckedContinuation<Delivery?, any Error>, Delivery)], [Delivery]) in
            guard !s.finished else { return ([], deliveries) }
            var handed: [(CheckedContinuation<Delivery?, any Error>, Delivery)] = []
            var index = 0
            while index < deliveries.count && !s.waiters.isEmpty {
                handed.append((s.waiters.removeFirst().1, deliveries[index]))
                index += 1
            }
            s.items.append(contentsOf: deliveries[index...].lazy.map { Optional($0) })
            return (handed, [])
        }
        for (continuation, delivery) in handed { continuation.resume(returning: delivery) }
        return rejected
    }

    /// Takes back the deliveries not yet taken that match `belongs`, in order (the rest stay,
    /// in order): see ``takeAll()``.
    public func take(where belongs: (Delivery) -> Bool) -> [Delivery] {
        state.withLock { s -> [Delivery] in
            var taken: [Delivery] = []
            var kept: [Delivery?] = []
            for case let item? in s.items[s.head...] {
                if belongs(item) { taken.append(item) } else { kept.append(item) }
            }
            guard !taken.isEmpty else { return [] }
            s.items = kept
            s.head = 0
            return taken
        }
    }

    /// Takes back every delivery not yet taken, in order, without finishing the buffer: a
    /// backend whose entry waits for an in-place retry holds the later ones back, so they are
    /// handed out after it (the order of a stream partition holds).
    public func takeAll() -> [Delivery] {
        state.withLock { s -> [Delivery] in
            let left = s.items[s.head...].compactMap { $0 }
            s.items = []
            s.head = 0
            return left
        }
    }

    /// Ends the buffer: waiters get `nil` (or `error`); returns what was still buffered.
    @discardableResult
    public func finish(error: BrokerError? = nil) -> [Delivery] {
        let (waiters, left) = state.withLock { s -> ([CheckedContinuation<Delivery?, any Error>], [Delivery]) in
            s.finished = true
            s.failure = error
            let waiters = s.waiters.map(\.1)
            s.waiters = []
            let left = s.items[s.head...].compactMap { $0 }
            s.items = []
            s.head = 0
            return (waiters, left)
        }
        for waiter in waiters {
            if let error { waiter.resume(throwing: error) } else { waiter.resume(returning: nil) }
        }
        return left
    }

    public var isFinished: Bool { state.withLock { $0.finished } }

    /// The next delivery; waits for one.
    public func next() async throws -> Delivery? {
        enum Immediate {
            case item(Delivery)
            case end
            case error(BrokerError)
            case wait(UInt64)
        }
        let immediate = state.withLock { s -> Immediate in
            if s.head < s.items.count, let item = s.items[s.head].take() {
                s.head += 1
                if s.head > 256 && s.head * 2 > s.items.count {
                    s.items.removeFirst(s.head)
                    s.head = 0
                }
                return .item(item)
            }
            if s.finished { return s.failure.map { .error($0) } ?? .end }
            s.nextWaiter += 1
            return .wait(s.nextWaiter)
        }
        switch immediate {
        case .item(let delivery): return delivery
        case .end: return nil
        case .error(let error): throw error
        case .wait(let id):
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    enum Registration {
                        case registered, cancelled
                        case item(Delivery)
                        case end
                        case error(BrokerError)
                    }
                    let registration = state.withLock { s -> Registration in
                        if s.cancelled.remove(id) != nil { return .cancelled }
                        if s.head < s.items.count, let item = s.items[s.head].take() {
                            s.head += 1
                            return .item(item)
                        }
                        if s.finished { return s.failure.map { .error($0) } ?? .end }
                        s.waiters.append((id, continuation))
                        return .registered
                    }
                    switch registration {
                    case .registered: break
                    case .cancelled: continuation.resume(throwing: CancellationError())
                    case .item(let delivery): continuation.resume(returning: delivery)
                    case .end: continuation.resume(returning: nil)
                    case .error(let error): continuation.resume(throwing: error)
                    }
                }
            } onCancel: {
                let continuation = state.withLock { s -> CheckedContinuation<Delivery?, any Error>? in
                    if let index = s.waiters.firstIndex(where: { $0.0 == id }) { return s.waiters.remove(at: index).1 }
                    s.cancelled.insert(id)
                    return nil
                }
                continuation?.resume(throwing: CancellationError())
            }
        }
    }
}

/// Wakes a loop that waits for "something changed" (capacity freed, a due time reached),
/// with a timeout so the loop also runs periodic work.
@_spi(BrokerBackend) public final class WakeSignal: Sendable {
    private let state = Mutex<(pending: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    public init() {}

    /// Wakes the waiter (or the next wait call).
    public func signal() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let waiter = s.waiter {
                s.waiter = nil
                return waiter
            }
            s.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Waits for a signal or `timeout`, whichever comes first. One waiter at a time.
    public func wait(timeout: Duration) async {
        let already = state.withLock { s -> Bool in
            if s.pending {
                s.pending = false
                return true
            }
            return false
        }
        if already { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let fire = self.state.withLock { s -> Bool in
                        if s.pending {
                            s.pending = false
                            return true
                        }
                        s.waiter = continuation
                        return false
                    }
                    if fire { continuation.resume() }
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                if !Task.isCancelled { self.signal() }
            }
            await group.next()
            group.cancelAll()
            await group.waitForAll()
            self.state.withLock { s in s.pending = false }
        }
    }
}
