@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// The fetch loop shared by queue consumers and stream group members: a dedicated hiredis
/// connection (its own thread) runs XREADGROUP BLOCK, claims expired or released entries, and
/// fills a ``DeliveryBuffer`` up to the prefetch bound. Settlement commands go through the
/// broker's main connection so they never wait behind a blocking read.
/// Mode-specific steps live in `RedisQueueConsumer.swift` and `RedisStreamConsumer.swift`.
final class RedisConsumer: MessageConsumer, Sendable {
    enum Mode: Sendable {
        case queue(QueueConsumerOptions)
        case stream(group: String, StreamConsumerOptions)
    }

    struct Held: Sendable {
        let entry: RedisMessageMapping.Entry
        let attempt: Int
    }

    struct State {
        /// Buffered + delivered-but-unsettled entries (bounded by prefetch).
        var outstanding = 0
        /// Delivered to the app, not settled yet, by entry id.
        var unsettled: [String: Held] = [:]
        /// Stream in-place retries waiting for their backoff: no new reads meanwhile.
        var pendingRetries = 0
        var closed = false
        /// Entries a read returned while closing: never seen by the app, given back on close.
        var late: [Held] = []
        /// Acked by the app, not yet sent (see ``RedisConsumer/ackEntry(_:)``).
        var pendingAcks: [String] = []
        /// Whether a flush of `pendingAcks` is running.
        var flushing = false
        /// Callers of ``RedisConsumer/acksSent()`` waiting for the flush to finish.
        var flushWaiters: [CheckedContinuation<Void, Never>] = []
        /// Stream deliveries fetched after an entry that waits for its in-place retry: taken
        /// back from the buffer and handed out again after it, so order holds.
        var heldBack: [Delivery] = []
        /// Stream entries waiting for their in-place retry: still this member's, so their
        /// leases are renewed and a claim does not hand them out again.
        var retrying: Set<String> = []
    }

    let broker: RedisBroker
    let destination: String
    let key: String
    let mode: Mode
    let name: String
    let client: RedisClient
    let buffer = DeliveryBuffer()
    let wake = WakeSignal()
    let state = Mutex(State())
    private let loopTask = Mutex<Task<Void, Never>?>(nil)
    /// The destination's message counters, looked up once (see `DeliveryObserver`).
    let metrics: DeliveryObserver.Destination
    /// Failures of the fetch loop and of moving due entries, logged with backoff.
    let loopFailures: FailureLog
    let moveFailures: FailureLog
    let renewFailures: FailureLog

    init(broker: RedisBroker, destination: String, key: String, mode: Mode) {
        self.broker = broker
        self.destination = destination
        metrics = broker.observer.destination(destination)
        self.key = key
        self.mode = mode
        self.name = RedisBroker.consumerName()
        self.client = broker.makeClient(name: "consumer-\(destination)")
        loopFailures = FailureLog(logger: broker.logger, what: "redis consumer of '\(destination)'")
        moveFailures = FailureLog(
            logger: broker.logger,
            what: "redis: moving due retries of '\(destination)'",
            level: .error
        )
        renewFailures = FailureLog(logger: broker.logger, what: "redis consumer of '\(destination)': renewing leases")
    }

    var group: String {
        switch mode {
        case .queue: return RedisBroker.queueGroup
        case .stream(let group, _): return group
        }
    }

    var prefetch: Int {
        switch mode {
        case .queue(let options): return options.prefetch
        case .stream(_, let options): return options.prefetch
        }
    }

    var retryPolicy: RetryPolicy {
        switch mode {
        case .queue(let options): return options.retryPolicy
        case .stream(_, let options): return options.retryPolicy
        }
    }

    /// How long an unacked entry may idle before another consumer claims it.
    var lease: Duration {
        switch mode {
        case .queue(let options): return options.visibilityTimeout
        case .stream: return broker.settings.streamLease
        }
    }

    var isQueue: Bool { if case .queue = mode { return true } else { return false } }

    func start() async throws {
        try await client.connect()
        try await prepareGroup()
        let task = Task { [self] in await self.loop() }
        loopTask.withLock { $0 = task }
    }

    func next() async throws -> Delivery? { try await buffer.next() }

    // MARK: - Loop

    /// How often the leases of held entries are renewed: a third of this consumer's lease, and
    /// at least every `claim.interval`, so that another consumer with a shorter lease than
    /// this one (it claims after its own) does not take them either.
    var renewInterval: Duration { max(.milliseconds(50), min(lease / 3, broker.settings.claimInterval)) }

    private func loop() async {
        var lastClaim = ContinuousClock.now - .seconds(3600)
        var lastMove = ContinuousClock.now - .seconds(3600)
        var lastRenew = ContinuousClock.now
        var nextDue: Date?
        // Refill in batches: wait until half the prefetch window is free, unless the app has
        // nothing buffered (then any free slot is worth a read).
        let refillAt = max(1, prefetch / 2)
        while !Task.isCancelled {
            if ContinuousClock.now - lastRenew >= renewInterval {
                lastRenew = ContinuousClock.now
                await renewLeases()
            }
            let (capacity, holding, closed) = state.withLock {
                ($0.closed ? 0 : prefetch - $0.outstanding, $0.pendingRetries > 0, $0.closed)
            }
            if closed { return }
            if capacity <= 0 || holding || (capacity < refillAt && buffer.count > 0) {
                await wake.wait(timeout: broker.settings.consumerBlock)
                continue
            }
            do {
                if ContinuousClock.now - lastClaim >= broker.settings.claimInterval {
                    lastClaim = ContinuousClock.now
                    let claimed = try await claimEntries(limit: capacity)
                    if !claimed.isEmpty {
                        deliver(claimed)
                        continue
                    }
                }
                var block = broker.settings.consumerBlock
                if let nextDue {
                    let untilDue = Duration.interval(min(3600, max(0.001, nextDue.timeIntervalSinceNow)))
                    block = min(block, untilDue)
                }
                let blockMillis = max(1, Int(block.timeInterval * 1000))
                var commands: [[RedisArgument]] = []
                // Move due retries / delayed messages at most every 50 ms, or as soon as one is due.
                let moveDue =
                    isQueue
                    && (ContinuousClock.now - lastMove >= .milliseconds(50) || nextDue.map { $0 <= Date() } == true)
                if moveDue {
                    lastMove = ContinuousClock.now
                    commands.append([
                        "EVAL", RedisArgument(RedisScripts.moveDue), "4", RedisArgument(key),
                        RedisArgument(key + ":retry"),
                        RedisArgument(key + ":delay"), RedisArgument(key + ":dlq"),
                        RedisArgument(Int64(Date().timeIntervalSince1970 * 1000)),
                        "100", RedisArgument(destination),
                    ])
                }
                commands.append([
                    "XREADGROUP", "GROUP", RedisArgument(group), RedisArgument(name), "COUNT", RedisArgument(capacity),
                    "BLOCK", RedisArgument(blockMillis), "STREAMS", RedisArgument(key), ">",
                ])
                let replies = try await client.pipeline(
                    commands,
                    socketTimeout: block + broker.settings.operationTimeout
                )
                if moveDue, let moved = replies[0].array, moved.count == 3 {
                    let due = Double(moved[1].text ?? "-1") ?? -1
                    // A score is any double another program chose: only a finite one counts.
                    nextDue = due < 0 || !due.isFinite ? nil : Date(timeIntervalSince1970: min(due, 1e15) / 1000)
                    if let dead = moved[2].integer, dead > 0 {
                        broker.logger.warning(
                            "redis: \(dead) unusable members of '\(key):retry' / '\(key):delay' moved to '\(key):dlq' (see their x-brokerkit-last-error)"
                        )
                    }
                    moveFailures.succeeded()
                } else if moveDue, let error = replies[0].errorText {
                    moveFailures.failed(error)
                }
                let read = replies[replies.count - 1]
                if let error = read.errorText {
                    if error.hasPrefix("NOGROUP") {
                        try await prepareGroup()  // the stream or group vanished (restart without persistence)
                        continue
                    }
                    throw RedisClient.map(.server(error), server: broker.settings.server, destination: destination)
                }
                loopFailures.succeeded()
                guard let streams = read.array, let first = streams.first?.array, first.count == 2 else { continue }
                let (entries, deleted) = RedisMessageMapping.entries(first[1])
                if !deleted.isEmpty { try await acknowledgeDeleted(deleted) }
                deliver(entries.map { ($0, 1) })
            } catch {
                if Task.isCancelled || state.withLock({ $0.closed }) { return }
                try? await Task.sleep(for: min(.seconds(1), loopFailures.failed("\(error); retrying")))
            }
        }
    }

    /// Hands entries to the app; `deliveryCount` is Redis's count for the entry (any
    /// number: `XCLAIM … RETRYCOUNT` sets it), so the sum is bounded, never trapping.
    func deliver(_ entries: [(RedisMessageMapping.Entry, Int)]) {
        hand(
            entries.map { entry, deliveryCount in
                let redeliveries = min(max(0, deliveryCount - 1), Delivery.maxAttempt)
                return Held(entry: entry, attempt: min(entry.attempt + redeliveries, Delivery.maxAttempt))
            }
        )
    }

    /// Hands out a retried stream entry: never held back behind another pending retry.
    func push(_ held: Held) { hand([held], retried: true) }

    /// Counts `held` as outstanding and buffers them for the app, under one lock for the whole
    /// read (while closing they are kept aside to be given back).
    private func hand(_ held: [Held], retried: Bool = false) {
        let (fresh, holdBack) = state.withLock { s -> ([Held]?, Bool) in
            guard !s.closed else {
                s.late.append(contentsOf: held)
                return (nil, false)
            }
            // An entry this consumer already holds is not handed out twice (it would take a
            // second slot that no settlement returns).
            let fresh = held.filter { s.unsettled[$0.entry.entryID] == nil && !s.retrying.contains($0.entry.entryID) }
            s.outstanding += fresh.count
            for item in fresh { s.unsettled[item.entry.entryID] = item }
            return (fresh, !isQueue && !retried && s.pendingRetries > 0)
        }
        guard let fresh, !fresh.isEmpty else { return }
        if holdBack {
            // A read that was under way when a stream entry was nacked: after the retry.
            let deliveries = fresh.map(makeDelivery)
            state.withLock { $0.heldBack.append(contentsOf: deliveries) }
            return
        }
        for delivery in buffer.push(contentsOf: fresh.map(makeDelivery)) {
            if let id = delivery.position?.offset { settled(id) }
        }
    }

    private func makeDelivery(_ held: Held) -> Delivery {
        let entry = held.entry
        return Delivery(
            message: entry.message,
            destination: destination,
            group: isQueue ? nil : group,
            attempt: held.attempt,
            firstFailureAt: entry.firstFailureAt,
            position: Position(partition: 0, offset: entry.entryID),
            retryPolicy: retryPolicy,
            backend: "redis",
            settler: RedisSettler(consumer: self, held: held),
            metrics: metrics,
            defect: entry.defect
        )
    }

    /// Renews the lease of every entry this consumer holds (buffered or with the app), so a
    /// live consumer's entries are never claimed by another however long a handler runs,
    /// while a dead consumer's come back within one lease.
    private func renewLeases() async {
        let ids = state.withLock { Array($0.unsettled.keys) + $0.retrying }
        guard !ids.isEmpty else { return }
        do {
            let reply = try await client.send(
                [
                    "EVAL", RedisArgument(RedisScripts.renew), "1", RedisArgument(key), RedisArgument(group),
                    RedisArgument(name),
                ]
                    + ids.map { RedisArgument($0) }
            )
            if let error = reply.errorText {
                throw RedisClient.map(.server(error), server: broker.settings.server, destination: destination)
            }
            let lost = (reply.array ?? []).compactMap(\.text)
            if !lost.isEmpty {
                broker.logger.debug(
                    "redis consumer of '\(destination)': \(lost.count) held entries are no longer ours (claimed after a missed renewal, or settled)"
                )
            }
            renewFailures.succeeded()
        } catch {
            renewFailures.failed(error)
        }
    }

    /// Called when a delivery was settled (or given back): frees a prefetch slot. The fetch
    /// loop is woken only when a refill becomes due (half the window free, or nothing left
    /// buffered), so a stream of acks does not wake it once per message.
    func settled(_ entryID: String) {
        let capacity = state.withLock { s -> Int in
            if s.unsettled.removeValue(forKey: entryID) != nil { s.outstanding -= 1 }
            return prefetch - s.outstanding
        }
        if capacity == max(1, prefetch / 2) || buffer.count == 0 { wake.signal() }
    }

    private func acknowledgeDeleted(_ ids: [String]) async throws {
        // Entries deleted while pending come back without fields: nothing to deliver.
        _ = try await broker.client.send(
            ["XACK", RedisArgument(key), RedisArgument(group)] + ids.map { RedisArgument($0) }
        )
    }

    // MARK: - Close

    func close() async {
        let first = state.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.closed = true
            return true
        }
        guard first else { return }
        let task = loopTask.withLock { $0 }
        task?.cancel()
        wake.signal()
        await task?.value
        await acksSent()
        var buffered = Set(buffer.finish().compactMap { $0.position?.offset })
        let unsettled = state.withLock { s -> [Held] in
            let held = Array(s.unsettled.values) + s.late
            buffered.formUnion(s.late.map(\.entry.entryID))
            buffered.formUnion(s.heldBack.compactMap { $0.position?.offset })
            s.heldBack = []
            s.late = []
            s.unsettled = [:]
            s.outstanding = 0
            return held
        }
        if !unsettled.isEmpty {
            do {
                try await giveBack(unsettled, buffered: buffered)
            } catch {
                broker.logger.warning(
                    "redis consumer of '\(destination)' could not give back \(unsettled.count) entries on close: \(error); they return after the lease"
                )
            }
        }
        client.close()
        broker.untrack(self)
    }
}

/// Settles one Redis delivery through the consumer's mode.
struct RedisSettler: DeliverySettler {
    let consumer: RedisConsumer
    let held: RedisConsumer.Held

    // A step that throws keeps the entry held: `Delivery` then releases it, which gives it
    // back and frees its slot.

    func ack() async throws {
        try await consumer.ackEntry(held)
        consumer.settled(held.entry.entryID)
    }

    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {
        try await consumer.retryEntry(held, after: delay, nextAttempt: nextAttempt, firstFailureAt: firstFailureAt)
    }

    func deadLetter(_ envelope: DeadLetterEnvelope) async throws {
        try await consumer.deadLetterEntry(held, envelope: envelope)
        consumer.settled(held.entry.entryID)
    }

    func release() async throws {
        defer { consumer.settled(held.entry.entryID) }
        try await consumer.releaseEntry(held)
    }
}
