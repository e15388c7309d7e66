import Foundation
import Logging
import Synchronization

/// Runs a handler over a consumer's deliveries with bounded concurrency, per-key ordering,
/// retry / DLQ through the delivery's ``RetryPolicy``, and graceful shutdown.
///
/// - Handler returns: the delivery is acked.
/// - Handler throws: the delivery is nacked (retry with backoff, or DLQ when attempts are
///   exhausted or the error is non-retryable). A failing handler never stops the loop.
/// - ``stop()``: no new deliveries are fetched; running handlers get `shutdownTimeout` to
///   finish (then they are cancelled and their deliveries released for redelivery); fetched
///   but unstarted deliveries are released without counting an attempt.
///
/// ```swift
/// let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 8)) { delivery in
///     try await send(delivery.message)
/// }
/// try await processor.run()
/// ```
public final class DeliveryProcessor: Sendable {
    public struct Options: Sendable {
        /// Handlers running at once.
        public var concurrency: Int
        /// Deliveries with the same key are handled one at a time, in arrival order (different
        /// keys of one partition run concurrently).
        public var orderedByKey: Bool
        /// Deliveries from the same partition are handled one at a time, in arrival order
        /// (Kafka's classic model: concurrency across partitions only). Wins over
        /// ``orderedByKey``.
        public var orderedByPartition: Bool
        /// A handler running longer is cancelled and counted as a failure.
        public var handlerTimeout: Duration?
        /// How long ``stop()`` waits for running handlers.
        public var shutdownTimeout: Duration

        public init(
            concurrency: Int = 1, orderedByKey: Bool = true, orderedByPartition: Bool = false,
            handlerTimeout: Duration? = nil, shutdownTimeout: Duration = .seconds(30)
        ) {
            self.concurrency = max(1, concurrency)
            self.orderedByKey = orderedByKey
            self.orderedByPartition = orderedByPartition
            self.handlerTimeout = handlerTimeout
            self.shutdownTimeout = shutdownTimeout
        }
    }

    public typealias Handler = @Sendable (Delivery) async throws -> Void

    let consumer: any MessageConsumer
    let options: Options
    let handler: Handler
    let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private let fetcher = Mutex<Task<Void, Never>?>(nil)

    public init(
        consumer: any MessageConsumer, options: Options = Options(), logger: Logger = Logger(label: "brokerkit.processor"),
        handler: @escaping Handler
    ) {
        self.consumer = consumer
        self.options = options
        self.handler = handler
        self.logger = logger
    }

    /// Asks ``run()`` to drain and return. Safe to call more than once, from any task.
    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        fetcher.withLock { $0?.cancel() }
    }

    /// Whether ``stop()`` was called.
    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Processes deliveries until ``stop()`` is called, the consumer ends, or the task is
    /// cancelled (a hard stop: handlers are cancelled and their deliveries released).
    public func run() async throws {
        let slots = AsyncSemaphore(options.concurrency)
        let gate = KeyGate()
        // One fetch task hands deliveries, in arrival order, to `concurrency` long-lived
        // workers (no task per message). `slots` bounds fetched-but-unfinished deliveries.
        let work = WorkQueue<(Delivery, UInt64?)>()
        let consumer = self.consumer
        let ordered = options.orderedByKey || options.orderedByPartition
        let byPartition = options.orderedByPartition
        let logger = self.logger
        let task = Task {
            defer { work.finish() }
            while !Task.isCancelled {
                do {
                    try await slots.acquire()
                    guard let delivery = try await consumer.next() else { return }
                    let orderKey = byPartition
                        ? "\(delivery.destination)#\(delivery.position?.partition ?? 0)" : delivery.message.key
                    let ticket = ordered ? await gate.enqueue(orderKey) : nil
                    work.push((delivery, ticket))
                } catch is CancellationError {
                    return
                } catch {
                    logger.error("consumer failed: \(error)")
                    slots.release()
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
        }
        fetcher.withLock { $0 = task }
        if isStopping { task.cancel() }

        let workers = RunningCount()
        let idle = WakeSignal()
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for _ in 0..<options.concurrency {
                    workers.add(1)
                    group.addTask { [self] in
                        // Ends once fetching has ended and every fetched delivery is taken.
                        while let (delivery, ticket) = await work.next() {
                            await self.handle(delivery, ticket: ticket, gate: gate)
                            slots.release()
                        }
                        if workers.add(-1) == 0 { idle.signal() }
                    }
                }
                // Fetching ended (stop, consumer closed or cancelled): stop the consumer's
                // fetching too (running handlers' acks must not pull in more), then drain with
                // a deadline.
                await task.value
                await consumer.stopFetching()
                let deadline = ContinuousClock.now + options.shutdownTimeout
                while workers.value > 0 && ContinuousClock.now < deadline && !Task.isCancelled {
                    await idle.wait(timeout: min(deadline - ContinuousClock.now, .milliseconds(50)))
                }
                if workers.value > 0 {
                    logger.warning("shutdown timeout reached; cancelling \(workers.value) running handlers")
                    group.cancelAll()
                }
            }
        } onCancel: {
            self.stop()
            task.cancel()
        }
        task.cancel()
        await consumer.close()
    }

    private func handle(_ delivery: Delivery, ticket: UInt64?, gate: KeyGate) async {
        if let ticket { await gate.wait(ticket) }
        await process(delivery)
        if let ticket { await gate.done(ticket) }
    }

    private func process(_ delivery: Delivery) async {
        if isStopping || Task.isCancelled {
            // Fetched but not started: give it back without counting an attempt.
            try? await delivery.release()
            return
        }
        let started = ContinuousClock.now
        do {
            try await TraceContext.withConsumerSpan(delivery) {
                try await self.runHandler(delivery)
            }
            if delivery.isSettled { return }  // the handler settled it itself
            if Task.isCancelled && isStopping {
                try? await delivery.release()
                return
            }
            try await delivery.ack()
        } catch {
            if delivery.isSettled {
                logger.debug("handler settled message \(delivery.message.id) itself before failing: \(error)")
            } else if error is CancellationError && isStopping {
                // Cut off by the shutdown timeout: leave it for redelivery.
                try? await delivery.release()
            } else {
                do { try await delivery.nack(error: error) } catch {
                    logger.error("could not nack message \(delivery.message.id): \(error)")
                }
            }
        }
        DeliveryObserver.shared(for: delivery.backend)
            .recordHandlerDuration(ContinuousClock.now - started, destination: delivery.destination)
    }

    private func runHandler(_ delivery: Delivery) async throws {
        guard let timeout = options.handlerTimeout else {
            try await handler(delivery)
            return
        }
        try await withBrokerTimeout(timeout, what: "handler for message '\(delivery.message.id)'", backend: delivery.backend,
                              destination: delivery.destination) { [handler] in
            try await handler(delivery)
        }
    }
}

/// Runs `operation`, cancelling it and throwing ``BrokerError/Code/jobTimeout`` if it takes
/// longer than `timeout`.
public func withBrokerTimeout<T: Sendable>(
    _ timeout: Duration, what: String, backend: String? = nil, destination: String? = nil,
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw BrokerError(.jobTimeout, "\(what) exceeded its timeout of \(timeout)", backend: backend, destination: destination)
        }
        return value
    }
}

/// A counting semaphore for tasks.
final class AsyncSemaphore: Sendable {
    private struct State {
        var permits: Int
        var waiters: [(UInt64, CheckedContinuation<Void, any Error>)] = []
        var nextID: UInt64 = 0
        var cancelled: Set<UInt64> = []
    }
    private let state: Mutex<State>

    init(_ permits: Int) { state = Mutex(State(permits: permits)) }

    /// Permits not taken right now.
    var available: Int { state.withLock { $0.permits } }

    func acquire() async throws {
        let id: UInt64? = state.withLock { s in
            if s.permits > 0 {
                s.permits -= 1
                return nil
            }
            s.nextID += 1
            return s.nextID
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                // A release may have come between the check above and here: take its permit
                // instead of waiting for a release that already happened.
                enum Registration { case waiting, cancelled, acquired }
                let registration = state.withLock { s -> Registration in
                    if s.cancelled.remove(id) != nil { return .cancelled }
                    if s.permits > 0 {
                        s.permits -= 1
                        return .acquired
                    }
                    s.waiters.append((id, continuation))
                    return .waiting
                }
                switch registration {
                case .waiting: break
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .acquired: continuation.resume()
                }
            }
        } onCancel: {
            let continuation = state.withLock { s -> CheckedContinuation<Void, any Error>? in
                if let index = s.waiters.firstIndex(where: { $0.0 == id }) {
                    return s.waiters.remove(at: index).1
                }
                s.cancelled.insert(id)
                return nil
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    func release() {
        let continuation = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            if s.waiters.isEmpty {
                s.permits += 1
                return nil
            }
            return s.waiters.removeFirst().1
        }
        continuation?.resume()
    }
}

/// Serializes work per key in arrival order; different keys run in parallel.
actor KeyGate {
    private var queues: [String: [UInt64]] = [:]
    private var keyOfTicket: [UInt64: String] = [:]
    private var waiting: [UInt64: CheckedContinuation<Void, Never>] = [:]
    private var nextTicket: UInt64 = 0

    /// Takes a place in `key`'s line; `nil` keys never wait.
    func enqueue(_ key: String?) -> UInt64? {
        guard let key else { return nil }
        nextTicket += 1
        queues[key, default: []].append(nextTicket)
        keyOfTicket[nextTicket] = key
        return nextTicket
    }

    func wait(_ ticket: UInt64) async {
        guard let key = keyOfTicket[ticket], queues[key]?.first != ticket else { return }
        await withCheckedContinuation { waiting[ticket] = $0 }
    }

    func done(_ ticket: UInt64) {
        guard let key = keyOfTicket.removeValue(forKey: ticket) else { return }
        var line = queues[key] ?? []
        line.removeAll { $0 == ticket }
        if line.isEmpty {
            queues[key] = nil
        } else {
            queues[key] = line
            if let next = waiting.removeValue(forKey: line[0]) { next.resume() }
        }
    }
}

/// A FIFO handing items from one producer to several waiting consumers; `next()` returns
/// `nil` once finished and drained.
final class WorkQueue<Item: Sendable>: Sendable {
    private struct State {
        var items: [Item] = []
        var head = 0
        var waiters: [CheckedContinuation<Item?, Never>] = []
        var finished = false
    }
    private let state = Mutex(State())

    func push(_ item: Item) {
        let waiter = state.withLock { s -> CheckedContinuation<Item?, Never>? in
            if !s.waiters.isEmpty { return s.waiters.removeFirst() }
            s.items.append(item)
            return nil
        }
        waiter?.resume(returning: item)
    }

    func finish() {
        let waiters = state.withLock { s -> [CheckedContinuation<Item?, Never>] in
            s.finished = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume(returning: nil) }
    }

    func next() async -> Item? {
        if let ready = state.withLock({ take(&$0) }) { return ready }
        return await withCheckedContinuation { continuation in
            let ready = state.withLock { s -> Item?? in
                if let ready = take(&s) { return ready }
                s.waiters.append(continuation)
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// The next item, `.some(nil)` when finished and drained, `nil` when the caller must wait.
    private func take(_ s: inout State) -> Item?? {
        if s.head < s.items.count {
            let item = s.items[s.head]
            s.head += 1
            if s.head == s.items.count {
                s.items.removeAll(keepingCapacity: true)
                s.head = 0
            }
            return .some(item)
        }
        return s.finished ? .some(nil) : .none
    }
}

/// A shared counter (the processor counts its live workers with it).
final class RunningCount: Sendable {
    private let count = Atomic<Int>(0)
    @discardableResult
    func add(_ delta: Int) -> Int { count.wrappingAdd(delta, ordering: .acquiringAndReleasing).newValue }
    var value: Int { count.load(ordering: .acquiring) }
}
