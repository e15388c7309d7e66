import Foundation
import Logging
import Metrics
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
            concurrency: Int = 1,
            orderedByKey: Bool = true,
            orderedByPartition: Bool = false,
            handlerTimeout: Duration? = nil,
            shutdownTimeout: Duration = .seconds(30)
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
    /// The workers of ``run()`` and what each is doing; see ``stop()``.
    private let workers = Mutex<[WorkerState]>([])
    /// Signalled by ``stop()`` and by the last worker to end.
    private let ended = WakeSignal()
    /// Consumer failures (a deleted queue, a broker away): logged with backoff and a count,
    /// and the fetch pauses grow, so a failure that lasts does not flood the log.
    private let fetchFailures: FailureLog

    private struct WorkerState {
        var task: Task<Void, Never>?
        /// Taking the next delivery (waiting for its turn, or in `consumer.next()`): a stop
        /// may cancel it. Once a worker starts a handler, only the shutdown timeout or a hard
        /// stop cancels it.
        var fetching = true
    }

    public init(
        consumer: any MessageConsumer,
        options: Options = Options(),
        logger: Logger = Logger(label: "brokerkit.processor"),
        handler: @escaping Handler
    ) {
        self.consumer = consumer
        self.options = options
        self.handler = handler
        self.logger = logger
        fetchFailures = FailureLog(
            logger: logger,
            what: "consumer failed",
            level: .error,
            firstPause: .milliseconds(200),
            maxPause: .seconds(5)
        )
    }

    /// Asks ``run()`` to drain and return. Safe to call more than once, from any task.
    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Workers waiting for a delivery stop waiting; running handlers go on.
        let waiting = workers.withLock { $0.filter(\.fetching).compactMap(\.task) }
        for task in waiting { task.cancel() }
        ended.signal()
    }

    /// Whether ``stop()`` was called.
    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Processes deliveries until ``stop()`` is called, the consumer ends, or the task is
    /// cancelled (a hard stop: handlers are cancelled and their deliveries released).
    public func run() async throws {
        // `concurrency` long-lived workers each take their next delivery from the consumer
        // themselves, one at a time (`turn`), so that per-key tickets follow arrival order;
        // a delivery already fetched is taken without a task switch. Each worker holds at
        // most one delivery, which bounds fetched-but-unfinished deliveries.
        let gate = KeyGate()
        let turn = AsyncSemaphore(1)
        // Checked once: a span per message costs two lock round trips and a task-local even
        // when no tracer is bootstrapped (a tracer bootstrapped later applies from the next run).
        let tracing = TraceContext.isTracing
        let live = RunningCount()
        let count = options.concurrency
        live.add(count)
        workers.withLock { $0 = Array(repeating: WorkerState(), count: count) }
        let tasks = (0..<count).map { index in
            Task { [self] in
                await work(index, turn: turn, gate: gate, tracing: tracing)
                if live.add(-1) == 0 { ended.signal() }
            }
        }
        workers.withLock { states in for (index, task) in tasks.enumerated() { states[index].task = task } }
        // A stop that came before the tasks were recorded could not cancel them.
        if isStopping { for task in tasks { task.cancel() } }

        await withTaskCancellationHandler {
            // Fetching ends (stop, or the consumer closed): stop the consumer's fetching too
            // (running handlers' acks must not pull in more), then drain with a deadline.
            while !isStopping && live.value > 0 && !Task.isCancelled { await ended.wait(timeout: .seconds(1)) }
            await consumer.stopFetching()
            let deadline = ContinuousClock.now + options.shutdownTimeout
            while live.value > 0 && ContinuousClock.now < deadline && !Task.isCancelled {
                await ended.wait(timeout: min(deadline - ContinuousClock.now, .milliseconds(50)))
            }
            if live.value > 0 {
                logger.warning("shutdown timeout reached; cancelling \(live.value) running handlers")
                for task in tasks { task.cancel() }
            }
            for task in tasks { await task.value }
        } onCancel: {
            self.stop()
            for task in tasks { task.cancel() }
        }
        await consumer.close()
    }

    /// One worker: takes a delivery in its turn (with its per-key ticket), handles it, repeats.
    private func work(_ index: Int, turn: AsyncSemaphore, gate: KeyGate, tracing: Bool) async {
        let ordered = options.orderedByKey || options.orderedByPartition
        let byPartition = options.orderedByPartition
        var timers = HandlerTimers()
        while !isStopping && !Task.isCancelled {
            let delivery: Delivery
            let ticket: UInt64?
            do {
                try await turn.acquire()
                defer { turn.release() }
                if isStopping { return }
                do {
                    guard let next = try await consumer.next() else { return }
                    delivery = next
                    if fetchFailures.consecutiveFailures > 0 { fetchFailures.succeeded() }
                } catch is CancellationError {
                    return
                } catch {
                    // Paused holding the turn: one report per pause, not one per worker.
                    try await Task.sleep(for: fetchFailures.failed(error))
                    continue
                }
                let orderKey =
                    byPartition ? "\(delivery.destination)#\(delivery.position?.partition ?? 0)" : delivery.message.key
                ticket = ordered ? gate.enqueue(orderKey) : nil
            } catch {
                return  // cancelled while waiting for the turn or pausing
            }
            // From here on a stop no longer cancels this worker; one that came first wins.
            let go = workers.withLock { states -> Bool in
                if isStopping { return false }
                states[index].fetching = false
                return true
            }
            await handle(delivery, ticket: ticket, gate: gate, tracing: tracing, timers: &timers)
            if !go { return }
            workers.withLock { $0[index].fetching = true }
        }
    }

    private func handle(
        _ delivery: Delivery,
        ticket: UInt64?,
        gate: KeyGate,
        tracing: Bool,
        timers: inout HandlerTimers
    ) async {
        if let ticket { await gate.wait(ticket) }
        if let duration = await process(delivery, tracing: tracing) {
            DeliveryObserver.record(duration, on: timers.timer(for: delivery))
        }
        if let ticket { gate.done(ticket) }
    }

    /// The handler-duration timer of the destination a worker handled last: looked up again
    /// (a global lock and two name hashes) only when the destination changes.
    private struct HandlerTimers {
        var backend = ""
        var destination = ""
        var timer: Metrics.Timer?

        mutating func timer(for delivery: Delivery) -> Metrics.Timer {
            if let timer, delivery.destination == destination, delivery.backend == backend { return timer }
            let found = DeliveryObserver.shared(for: delivery.backend).handlerTimer(delivery.destination)
            (backend, destination, timer) = (delivery.backend, delivery.destination, found)
            return found
        }
    }

    /// Runs the handler and settles the delivery; returns how long that took (nil when the
    /// delivery was given back without running).
    private func process(_ delivery: Delivery, tracing: Bool) async -> Duration? {
        if isStopping || Task.isCancelled {
            // Fetched but not started: give it back without counting an attempt.
            try? await delivery.release()
            return nil
        }
        let started = ContinuousClock.now
        do {
            if tracing {
                try await TraceContext.withConsumerSpan(delivery) {
                    try await self.runHandler(delivery)
                }
            } else {
                try await runHandler(delivery)
            }
            if delivery.isSettled { return ContinuousClock.now - started }  // the handler settled it itself
            // A handler that finished after the shutdown timeout cancelled it still succeeded:
            // ack it (releasing it would run it again).
            do {
                try await delivery.ack()
            } catch {
                // The handler succeeded; only the ack did not go through (the consumer closed,
                // or lost the message to a rebalance or a reconnect): it comes again.
                logger.warning(
                    "handled message \(delivery.message.id), but could not ack it (it will be delivered again): \(error)"
                )
            }
        } catch {
            if delivery.isSettled {
                // Settled by the handler, then failed (a failed nack or dead-letter inside a
                // JobWorker lands here too: the delivery was given back for redelivery).
                logger.warning("handler of message \(delivery.message.id) settled it, then failed: \(error)")
            } else if error is CancellationError && isStopping {
                // Cut off by the shutdown timeout: leave it for redelivery.
                try? await delivery.release()
            } else {
                do { try await delivery.nack(error: error) } catch {
                    logger.error(
                        "could not nack message \(delivery.message.id) (it was given back for redelivery): \(error)"
                    )
                }
            }
        }
        return ContinuousClock.now - started
    }

    private func runHandler(_ delivery: Delivery) async throws {
        guard let timeout = options.handlerTimeout else {
            try await handler(delivery)
            return
        }
        try await withBrokerTimeout(
            timeout,
            what: "handler for message '\(delivery.message.id)'",
            backend: delivery.backend,
            destination: delivery.destination
        ) { [handler] in
            try await handler(delivery)
        }
    }
}
