@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// A member of consumer group `group` on a RabbitMQ stream queue, on its own connection.
///
/// - Position: `basic.consume` with `x-stream-offset`: the group's committed offset when it
///   has one (`.earliest` / `.latest` apply only without one), `first` / `next`, a numeric
///   offset for `.position`, or a timestamp for `.timestamp` (RabbitMQ seeks by chunk and
///   whole seconds; messages older than the requested time are skipped here).
/// - Committed position: the contiguous run of acked offsets, stored every
///   `stream.commit.interval` and on close in `<stream>.offsets.<group>` (a classic queue
///   holding one message), so a restarted consumer resumes after the last acked message.
/// - Groups: each group reads the whole stream independently. Within a group only one member
///   is active: it holds the exclusive queue `<stream>.lock.<group>`; other members stand by
///   and take over (from the committed offset) when it closes or its connection dies.
///   Members of one group therefore do not share the work (the backend does not claim
///   ``BrokerCapabilities/consumerGroups``).
/// - nack: retried in place after the backoff; the stream waits, so order holds.
/// - dead-letter: the envelope (with `x-brokerkit-group`) goes to `<stream>.dlq`.
final class RabbitStreamConsumer: RabbitTrackedConsumer, @unchecked Sendable {
    // `@unchecked Sendable` is safe: the variables marked thread-confined are only touched on
    // the connection's thread; everything else is immutable or inside `state`.
    let broker: RabbitBroker
    let id: UInt64
    let stream: String
    let full: String
    /// The stream's message counters, looked up once (see `DeliveryObserver`).
    let metrics: DeliveryObserver.Destination
    let groupName: String
    let options: StreamConsumerOptions
    let prefetch: Int
    let connection: AMQPConnection
    var group: String? { groupName }
    private static let consumeChannel: UInt16 = 1
    private static let lockChannel: UInt16 = 2
    private static let offsetChannel: UInt16 = 3

    // Thread-confined.
    private var consumerTag: String?
    private var lastLockAttempt = ContinuousClock.now
    private var activations = 0
    /// When the tick last started a commit: commits go out at most every
    /// `stream.commit.interval` (the option was parsed but every tick committed).
    private var lastCommitStarted = ContinuousClock.now - .seconds(3600)

    typealias Item = RabbitStreamItem

    private struct PendingRetry {
        var item: Item
        var attempt: Int
        var firstFailureAt: Date
        var due: ContinuousClock.Instant
    }

    private struct State {
        var buffer: [Item] = []
        var closed = false
        var failure: BrokerError?
        var active = false
        var generation: UInt64 = 0
        /// Acked offsets and the next offset to commit: every offset below it is acked (or
        /// skipped).
        var acks = ContiguousAcks()
        var committed: Int64? { acks.committed }
        /// Handed out, not settled.
        var outstanding: Set<Int64> = []
        /// Nacked messages waiting for their backoff, by offset; the stream waits with them.
        /// One per nack: a second nack within a backoff window must not replace the first,
        /// which would then never be redelivered and hold the committed position back.
        var retries: [PendingRetry] = []
        var attempts: [Int64: (attempt: Int, firstFailureAt: Date)] = [:]
        /// Skip messages older than this (timestamp seek), until the first newer one.
        var skipBefore: Date?
        /// Last committed offset stored in the offsets queue.
        var stored: Int64?
        var committing = false
    }
    private let state = Mutex(State())
    private let signal = AsyncSignal()

    init(
        broker: RabbitBroker,
        id: UInt64,
        stream: String,
        full: String,
        group: String,
        options: StreamConsumerOptions,
        prefetch: Int
    ) {
        self.broker = broker
        self.id = id
        self.stream = stream
        metrics = broker.observer.destination(stream)
        self.full = full
        self.groupName = group
        self.options = options
        self.prefetch = prefetch
        self.connection = AMQPConnection(
            endpoint: broker.settings.endpoint,
            name: "stream-\(full)-\(group)-\(id)",
            logger: broker.logger
        )
        connection.onOpen = { [weak self] in try self?.opened() }
        connection.onLost = { [weak self] _ in self?.lost() }
        connection.onIncoming = { [weak self] incoming in self?.handle(incoming) }
        connection.onTick = { [weak self] in self?.tick() }
    }

    func start() async throws {
        _ = try await broker.admin.ensureOffsetsQueue(full, group: groupName)
        do {
            try await connection.start()
        } catch {
            await connection.close()
            throw error
        }
    }

    var inFlight: Int { state.withLock { $0.outstanding.count } }

    // MARK: - Connection callbacks (on its thread)

    private func opened() throws {
        consumerTag = nil
        let generation = connection.generation
        state.withLock { s in
            s.generation = generation
            s.active = false
            s.buffer.removeAll()
            s.outstanding.removeAll()
        }
        try connection.qos(Self.consumeChannel, prefetch: prefetch)
        try tryActivate()
    }

    /// Takes the group's lock; if it is free, starts consuming from the right offset.
    private func tryActivate() throws {
        lastLockAttempt = ContinuousClock.now
        do {
            try connection.declareQueue(
                Self.lockChannel,
                RabbitAdmin.lockName(full, group: groupName),
                durable: false,
                exclusive: true,
                autoDelete: true
            )
        } catch let error as BrokerError
            where error.message.contains("405") || error.message.contains("RESOURCE_LOCKED")
        {
            return  // another member is active: stand by
        }
        let stored = try readStoredOffset()
        let first = activations == 0
        activations += 1
        let start: AMQPValue = state.withLock { s -> AMQPValue in
            s.active = true
            s.stored = stored
            s.acks.reset(to: s.committed)
            s.retries = []
            // A seek applies only to a group without a stored position: a standby taking
            // over, or a member restarting, never rewinds the group.
            if first && stored == nil {
                switch options.start {
                case .position(let position):
                    let offset = max(0, position.numericOffset ?? 0)
                    s.acks.reset(to: offset)
                    return .int64(offset)
                case .timestamp(let date):
                    s.acks.reset(to: nil)
                    s.skipBefore = date
                    return .timestamp(
                        UInt64(min(max(0, date.timeIntervalSince1970.rounded(.down) - 1), 253_402_300_799))
                    )
                case .earliest, .latest:
                    break
                }
            }
            if let stored {
                s.acks.reset(to: stored)
                return .int64(stored)
            }
            if let committed = s.committed { return .int64(committed) }
            return options.start == .latest ? .text("next") : .text("first")
        }
        consumerTag = try connection.consume(
            Self.consumeChannel,
            queue: full,
            tag: "brokerkit-\(full)-\(groupName)-\(id)-\(connection.generation)",
            arguments: AMQPTable(["x-stream-offset": start]),
            destination: stream
        )
    }

    /// The offset stored for the group (read on this connection; the message is put back).
    private func readStoredOffset() throws -> Int64? {
        let name = RabbitAdmin.offsetsName(full, group: groupName)
        guard let message = try connection.get(Self.offsetChannel, queue: name, noAck: false) else { return nil }
        try connection.nack(Self.offsetChannel, tag: message.deliveryTag, requeue: true)
        // Any program can write to the queue: only a whole number ≥ 0 is a position.
        return Int64(String(decoding: message.body, as: UTF8.self)).flatMap { $0 >= 0 ? $0 : nil }
    }

    private func lost() {
        consumerTag = nil
        state.withLock { s in
            s.active = false
            s.buffer.removeAll()
            s.outstanding.removeAll()
            s.retries.removeAll()  // the new session reads them again from the committed offset
        }
    }

    private func tick() {
        let closed = state.withLock { $0.closed }
        if closed { return }
        if consumerTag == nil, connection.isConnected, ContinuousClock.now - lastLockAttempt >= .milliseconds(500) {
            do { try tryActivate() } catch {
                connection.logger.debug("stream group '\(groupName)' could not take over yet: \(error)")
            }
        }
        if ContinuousClock.now - lastCommitStarted >= broker.settings.commitInterval, needsCommit() {
            lastCommitStarted = ContinuousClock.now
            Task { await self.commit() }
        }
    }

    private func handle(_ incoming: AMQPIncoming) {
        switch incoming {
        case .delivery(let raw) where raw.channel == Self.consumeChannel:
            guard let offset = raw.properties.headers[RabbitMessageMapping.streamOffsetHeader]?.intValue else { return }
            let message = RabbitMessageMapping.message(from: raw).message
            let generation = connection.generation
            let skip = state.withLock { s -> Bool in
                if s.committed == nil { s.acks.reset(to: offset) }
                if let committed = s.committed, offset < committed { return true }  // chunk start before our offset
                if let before = s.skipBefore {
                    if message.timestamp < before {
                        markAcked(&s, offset)
                        return true
                    }
                    s.skipBefore = nil
                }
                s.buffer.append(Item(raw: raw, message: message, offset: offset, generation: generation))
                return false
            }
            if skip {
                try? connection.ack(Self.consumeChannel, tag: raw.deliveryTag)
            } else {
                signal.fire()
            }
        case .consumerCancelled(Self.consumeChannel, _):
            state.withLock {
                $0.failure = BrokerError(
                    .unknownDestination,
                    "'\(stream)' was deleted",
                    backend: AMQPError.backend,
                    destination: stream
                )
            }
            signal.fire()
        case .channelClosed(Self.consumeChannel, let code, let text):
            connection.markBroken(
                AMQPError.server(
                    code: code,
                    text: text,
                    what: "consuming",
                    destination: stream,
                    url: connection.endpoint.redactedURL
                )
            )
        default:
            break
        }
    }

    private func markAcked(_ s: inout State, _ offset: Int64) {
        for passed in s.acks.ack(offset) { s.attempts[passed] = nil }
    }

    // MARK: - Deliveries

    private enum Step {
        case delivery(Delivery)
        case closed
        case failure(BrokerError)
        case wait(ContinuousClock.Instant?)
    }

    func next() async throws -> Delivery? {
        while true {
            try Task.checkCancellation()
            let epoch = signal.epoch
            let now = ContinuousClock.now
            let step = state.withLock { s -> Step in
                if s.closed { return .closed }
                s.retries.removeAll { $0.item.generation != s.generation }
                if !s.retries.isEmpty {
                    // Lowest offset first among the due ones; the buffer waits until none is left.
                    guard let index = s.retries.firstIndex(where: { $0.due <= now }) else {
                        return .wait(s.retries.map(\.due).min())
                    }
                    let retry = s.retries.remove(at: index)
                    s.outstanding.insert(retry.item.offset)
                    return .delivery(
                        makeDelivery(retry.item, attempt: retry.attempt, firstFailureAt: retry.firstFailureAt)
                    )
                }
                while !s.buffer.isEmpty {
                    let item = s.buffer.removeFirst()
                    guard item.generation == s.generation else { continue }
                    s.outstanding.insert(item.offset)
                    let previous = s.attempts[item.offset]
                    return .delivery(
                        makeDelivery(item, attempt: previous?.attempt ?? 1, firstFailureAt: previous?.firstFailureAt)
                    )
                }
                if let failure = s.failure { return .failure(failure) }
                return .wait(nil)
            }
            switch step {
            case .delivery(let delivery):
                return delivery
            case .closed:
                return nil
            case .failure(let error):
                throw error
            case .wait(let until):
                try await signal.wait(since: epoch, until: until)
            }
        }
    }

    private func makeDelivery(_ item: Item, attempt: Int, firstFailureAt: Date?) -> Delivery {
        Delivery(
            message: item.message,
            destination: stream,
            group: groupName,
            attempt: attempt,
            firstFailureAt: firstFailureAt,
            position: Position(partition: 0, offset: item.offset),
            retryPolicy: options.retryPolicy,
            backend: AMQPError.backend,
            settler: RabbitStreamSettler(consumer: self, item: item),
            metrics: metrics,
            defect: RabbitMessageMapping.defect(of: item.raw)
        )
    }

    fileprivate func settle(_ held: Item, outcome: RabbitStreamSettler.Outcome) async throws {
        let item: Item? = try state.withLock { s -> Item? in
            guard s.generation == held.generation, s.outstanding.remove(held.offset) != nil else {
                throw BrokerError(
                    .closed,
                    "delivery at offset \(held.offset) is no longer held (consumer closed or reconnected); it is delivered again",
                    backend: AMQPError.backend,
                    destination: stream
                )
            }
            switch outcome {
            case .ack:
                markAcked(&s, held.offset)
                return nil
            case .retry(let delay, let attempt, let firstFailureAt, let item):
                s.attempts[held.offset] = (attempt, firstFailureAt)
                let pending = PendingRetry(
                    item: item,
                    attempt: attempt,
                    firstFailureAt: firstFailureAt,
                    due: ContinuousClock.now + delay
                )
                s.retries.insert(
                    pending,
                    at: s.retries.firstIndex { $0.item.offset > item.offset } ?? s.retries.endIndex
                )
                return nil
            case .release(let item):
                return item
            }
        }
        if let item {
            state.withLock { $0.buffer.insert(item, at: 0) }
            signal.fire()
            return
        }
        if case .retry = outcome {
            signal.fire()
            return
        }
        let tag = held.raw.deliveryTag
        let generation = held.generation
        _ = try? await connection.run { c in
            guard c.generation == generation else { return }
            try c.ack(Self.consumeChannel, tag: tag)
        }
    }

    /// Throws unless the delivery is still held by this consumer's current session.
    func checkHeld(_ item: Item) throws {
        let held = state.withLock { $0.generation == item.generation && $0.outstanding.contains(item.offset) }
        guard held else {
            throw BrokerError(
                .closed,
                "delivery at offset \(item.offset) is no longer held (consumer closed or reconnected); it is delivered again",
                backend: AMQPError.backend,
                destination: stream
            )
        }
    }

    // MARK: - Commits

    private func needsCommit() -> Bool {
        state.withLock { s in
            s.active && !s.committing && s.committed != nil && s.committed != s.stored
        }
    }

    /// Stores the committed offset (one at a time, so an older value never overwrites a newer).
    func commit() async {
        guard
            let offset = state.withLock({ s -> Int64? in
                guard s.active, !s.committing, let committed = s.committed, committed != s.stored else { return nil }
                s.committing = true
                return committed
            })
        else { return }
        var properties = AMQPProperties()
        properties.deliveryMode = 2
        let outgoing = AMQPOutgoing(
            routingKey: RabbitAdmin.offsetsName(full, group: groupName),
            properties: properties,
            body: Data(String(offset).utf8)
        )
        do {
            try await broker.publishConfirmed([outgoing], user: stream, full: nil)
            state.withLock { s in
                s.stored = offset
                s.committing = false
            }
        } catch {
            state.withLock { $0.committing = false }
            broker.logger.warning("could not store the offset of group '\(groupName)' on '\(stream)': \(error)")
        }
    }

    func close() async {
        let first = state.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.closed = true
            return true
        }
        guard first else { return }
        signal.fire()
        _ = try? await connection.run { c in
            if let tag = self.consumerTag { try c.cancel(Self.consumeChannel, tag: tag) }
        }
        // Wait for a periodic commit in progress, then store the final position.
        for _ in 0..<100 where state.withLock({ $0.committing }) { try? await Task.sleep(for: .milliseconds(10)) }
        await commit()
        await connection.close()
        broker.untrack(id)
    }
}

/// A message a stream consumer read, with where it came from.
struct RabbitStreamItem: Sendable {
    var raw: AMQPDelivery
    var message: Message
    var offset: Int64
    var generation: UInt64
}

/// Settles a stream delivery (see ``RabbitStreamConsumer``).
struct RabbitStreamSettler: DeliverySettler {
    enum Outcome {
        case ack
        case retry(after: Duration, attempt: Int, firstFailureAt: Date, item: RabbitStreamItem)
        case release(RabbitStreamItem)
    }

    let consumer: RabbitStreamConsumer
    let item: RabbitStreamItem

    func ack() async throws { try await consumer.settle(item, outcome: .ack) }

    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {
        try await consumer.settle(
            item,
            outcome: .retry(after: delay, attempt: nextAttempt, firstFailureAt: firstFailureAt, item: item)
        )
    }

    func deadLetter(_ envelope: DeadLetterEnvelope) async throws {
        try consumer.checkHeld(item)
        var envelope = envelope
        envelope.original.headers[HeaderName.group] = consumer.groupName
        let dlq = try await consumer.broker.admin.ensureDLQ(consumer.full, user: consumer.stream)
        let kept = RabbitMessageMapping.message(from: item.raw).kept
        let outgoing = RabbitMessageMapping.outgoing(envelope.message, routingKey: dlq, extra: kept)
        try await consumer.broker.publishConfirmed([outgoing], user: consumer.stream, full: nil)
        try await consumer.settle(item, outcome: .ack)
    }

    func release() async throws { try await consumer.settle(item, outcome: .release(item)) }
}

/// Wakes tasks waiting for "something changed" (a delivery arrived, a retry came due, close).
/// Waiters pass the ``epoch`` they saw before checking their condition, so a ``fire()`` in
/// between is never missed.
final class AsyncSignal: Sendable {
    private struct State {
        var epoch: UInt64 = 0
        var nextID: UInt64 = 0
        var continuations: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    var epoch: UInt64 { state.withLock { $0.epoch } }

    /// Wakes every waiter.
    func fire() {
        let continuations = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.epoch &+= 1
            defer { s.continuations.removeAll() }
            return Array(s.continuations.values)
        }
        for continuation in continuations { continuation.resume() }
    }

    /// Waits for a ``fire()`` after `epoch`, or until `deadline`; throws on cancellation.
    func wait(since epoch: UInt64, until deadline: ContinuousClock.Instant?) async throws {
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        let timer = deadline.map { deadline in
            Task { [weak self] in
                try? await Task.sleep(until: deadline, clock: .continuous)
                self?.wake(id)
            }
        }
        defer { timer?.cancel() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { s -> Bool in
                    if s.epoch != epoch { return true }
                    if let deadline, deadline <= ContinuousClock.now { return true }
                    s.continuations[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            self.wake(id)
        }
        try Task.checkCancellation()
    }

    private func wake(_ id: UInt64) {
        state.withLock { $0.continuations.removeValue(forKey: id) }?.resume()
    }
}
