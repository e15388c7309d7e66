@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// A competing consumer on a work queue, on its own connection (`basic.qos` prefetch,
/// `basic.consume`, manual acks).
///
/// - ack: `basic.ack`.
/// - nack with a delay: a copy (same id, headers, `x-brokerkit-attempt` = next attempt) is
///   published with confirms to `<queue>.wait.<ms>.quorum` (classic `<queue>.wait.<ms>` with
///   `queue.type=classic`), whose TTL dead-letters it back to the
///   queue; then the original is acked. With no delay the copy goes straight to the queue.
/// - dead-letter: the DLQ envelope is published to `<queue>.dlq` (keeping `x-death`), then
///   the original is acked.
/// - release, and deliveries prefetched but never handed out when the consumer closes: a
///   copy with the same attempt number goes back to the queue (a `basic.nack` with requeue
///   would count a delivery on quorum queues), then the original is acked.
/// - close / crash with handed-out deliveries unsettled: the broker requeues them, and the
///   next delivery counts the attempt (`x-delivery-count`, or `redelivered` on classic queues).
final class RabbitQueueConsumer: RabbitTrackedConsumer, @unchecked Sendable {
    // `@unchecked Sendable` is safe: `consumerTag` is confined to the connection's thread;
    // everything else is immutable or inside `state`.
    let broker: RabbitBroker
    let id: UInt64
    let queue: String
    let full: String
    let options: QueueConsumerOptions
    let prefetch: Int
    let connection: AMQPConnection
    /// The queue's message counters, looked up once (see `DeliveryObserver`).
    let metrics: DeliveryObserver.Destination
    var group: String? { nil }
    private static let channel: UInt16 = 1
    private var consumerTag = ""

    private struct Buffered {
        let raw: AMQPDelivery
        let generation: UInt64
    }

    private struct State {
        /// Prefetched, not handed out yet: `buffer[bufferHead...]` (taken items are dropped in
        /// bulk, so taking one is O(1)).
        var buffer: [Buffered] = []
        var bufferHead = 0
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Delivery?, any Error>)] = []
        var nextWaiter: UInt64 = 0
        var cancelledWaiters: Set<UInt64> = []
        var closed = false
        /// False after ``stopFetching()`` (and so after ``close()``): no consumer on the
        /// broker, nothing handed out.
        var fetching = true
        var failure: BrokerError?
        /// Handed out, not settled: delivery tags of the current session.
        var held: Set<UInt64> = []
        var generation: UInt64 = 0
        /// Acks waiting for the connection's thread (see ``RabbitQueueConsumer/ack(_:generation:)``).
        var pendingAcks: [UInt64] = []
        /// The connection's pump was nudged to write `pendingAcks` and has not yet.
        var ackNudged = false
        /// Prefetched deliveries being handed back (copies published, originals not yet
        /// acked): no `multiple` ack may cover them before their copies are confirmed.
        var handingBack: Set<UInt64> = []

        mutating func takeBuffered() -> Buffered? {
            guard bufferHead < buffer.count else { return nil }
            let item = buffer[bufferHead]
            bufferHead += 1
            if bufferHead == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                bufferHead = 0
            } else if bufferHead >= 64 && bufferHead * 2 >= buffer.count {
                buffer.removeFirst(bufferHead)
                bufferHead = 0
            }
            return item
        }

        mutating func clearBuffer() -> [Buffered] {
            defer {
                buffer.removeAll()
                bufferHead = 0
            }
            return Array(buffer[bufferHead...])
        }
    }
    private let state = Mutex(State())

    init(broker: RabbitBroker, id: UInt64, queue: String, full: String, options: QueueConsumerOptions, prefetch: Int) {
        self.broker = broker
        self.id = id
        self.queue = queue
        metrics = broker.observer.destination(queue)
        self.full = full
        self.options = options
        self.prefetch = prefetch
        self.connection = AMQPConnection(
            endpoint: broker.settings.endpoint,
            name: "consumer-\(full)-\(id)",
            logger: broker.logger
        )
        connection.onOpen = { [weak self] in try self?.opened() }
        connection.onLost = { [weak self] error in self?.lost(error) }
        connection.onIncoming = { [weak self] incoming in self?.handle(incoming) }
        connection.onTurn = { [weak self] idle in self?.turn(idle: idle) }
    }

    /// Pending acks that make the connection's thread write them without waiting to go idle.
    var ackBatch: Int { max(1, min(64, prefetch / 4)) }

    func start() async throws {
        do {
            try await connection.start()
        } catch {
            await connection.close()
            throw error
        }
    }

    var inFlight: Int { state.withLock { $0.held.count } }

    // MARK: - Connection callbacks (on its thread)

    private func opened() throws {
        let generation = connection.generation
        state.withLock { s in
            s.generation = generation
            s.failure = nil
            s.pendingAcks.removeAll()  // tags of an earlier session
            s.handingBack.removeAll()
        }
        guard state.withLock({ $0.fetching }) else { return }
        try connection.qos(Self.channel, prefetch: prefetch)
        consumerTag = try connection.consume(
            Self.channel,
            queue: full,
            tag: "brokerkit-\(full)-\(id)-\(generation)",
            destination: queue
        )
    }

    private func lost(_ error: BrokerError) {
        // The broker requeues everything this session held; drop our copies.
        state.withLock { s in
            _ = s.clearBuffer()
            s.held.removeAll()
            s.pendingAcks.removeAll()
            s.handingBack.removeAll()
        }
    }

    private func handle(_ incoming: AMQPIncoming) {
        switch incoming {
        case .delivery(let raw) where raw.channel == Self.channel:
            let generation = connection.generation
            let waiter = state.withLock { s -> CheckedContinuation<Delivery?, any Error>? in
                if s.fetching, !s.waiters.isEmpty {
                    s.held.insert(raw.deliveryTag)
                    return s.waiters.removeFirst().continuation
                }
                s.buffer.append(Buffered(raw: raw, generation: generation))
                return nil
            }
            if let waiter {
                waiter.resume(returning: makeDelivery(raw, generation: generation))
            }
        case .consumerCancelled(Self.channel, _):
            fail(
                BrokerError(
                    .unknownDestination,
                    "'\(queue)' was deleted",
                    backend: AMQPError.backend,
                    destination: queue
                )
            )
        case .channelClosed(Self.channel, let code, let text):
            // Start a fresh session: the broker requeues what the channel held.
            connection.markBroken(
                AMQPError.server(
                    code: code,
                    text: text,
                    what: "consuming",
                    destination: queue,
                    url: connection.endpoint.redactedURL
                )
            )
        default:
            break
        }
    }

    private func fail(_ error: BrokerError) {
        let waiters = state.withLock { s -> [CheckedContinuation<Delivery?, any Error>] in
            s.failure = error
            defer { s.waiters.removeAll() }
            return s.waiters.map(\.continuation)
        }
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    // MARK: - Deliveries

    private func makeDelivery(_ raw: AMQPDelivery, generation: UInt64) -> Delivery {
        var (message, kept) = RabbitMessageMapping.message(from: raw)
        // Both numbers come from headers any publisher can set: bounded before they are added.
        let base = Int(message.headers.removeValue(forKey: HeaderName.attempt) ?? "") ?? 1
        let firstFailureAt = message.headers.removeValue(forKey: HeaderName.firstFailureAt).flatMap(ISO8601.parse)
        let redeliveries: Int
        if let count = raw.properties.headers[RabbitMessageMapping.deliveryCountHeader]?.intValue {
            redeliveries = Int(min(max(0, count), Int64(Delivery.maxAttempt)))
        } else {
            redeliveries = raw.redelivered ? 1 : 0
        }
        let attempt = min(min(max(1, base), Delivery.maxAttempt) + redeliveries, Delivery.maxAttempt)
        let settler = RabbitQueueSettler(
            consumer: self,
            tag: raw.deliveryTag,
            generation: generation,
            message: message,
            kept: kept,
            attempt: attempt,
            firstFailureAt: firstFailureAt
        )
        return Delivery(
            message: message,
            destination: queue,
            attempt: attempt,
            firstFailureAt: firstFailureAt,
            position: nil,
            retryPolicy: options.retryPolicy,
            backend: AMQPError.backend,
            settler: settler,
            metrics: metrics,
            defect: RabbitMessageMapping.defect(of: raw)
        )
    }

    func next() async throws -> Delivery? {
        try Task.checkCancellation()
        let waiterID = state.withLock { s -> UInt64 in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        let delivery: Delivery? = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Delivery?, any Error>) in
                enum Action {
                    case take(Buffered)
                    case end
                    case fail(any Error)
                    case wait(nudge: Bool)
                }
                let action = state.withLock { s -> Action in
                    if s.cancelledWaiters.remove(waiterID) != nil { return .fail(CancellationError()) }
                    if !s.fetching { return .end }
                    while let item = s.takeBuffered() {
                        guard item.generation == s.generation else { continue }
                        s.held.insert(item.raw.deliveryTag)
                        return .take(item)
                    }
                    if let failure = s.failure { return .fail(failure) }
                    s.waiters.append((waiterID, continuation))
                    // Nothing buffered: if the acks not yet written are what keeps the broker
                    // from sending more (its prefetch window is nearly used up), write them now.
                    let nudge =
                        !s.ackNudged && !s.pendingAcks.isEmpty
                        && s.held.count + s.pendingAcks.count + ackBatch >= prefetch
                    if nudge { s.ackNudged = true }
                    return .wait(nudge: nudge)
                }
                switch action {
                case .take(let item):
                    continuation.resume(returning: makeDelivery(item.raw, generation: item.generation))
                case .end: continuation.resume(returning: nil)
                case .fail(let error): continuation.resume(throwing: error)
                case .wait(let nudge): if nudge && connection.isWaiting { connection.nudge() }
                }
            }
        } onCancel: {
            let continuation = state.withLock { s -> CheckedContinuation<Delivery?, any Error>? in
                if let index = s.waiters.firstIndex(where: { $0.id == waiterID }) {
                    return s.waiters.remove(at: index).continuation
                }
                s.cancelledWaiters.insert(waiterID)
                return nil
            }
            continuation?.resume(throwing: CancellationError())
        }
        state.withLock { _ = $0.cancelledWaiters.remove(waiterID) }
        return delivery
    }

    /// Throws unless the delivery is still held by this consumer's current session.
    func checkHeld(_ tag: UInt64, generation: UInt64) throws {
        let held = state.withLock { $0.generation == generation && $0.held.contains(tag) && !$0.closed }
        guard held else { throw notHeld }
    }

    private var notHeld: BrokerError {
        BrokerError(
            .closed,
            "delivery is no longer held (its consumer closed or its connection dropped); the broker redelivers it",
            backend: AMQPError.backend,
            destination: queue
        )
    }

    /// `basic.ack` of a held delivery. AMQP acks have no reply, so the ack is recorded and
    /// the connection's thread writes recorded acks in batches (one `multiple` ack when it
    /// covers them all): when it has nothing left to read, when `ackBatch` are recorded, or
    /// when the app waits for deliveries that the broker holds back for want of acks. While
    /// deliveries are handed out, its wait lasts at most `ackDelay`, so an ack reaches the
    /// broker within a few milliseconds. Recording instead of writing each ack spares a
    /// thread wake-up per message; a connection that drops before the write makes the broker
    /// redeliver, as it would for an ack lost in flight.
    func ack(_ tag: UInt64, generation: UInt64) async throws {
        let recorded = state.withLock { s -> Bool? in
            guard s.generation == generation, !s.closed, s.held.remove(tag) != nil else { return nil }
            s.pendingAcks.append(tag)
            guard !s.ackNudged, s.pendingAcks.count >= ackBatch else { return false }
            s.ackNudged = true
            return true
        }
        guard let nudge = recorded else { throw notHeld }
        if nudge && connection.isWaiting { connection.nudge() }
    }

    /// Longest wait of the connection's thread while deliveries are handed out (see ``ack(_:generation:)``).
    static let ackDelay = Duration.milliseconds(5)

    /// The connection's turn (on its thread): writes recorded acks when it is about to wait or
    /// when a batch is full.
    private func turn(idle: Bool) -> Duration? {
        let waitLimit: Duration? = state.withLock { $0.held.isEmpty } ? nil : Self.ackDelay
        writeAcks(onlyFullBatch: !idle)
        return waitLimit
    }

    /// Writes the recorded acks (on the connection's thread).
    private func writeAcks(onlyFullBatch: Bool = false) {
        let (tags, lowestUnsettled, generation) = state.withLock { s -> ([UInt64], UInt64, UInt64) in
            guard !s.pendingAcks.isEmpty, !onlyFullBatch || s.pendingAcks.count >= ackBatch else { return ([], 0, 0) }
            s.ackNudged = false
            defer { s.pendingAcks.removeAll(keepingCapacity: true) }
            let firstBuffered = s.bufferHead < s.buffer.count ? s.buffer[s.bufferHead].raw.deliveryTag : .max
            let lowest = min(s.held.min() ?? .max, firstBuffered, s.handingBack.min() ?? .max)
            return (s.pendingAcks, lowest, s.generation)
        }
        guard connection.generation == generation, let highest = tags.max() else { return }
        if highest < lowestUnsettled {
            // Every delivery up to `highest` is settled: one ack covers them all.
            try? connection.ack(Self.channel, tag: highest, multiple: true)
        } else {
            for tag in tags { try? connection.ack(Self.channel, tag: tag) }
        }
    }

    /// Publishes `message` (plus `kept` headers) with confirms to `routingKey`, then acks.
    func replace(
        _ tag: UInt64,
        generation: UInt64,
        with message: Message,
        kept: AMQPTable,
        routingKey: String
    ) async throws {
        try checkHeld(tag, generation: generation)
        let outgoing = RabbitMessageMapping.outgoing(message, routingKey: routingKey, extra: kept)
        try await broker.publishConfirmed([outgoing], user: queue, full: nil)
        try await ack(tag, generation: generation)
    }

    /// `basic.nack` with requeue of a held delivery: the broker puts it back (counting a
    /// redelivery). The fallback when a copy cannot be published, so that a delivery whose
    /// settlement failed never stays unacked until the connection closes.
    /// Runs on the connection's thread, where acks are written, so that no `multiple` ack can
    /// cover the tag meanwhile.
    func requeue(_ tag: UInt64, generation: UInt64) async throws {
        let requeued = try await connection.run { [self] c -> Bool in
            let mine = self.state.withLock { s in s.generation == generation && !s.closed && s.held.remove(tag) != nil }
            guard mine, c.generation == generation else { return false }
            try c.nack(Self.channel, tag: tag, requeue: true)
            return true
        }
        if !requeued { throw notHeld }
    }

    /// Publishes copies (same attempt) of prefetched deliveries nobody took, then acks them.
    private func handBackBuffered() async {
        let leftovers = state.withLock { s -> [Buffered] in
            let generation = s.generation
            let leftovers = s.clearBuffer().filter { $0.generation == generation }
            s.handingBack.formUnion(leftovers.map(\.raw.deliveryTag))
            return leftovers
        }
        guard !leftovers.isEmpty else { return }
        let copies = leftovers.map { item -> AMQPOutgoing in
            let delivery = makeDelivery(item.raw, generation: item.generation)
            var message = delivery.message
            message.headers[HeaderName.attempt] = String(delivery.attempt)
            if let first = delivery.firstFailureAt {
                message.headers[HeaderName.firstFailureAt] = ISO8601.format(first)
            }
            let kept = RabbitMessageMapping.message(from: item.raw).kept
            return RabbitMessageMapping.outgoing(message, routingKey: full, extra: kept)
        }
        do {
            try await broker.publishConfirmed(copies, user: queue, full: nil)
            let tags = leftovers.map(\.raw.deliveryTag)
            let generation = leftovers[0].generation
            _ = try? await connection.run { c in
                guard c.generation == generation else { return }
                for tag in tags { try c.ack(Self.channel, tag: tag) }
            }
            // (Not acked because the session broke: the broker requeues them anyway.)
            state.withLock { $0.handingBack.subtract(tags) }
        } catch {
            // Their copies may not exist: they stay out of `multiple` acks for this session,
            // and the broker redelivers them when it ends.
            broker.logger.warning(
                "could not hand back \(leftovers.count) prefetched message(s) of '\(queue)': \(error); the broker redelivers them"
            )
        }
    }

    /// Cancels the broker-side consumer (after letting deliveries already on their way
    /// arrive: acks sent just before free prefetch slots that the broker refills, and a quorum
    /// queue returns what it delivers to a cancelled consumer with an attempt counted), then
    /// hands back what was prefetched but never handed out. Handed-out deliveries can still be
    /// acked: once cancelled, those acks pull in nothing new.
    func stopFetching() async {
        let waiters = state.withLock { s -> [CheckedContinuation<Delivery?, any Error>]? in
            guard s.fetching else { return nil }
            s.fetching = false
            defer { s.waiters.removeAll() }
            return s.waiters.map(\.continuation)
        }
        guard let waiters else { return }
        for waiter in waiters { waiter.resume(returning: nil) }
        _ = try? await connection.run { c in
            self.writeAcks()
            try c.drainFrames(idle: .milliseconds(40))
            try c.cancel(Self.channel, tag: self.consumerTag)
        }
        // A quorum queue may still deliver what it had checked out for us just after
        // cancel-ok: read until the connection goes quiet before handing back.
        _ = try? await connection.run { c in
            self.writeAcks()
            try c.drainFrames(idle: .milliseconds(100))
        }
        await handBackBuffered()
    }

    func close() async {
        // stopFetching() has resumed every waiting next() with nil, and no new one waits.
        await stopFetching()
        let first = state.withLock { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        guard first else { return }
        // Generous windows: under load a delivery the queue sent before cancel-ok can take
        // longer than 100 ms to arrive, and one that arrives after the connection closed is
        // returned with its delivery count raised (seen as attempts [1, 1, 2, 2] in CI).
        for quiet in [Duration.milliseconds(250), .milliseconds(150), .milliseconds(100)] {
            _ = try? await connection.run { c in
                self.writeAcks()
                try c.drainFrames(idle: quiet)
            }
            await handBackBuffered()
        }
        _ = try? await connection.run { _ in self.writeAcks() }
        await connection.close()
        broker.untrack(id)
    }
}

/// Settles a queue delivery (see ``RabbitQueueConsumer``).
struct RabbitQueueSettler: DeliverySettler {
    let consumer: RabbitQueueConsumer
    let tag: UInt64
    let generation: UInt64
    let message: Message
    let kept: AMQPTable
    let attempt: Int
    let firstFailureAt: Date?

    func ack() async throws { try await consumer.ack(tag, generation: generation) }

    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {
        try consumer.checkHeld(tag, generation: generation)
        var copy = message
        copy.headers[HeaderName.attempt] = String(nextAttempt)
        copy.headers[HeaderName.firstFailureAt] = ISO8601.format(firstFailureAt)
        let routingKey =
            delay > .milliseconds(0)
            ? try await consumer.broker.waitQueue(for: delay, full: consumer.full, user: consumer.queue) : consumer.full
        do {
            try await consumer.replace(tag, generation: generation, with: copy, kept: kept, routingKey: routingKey)
        } catch let error as BrokerError where error.code == .unknownDestination && routingKey != consumer.full {
            // The wait queue was deleted since this process declared it: declare it again, once.
            consumer.broker.admin.forgetWaitQueue(routingKey)
            let again = try await consumer.broker.waitQueue(for: delay, full: consumer.full, user: consumer.queue)
            try await consumer.replace(tag, generation: generation, with: copy, kept: kept, routingKey: again)
        }
    }

    func deadLetter(_ envelope: DeadLetterEnvelope) async throws {
        try consumer.checkHeld(tag, generation: generation)
        let admin = consumer.broker.admin
        let dlq = try await admin.ensureDLQ(consumer.full, user: consumer.queue)
        do {
            try await consumer.replace(tag, generation: generation, with: envelope.message, kept: kept, routingKey: dlq)
        } catch let error as BrokerError where error.code == .unknownDestination {
            // The DLQ was deleted since this process declared it: declare it again, once.
            admin.forgetDLQ(consumer.full)
            let again = try await admin.ensureDLQ(consumer.full, user: consumer.queue)
            try await consumer.replace(
                tag,
                generation: generation,
                with: envelope.message,
                kept: kept,
                routingKey: again
            )
        }
    }

    /// A copy with the same attempt; if the copy cannot be published, the broker requeues the
    /// delivery itself (`basic.nack`), which counts a redelivery but strands nothing.
    func release() async throws {
        var copy = message
        copy.headers[HeaderName.attempt] = String(attempt)
        if let firstFailureAt { copy.headers[HeaderName.firstFailureAt] = ISO8601.format(firstFailureAt) }
        do {
            try await consumer.replace(tag, generation: generation, with: copy, kept: kept, routingKey: consumer.full)
        } catch {
            try await consumer.requeue(tag, generation: generation)
        }
    }
}
