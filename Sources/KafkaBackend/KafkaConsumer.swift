@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation
import Logging
import Synchronization

/// A consumer-group member: one librdkafka consumer whose polls, rebalances, pauses and
/// commits all run on its own thread.
///
/// - Per-message settlement on top of offsets: each partition keeps the offsets it handed
///   out in fetch order; only the contiguous run of settled offsets is committed.
/// - Prefetch: at most `prefetch` deliveries are unsettled; further fetched records wait in
///   a local ready list (polling goes on, so rebalances are served), and only when that list
///   passes `readyLimit` are the partitions paused.
/// - Retry/delay topics: a record whose `x-brokerkit-deliver-at` lies ahead is held until
///   due; past `delay.hold.max` held records its partition pauses.
/// - In-place retries (streams, and queues in `blocking` mode) pause the partition until
///   the redelivery, so later records of that partition wait.
/// - Revoked partitions commit what is done; unsettled work of lost partitions is dropped
///   (its acks become no-ops) and the new owner redelivers it.
final class KafkaConsumer: MessageConsumer, Sendable {
    enum Mode: Sendable {
        case queue(QueueConsumerOptions)
        case stream(group: String, StreamConsumerOptions)
    }

    struct Held: Sendable {
        let record: KafkaRecord
        let partition: PartitionState
        let due: Date
    }

    /// A fetched record waiting for a prefetch slot. Its delivery is built by the poll thread
    /// when the record arrives, so a reader that refills its own window only moves it.
    struct Ready {
        let delivery: Delivery
        let partition: PartitionState
        /// What it counts towards `State.readyBytes`.
        var bytes: Int { delivery.message.payload.count }
    }

    /// Per-partition bookkeeping. A class, so updates under the state lock mutate in place
    /// (a struct copied out of the dictionary would copy its growing arrays on every write),
    /// and records, deliveries and settlers point at their partition's state directly: one
    /// object per assignment, so `live` tells whether a record still belongs to this member
    /// without hashing its topic name. Read and written only under the state lock.
    final class PartitionState: @unchecked Sendable {
        let topicPartition: TopicPartition
        /// False once the partition is revoked or assigned anew: settles become no-ops and
        /// records not yet handed out are dropped (the new owner redelivers them).
        var live = true
        var offsets = HandedOutOffsets()
        var committed: Int64?
        var held = 0
        var blocked = 0
        /// While `blocked` (an in-place retry waits): the partition's deliveries taken back
        /// from the buffer (they keep their prefetch slots), and its ready records skipped by
        /// the hand-out; both go out after the retried record, so order holds.
        var parkedDeliveries: [Delivery] = []
        var parkedReady: [Ready] = []
        /// In `State.dirty` (saves hashing the topic name on every settle).
        var isDirty = false
        /// A queue's `.delay` or `.retry.<n>` topic: the only topics whose records'
        /// `x-brokerkit-deliver-at`, attempt and first-failure headers BrokerKit honours
        /// (elsewhere another producer may have written them).
        let isCompanion: Bool

        init(_ topicPartition: TopicPartition, isCompanion: Bool = false) {
            self.topicPartition = topicPartition
            self.isCompanion = isCompanion
        }

        var commitOffset: Int64? { offsets.commitOffset }
    }

    struct State {
        var partitions: [TopicPartition: PartitionState] = [:]
        var outstanding = 0
        /// Fetched and due, waiting for a free prefetch slot (handed out by the poll thread,
        /// in fetch order). Polling continues meanwhile, so rebalances are served; only
        /// past `readyLimit` are partitions paused.
        var ready: [Ready?] = []
        /// Handed out, kept until settled: see ``KafkaConsumer/releaseSettled()``.
        var handedOut: [Delivery] = []
        var readyHead = 0
        var readyBytes = 0
        var blockedTotal = 0
        var held: [Held] = []
        var paused: Set<TopicPartition> = []
        var dirty: Set<TopicPartition> = []
        var joined = false
        var joinWaiters: [CheckedContinuation<Void, Never>] = []
        var closing = false
        var finished = false
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
        var joinError: BrokerError?

        /// Queues `item` for handing out.
        mutating func enqueue(_ item: Ready) {
            ready.append(item)
            readyBytes += item.bytes
        }
    }

    let broker: KafkaBroker
    let destination: String
    let mainTopic: String
    let topics: [String]
    let groupID: String
    let mode: Mode
    /// The effective `auto.offset.reset` (after pass-through properties) is earliest, so an
    /// `.earliest` start needs no committed-offset lookup at assignment.
    let resetsToEarliest: Bool
    let handle: RdKafkaHandle
    let buffer = DeliveryBuffer()
    let state = Mutex(State())
    /// Serializes ``handOut()`` (see there).
    private let handOutGate = Mutex<(running: Bool, again: Bool)>((false, false))
    private let consumerQueue: Mutex<OpaquePointer?>
    // Poll-thread-only scratch space. `nonisolated(unsafe)` is sound: only `loop()` touches them.
    private nonisolated(unsafe) var batch = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: 256)
    /// Bumped by each rebalance: topic handles may have been freed and their addresses
    /// reused, so `loop()` clears its topic-name table when this moves.
    private nonisolated(unsafe) var topicHandlesGeneration = 0
    let logger: Logger
    /// The destination's message counters, looked up once (see `DeliveryObserver`).
    let metrics: DeliveryObserver.Destination

    // Read from `mode` once: the poll thread needs them for every record, and reading them
    // through `mode` copied the whole options value each time (seen in a `perf` profile).
    let prefetch: Int
    let retryPolicy: RetryPolicy
    let group: String?
    /// Queues have no consumer group of their own here; streams always do.
    var isQueue: Bool { group == nil }
    var settings: KafkaSettings { broker.settings }

    init(broker: KafkaBroker, destination: String, mode: Mode) throws {
        self.broker = broker
        self.destination = destination
        self.mode = mode
        switch mode {
        case .queue(let options):
            prefetch = options.prefetch
            retryPolicy = options.retryPolicy
            group = nil
        case .stream(let name, let options):
            prefetch = options.prefetch
            retryPolicy = options.retryPolicy
            group = name
        }
        metrics = broker.observer.destination(destination)
        let settings = broker.settings
        mainTopic = settings.topic(destination)
        switch mode {
        case .queue:
            topics = [mainTopic, settings.delayTopic(destination)] + settings.retryTopics(destination)
            groupID = settings.queueGroup(destination)
        case .stream(let group, _):
            topics = [mainTopic]
            groupID = settings.streamGroup(group, destination: destination)
        }
        var logger = broker.logger
        logger[metadataKey: "kafka.group"] = "\(groupID)"
        self.logger = logger
        let callbacks = RdKafkaCallbacks(logger: logger, role: "consumer")
        var properties = settings.consumerProperties
        properties["group.id"] = groupID
        resetsToEarliest = ["earliest", "smallest", "beginning"].contains(properties["auto.offset.reset"] ?? "largest")
        handle = try RdKafkaHandle(type: RD_KAFKA_CONSUMER, properties: properties, callbacks: callbacks) { conf in
            rd_kafka_conf_set_rebalance_cb(conf) { rk, err, partitions, opaque in
                guard let rk, let opaque else { return }
                let callbacks = Unmanaged<RdKafkaCallbacks>.fromOpaque(opaque).takeUnretainedValue()
                callbacks.rebalance?(rk, err, partitions)
            }
        }
        consumerQueue = Mutex(nil)
        // `unowned`, not `weak`: librdkafka calls this only inside the polls and the close of
        // `loop()`, whose thread holds the consumer. A weak reference gave the consumer a side
        // table, which made every retain of it (one per delivery) take the slow path.
        callbacks.rebalance = { [unowned self] _, err, partitions in
            self.rebalance(err, partitions)
        }
    }

    // MARK: - Lifecycle

    /// Subscribes, starts the poll thread and waits until the group assigned this member its
    /// partitions (possibly none), so a `latest` start sees every later publish.
    func start() async throws {
        // Subscribing takes librdkafka's locks: it happens on the poll thread, which also
        // owns closing the handle (so it runs even when subscribing failed).
        let err: rd_kafka_resp_err_t = await withCheckedContinuation { continuation in
            DedicatedThread.start(name: "kafka-consumer") { [self] in
                rd_kafka_poll_set_consumer(handle.rk)
                consumerQueue.withLock { $0 = rd_kafka_queue_get_consumer(handle.rk) }
                let subscription = PartitionList(
                    topics.map { (TopicPartition(topic: $0, partition: -1), Int64(-1001)) }
                )
                continuation.resume(returning: rd_kafka_subscribe(handle.rk, subscription.list))
                loop()
            }
        }
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            await stopAndWait()
            throw RdKafka.brokerError(
                err,
                "cannot subscribe to \(topics)",
                server: settings.server,
                destination: destination
            )
        }
        let joined = await waitForJoin(timeout: settings.operationTimeout)
        if !joined {
            var detail = handle.callbacks.groupState.withLock { $0 }.map { "; librdkafka: \($0)" } ?? ""
            detail += handle.lastErrorDetail.map { "; last error \($0)" } ?? ""
            await stopAndWait()
            throw BrokerError(
                .timeout,
                "group '\(groupID)' did not assign partitions within \(settings.operationTimeout) (kafka \(settings.server))\(detail)",
                backend: "kafka",
                destination: destination
            )
        }
        if let error = state.withLock({ $0.joinError }) {
            await stopAndWait()
            throw error
        }
    }

    private func waitForJoin(timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let now = self.state.withLock { s -> Bool in
                        if s.joined || s.finished { return true }
                        s.joinWaiters.append(continuation)
                        return false
                    }
                    if now { continuation.resume() }
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            if !first {
                // Release the join waiter.
                let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
                    defer { s.joinWaiters = [] }
                    return s.joinWaiters
                }
                for waiter in waiters { waiter.resume() }
            }
            group.cancelAll()
            return first && state.withLock { $0.joined }
        }
    }

    func next() async throws -> Delivery? { try await buffer.next() }

    func close() async {
        await stopAndWait()
        broker.untrack(self)
    }

    private func stopAndWait() async {
        state.withLock { $0.closing = true }
        wake()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.finished { return true }
                s.finishWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Interrupts a waiting poll.
    func wake() {
        consumerQueue.withLock { queue in
            if let queue { rd_kafka_queue_yield(queue) }
        }
    }

    /// Unsettled deliveries, for `stats`.
    var unsettled: Int { state.withLock { $0.outstanding } }

    // MARK: - Poll loop (own thread)

    /// Records (and bytes) waiting for a prefetch slot before partitions are paused. Large,
    /// because a paused partition refetches from scratch on resume: pausing is the
    /// back-pressure of last resort, resumed when half the backlog is handed out.
    var readyLimit: Int { max(prefetch * 2, 5_000) }
    static let readyByteLimit = 64 * 1024 * 1024

    /// Copies a polled message into `records` (errors are logged) and frees it.
    private func take(
        _ message: UnsafeMutablePointer<rd_kafka_message_t>,
        into records: inout [KafkaRecord],
        names: inout TopicNames
    ) {
        defer { rd_kafka_message_destroy(message) }
        let err = message.pointee.err
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            if err != RD_KAFKA_RESP_ERR__PARTITION_EOF {
                let text = rd_kafka_message_errstr(message).map { String(cString: $0) } ?? RdKafka.errorText(err)
                logger.debug("kafka consumer error \(RdKafka.errorName(err)): \(text)")
            }
            return
        }
        records.append(KafkaRecord(message, topic: message.pointee.rkt.map { names.name(of: $0) } ?? ""))
    }

    private func loop() {
        let rk = handle.rk
        var lastCommit = ContinuousClock.now
        // A local, so the per-record lookups need no runtime exclusivity checks.
        var names = TopicNames()
        var namesGeneration = topicHandlesGeneration
        while true {
            let closing = state.withLock { $0.closing }
            if closing { break }
            let waitMs = releaseDueHeld()
            releaseSettled()
            handOut()
            applyPauses()
            if ContinuousClock.now - lastCommit >= .milliseconds(100) {
                commitDirty(sync: false)
                lastCommit = ContinuousClock.now
            }
            // Wait for one record, then take whatever else is already fetched in one call.
            guard let first = rd_kafka_consumer_poll(rk, waitMs) else { continue }
            let n =
                consumerQueue.withLock({ $0 }).map { queue in
                    batch.withUnsafeMutableBufferPointer { buffer in
                        rd_kafka_consume_batch_queue(queue, 0, buffer.baseAddress, buffer.count)
                    }
                } ?? 0
            // Both polls may have run a rebalance (polled messages keep their topic handles).
            if namesGeneration != topicHandlesGeneration {
                names.removeAll()
                namesGeneration = topicHandlesGeneration
            }
            var records: [KafkaRecord] = []
            records.reserveCapacity(1 + max(0, n))
            take(first, into: &records, names: &names)
            if n > 0 {
                batch.withUnsafeBufferPointer { polled in
                    for i in 0..<n { if let message = polled[i] { take(message, into: &records, names: &names) } }
                }
            }
            accept(records)
            handOut()
        }
        // Closing: stop handing out, commit what is done, leave the group.
        buffer.finish()  // what the app never took stays uncommitted: the group redelivers it
        commitDirty(sync: true)
        _ = rd_kafka_consumer_close(rk)
        consumerQueue.withLock { queue in
            if let q = queue { rd_kafka_queue_destroy(q) }
            queue = nil
        }
        handle.destroy()
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.finished = true
            for p in s.partitions.values { p.live = false }
            s.partitions = [:]
            s.held = []
            s.ready = []
            s.handedOut = []
            s.readyHead = 0
            s.readyBytes = 0
            let all = s.finishWaiters + s.joinWaiters
            s.finishWaiters = []
            s.joinWaiters = []
            return all
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Takes fetched records: holds those not yet due, queues the rest for handing out, their
    /// deliveries built here (outside the lock). Rebalances run on this thread too (inside the
    /// poll), so the partitions looked up first stay assigned until the records are queued.
    private func accept(_ records: [KafkaRecord]) {
        if records.isEmpty { return }
        let now = Date()
        var partitions: [PartitionState?] = []
        partitions.reserveCapacity(records.count)
        state.withLock { s in
            var last: PartitionState?
            for record in records {
                if let p = last, p.topicPartition.partition == record.partition, p.topicPartition.topic == record.topic
                {
                    partitions.append(p)
                } else {
                    last = s.partitions[record.topicPartition]  // nil: not assigned any more
                    partitions.append(last)
                }
            }
        }
        enum Accepted {
            case held(Held)
            case ready(Ready)
        }
        var items: [(partition: PartitionState, offset: Int64, accepted: Accepted)] = []
        items.reserveCapacity(records.count)
        for (record, partition) in zip(records, partitions) {
            guard let partition else { continue }
            // Only a queue's delay and retry topics hold records back: on a stream or a main
            // topic the header was written by someone else, and holding it would stop the
            // partition's commits forever. A due time further ahead than
            // any delay BrokerKit writes is dead-lettered instead of held.
            var due: Date?
            var defect: String?
            if partition.isCompanion, let text = record.headers.first(where: { $0.0 == HeaderName.deliverAt })?.1,
                let date = ISO8601.parse(text), date > now
            {
                if date.timeIntervalSince(now) > Self.maxHoldAhead.timeInterval {
                    defect =
                        "header '\(HeaderName.deliverAt)' is '\(text.prefix(40))', more than \(Self.maxHoldAhead) ahead"
                } else {
                    due = date
                }
            }
            let accepted: Accepted =
                due.map { .held(Held(record: record, partition: partition, due: $0)) }
                ?? .ready(
                    Ready(
                        delivery: delivery(
                            for: record,
                            partition: partition,
                            attempt: nil,
                            firstFailureAt: nil,
                            defect: defect
                        ),
                        partition: partition
                    )
                )
            items.append((partition, record.offset, accepted))
        }
        state.withLock { s in
            for (p, offset, accepted) in items where p.live {
                p.offsets.handedOut(offset)
                switch accepted {
                case .held(let held):
                    p.held += 1
                    s.held.append(held)
                case .ready(let item):
                    s.enqueue(item)
                }
            }
        }
    }

    /// Hands ready records out while prefetch slots are free. Called by the poll thread and
    /// by settling threads (so a fast reader refills its own window without waiting for the
    /// poll thread to wake); one caller at a time, so fetch order is kept — a call that finds
    /// another one running asks it for one more pass instead.
    private func handOut() {
        let mine = handOutGate.withLock { gate -> Bool in
            if gate.running {
                gate.again = true
                return false
            }
            gate.running = true
            return true
        }
        guard mine else { return }
        while true {
            handOutPass()
            let again = handOutGate.withLock { gate -> Bool in
                if gate.again {
                    gate.again = false
                    return true
                }
                gate.running = false
                return false
            }
            if !again { return }
        }
    }

    private func handOutPass() {
        state.withLock { s in
            var out: [Delivery] = []
            while s.readyHead < s.ready.count && s.outstanding < prefetch {
                guard let next = s.ready[s.readyHead] else {
                    s.readyHead += 1
                    continue
                }
                s.ready[s.readyHead] = nil  // the app holds it now; nothing to free at compaction
                s.readyHead += 1
                s.readyBytes -= next.bytes
                guard next.partition.live else { continue }
                if next.partition.blocked > 0 {
                    next.partition.parkedReady.append(next)
                    continue
                }
                s.outstanding += 1
                out.append(next.delivery)
                s.handedOut.append(next.delivery)
            }
            if s.readyHead == s.ready.count {
                s.ready.removeAll(keepingCapacity: true)
                s.readyHead = 0
            } else if s.readyHead > 1024 && s.readyHead * 2 > s.ready.count {
                s.ready.removeFirst(s.readyHead)
                s.readyHead = 0
            }
            // Into the buffer under this lock, as one batch (one wake-up of a waiting reader):
            // an in-place retry that blocks a partition takes the partition's deliveries back
            // from the buffer under this lock too. Pushed after the lock, a batch collected
            // before the block landed after the take, and a newer record of the partition was
            // handed out ahead of the parked older ones (found by `brokerkit soak`).
            if !out.isEmpty {
                let rejected = buffer.push(contentsOf: out)
                s.outstanding -= rejected.count
            }
        }
    }

    /// Drops this thread's references to settled deliveries. By then the app's task has
    /// usually dropped its copy, so a delivery is freed here, on the thread that allocated it.
    /// With glibc's malloc, a free from another thread takes the allocating thread's arena
    /// lock; when the app's task freed every delivery, both threads blocked on that lock
    /// (measured with `perf`, see docs/benchmarks.md).
    private func releaseSettled() {
        let settled = state.withLock { s -> [Delivery] in
            let split = s.handedOut.partition { $0.isSettled }  // order does not matter here
            guard split < s.handedOut.endIndex else { return [] }
            defer { s.handedOut.removeSubrange(split...) }
            return Array(s.handedOut[split...])
        }
        _ = settled  // released here, outside the lock
    }

    /// Releases held records that are due; returns how long the next poll may wait (ms).
    private func releaseDueHeld() -> Int32 {
        let now = Date()
        let (due, next) = state.withLock { s -> ([Held], Date?) in
            guard !s.held.isEmpty else { return ([], nil) }
            var due: [Held] = []
            var keep: [Held] = []
            for held in s.held where held.partition.live {
                if held.due <= now {
                    held.partition.held -= 1
                    due.append(held)
                } else {
                    keep.append(held)
                }
            }
            s.held = keep
            return (due, keep.map(\.due).min())
        }
        if !due.isEmpty {
            // Built outside the lock; only this thread revokes partitions, so they stay live.
            let items = due.map { held in
                Ready(
                    delivery: delivery(for: held.record, partition: held.partition, attempt: nil, firstFailureAt: nil),
                    partition: held.partition
                )
            }
            state.withLock { s in
                for item in items where item.partition.live { s.enqueue(item) }
            }
        }
        guard let next else { return 100 }
        return Int32(max(1, min(100, Int((next.timeIntervalSince(now) * 1000).rounded(.up)))))
    }

    /// Builds the delivery for `record` and buffers it.
    func push(_ record: KafkaRecord, partition: PartitionState, attempt: Int?, firstFailureAt: Date?) {
        if !buffer.push(delivery(for: record, partition: partition, attempt: attempt, firstFailureAt: firstFailureAt)) {
            state.withLock { $0.outstanding -= 1 }
        }
    }

    /// The longest a delayed or retried record is held: further ahead is not BrokerKit's.
    static let maxHoldAhead = Duration.seconds(366 * 86_400)

    /// The delivery for `record`; `attempt` / `firstFailureAt` override what its headers say.
    /// The attempt and first-failure headers count only on a queue's retry and delay topics.
    private func delivery(
        for record: KafkaRecord,
        partition: PartitionState,
        attempt: Int?,
        firstFailureAt: Date?,
        defect: String? = nil
    ) -> Delivery {
        let consumed = KafkaMessageMapping.consumed(from: record)
        var defect = defect ?? record.defect
        var headerAttempt: Int?
        if partition.isCompanion, let text = consumed.attempt {
            if let value = Int(text), (1...Delivery.maxAttempt).contains(value) {
                headerAttempt = value
            } else {
                defect =
                    defect
                    ?? "header '\(HeaderName.attempt)' is '\(text.prefix(40))', not a whole number from 1 to \(Delivery.maxAttempt)"
            }
        }
        let settler = KafkaSettler(
            consumer: self,
            record: record,
            partition: partition,
            attempt: attempt ?? headerAttempt ?? 1,
            firstFailureAt: firstFailureAt ?? (partition.isCompanion ? consumed.firstFailureAt : nil)
        )
        return Delivery(
            message: consumed.message,
            destination: destination,
            group: group,
            attempt: settler.attempt,
            firstFailureAt: settler.firstFailureAt,
            position: Position(partition: Int(record.partition), offset: record.offset),
            retryPolicy: retryPolicy,
            backend: "kafka",
            settler: settler,
            metrics: metrics,
            defect: defect
        )
    }

    // MARK: - Settlement (any thread)

    /// Marks `record` settled: its offset may be committed once all earlier ones are. Throws
    /// ``BrokerError/Code/closed`` when this consumer no longer holds the record's partition
    /// (it was closed, or a rebalance took the partition away): the offset cannot be committed
    /// here, and the record will be delivered again.
    ///
    /// A settlement that throws keeps the record's prefetch slot: ``Delivery`` releases the
    /// delivery after a failed step, and ``release(_:partition:attempt:firstFailureAt:)``
    /// returns the slot, once.
    func settle(_ record: KafkaRecord, partition p: PartitionState) throws {
        let actions = state.withLock { s -> (live: Bool, refill: Bool, wake: Bool) in
            guard p.live else { return (false, false, false) }
            s.outstanding -= 1
            p.offsets.markDone(record.offset)
            if !p.isDirty {
                p.isDirty = true
                s.dirty.insert(p.topicPartition)
            }
            // Records wait for free slots: refill here once a batch of slots is free.
            let refill = s.readyHead < s.ready.count && prefetch - s.outstanding >= refillBatch
            // Paused partitions may resume now: that is the poll thread's job.
            return (p.live, refill, !s.paused.isEmpty)
        }
        if actions.refill { handOut() }
        if actions.wake { wake() }
        guard actions.live else { throw notHeld(record) }
    }

    func notHeld(_ record: KafkaRecord) -> BrokerError {
        BrokerError(
            .closed,
            "delivery from \(record.topic)[\(record.partition)] at offset \(record.offset) is no longer held (its consumer closed, or a rebalance gave the partition to another member): not committed, it will be delivered again",
            backend: "kafka",
            destination: destination
        )
    }

    /// Throws ``notHeld(_:)`` unless this consumer still holds `p`: checked before a retry
    /// or dead-letter copy is written, so a revoked record is not copied while its new owner
    /// also redelivers it (a revoke between the check and the settle can still duplicate it).
    func checkHeld(_ record: KafkaRecord, partition p: PartitionState) throws {
        if !state.withLock({ _ in p.live }) { throw notHeld(record) }
    }

    /// Free prefetch slots that make a settling thread refill the window itself.
    var refillBatch: Int { max(1, min(64, prefetch / 4)) }

    /// Redelivers `record` in place after `delay`, pausing its partition meanwhile. Throws
    /// ``notHeld(_:)`` (keeping the slot for the release that follows) when this consumer no
    /// longer holds the partition: the new owner redelivers it, and the nack must not report
    /// a retry that will not happen here.
    func retryInPlace(
        _ record: KafkaRecord,
        partition p: PartitionState,
        after delay: Duration,
        nextAttempt: Int,
        firstFailureAt: Date
    ) throws {
        let live = state.withLock { s -> Bool in
            guard p.live, !s.closing else { return false }
            p.blocked += 1
            s.blockedTotal += 1
            // What this partition has in the buffer waits behind the retried record (taken
            // under this lock, which hand-outs push under: see `handOutPass`).
            let taken = buffer.take { ($0.backendSettler as? KafkaSettler)?.partition === p }
            p.parkedDeliveries.append(contentsOf: taken)
            return true
        }
        guard live else { throw notHeld(record) }
        wake()
        Task {
            try? await Task.sleep(for: delay)
            // The partition stays blocked while the retried record and the deliveries parked
            // behind it go into the buffer: unblocked first, the poll thread handed a newer
            // record of the partition out ahead of them (found by `brokerkit soak`: a key's
            // later message handled before three earlier ones).
            let (still, last, parked) = self.state.withLock { s -> (Bool, Bool, [Delivery]) in
                s.blockedTotal = max(0, s.blockedTotal - 1)
                guard p.live, !s.closing else {
                    // Not ours any more: the new owner redelivers them all.
                    s.outstanding -= 1 + p.parkedDeliveries.count
                    p.parkedDeliveries = []
                    p.parkedReady = []
                    return (false, false, [])
                }
                guard p.blocked <= 1 else {
                    p.blocked -= 1  // another retry of this partition is still waiting
                    return (true, false, [])
                }
                defer { p.parkedDeliveries = [] }
                return (true, true, p.parkedDeliveries)
            }
            guard still else { return }
            self.push(record, partition: p, attempt: nextAttempt, firstFailureAt: firstFailureAt)
            guard last else { return }
            self.pushParked(parked)
            self.unblock(p)
        }
    }

    /// Puts deliveries taken back behind an in-place retry into the buffer, in their order.
    private func pushParked(_ parked: [Delivery]) {
        guard !parked.isEmpty else { return }
        let rejected = buffer.push(contentsOf: parked)
        if !rejected.isEmpty { state.withLock { $0.outstanding -= rejected.count } }
    }

    /// Ends the last in-place retry of `p` once its record and parked deliveries are in the
    /// buffer: what was released or fetched for `p` meanwhile goes out next, in order, ahead
    /// of anything newer. A retry of `p` that began meanwhile keeps it blocked.
    private func unblock(_ p: PartitionState) {
        let (parked, ready) = state.withLock { s -> ([Delivery], [Ready]) in
            guard p.live, !s.closing else {
                s.outstanding -= p.parkedDeliveries.count
                p.parkedDeliveries = []
                p.parkedReady = []
                return ([], [])
            }
            p.blocked = max(0, p.blocked - 1)
            guard p.blocked == 0 else { return ([], []) }
            defer {
                p.parkedDeliveries = []
                p.parkedReady = []
            }
            return (p.parkedDeliveries, p.parkedReady)
        }
        pushParked(parked)
        if !ready.isEmpty {
            state.withLock { s in
                s.ready.insert(contentsOf: ready.map { Optional($0) }, at: s.readyHead)
                s.readyBytes += ready.reduce(0) { $0 + $1.bytes }
            }
            handOut()
        }
        wake()
    }

    /// Gives `record` back: redelivered at once unless the consumer is closing (then its
    /// offset stays uncommitted, so the next member of the group gets it).
    func release(_ record: KafkaRecord, partition: PartitionState, attempt: Int, firstFailureAt: Date?) {
        let delivery = delivery(for: record, partition: partition, attempt: attempt, firstFailureAt: firstFailureAt)
        enum Outcome { case dropped, parked, redeliver }
        let outcome = state.withLock { s -> Outcome in
            guard !s.closing, partition.live else {
                s.outstanding -= 1
                return .dropped
            }
            // Its partition waits for an in-place retry: it goes out after the retried record.
            if partition.blocked > 0 {
                partition.parkedDeliveries.append(delivery)
                return .parked
            }
            return .redeliver
        }
        switch outcome {
        case .dropped: wake()
        case .parked: break
        case .redeliver: if !buffer.push(delivery) { state.withLock { $0.outstanding -= 1 } }
        }
    }

    // MARK: - Pauses and commits (poll thread)

    private func applyPauses() {
        let limit = readyLimit
        let (toPause, toResume) = state.withLock { s -> ([TopicPartition], [TopicPartition]) in
            let waiting = s.ready.count - s.readyHead
            // The common case: nothing paused, nothing that would pause.
            let full = waiting >= limit || s.readyBytes >= Self.readyByteLimit
            let halfFull = waiting >= limit / 2 || s.readyBytes >= Self.readyByteLimit / 2
            if s.paused.isEmpty && !full && s.held.isEmpty && s.blockedTotal == 0 { return ([], []) }
            let all = Set(s.partitions.keys)
            var desired: Set<TopicPartition>
            if full || (!s.paused.isEmpty && s.paused == all && halfFull) {
                desired = all
            } else {
                desired = Set(
                    s.partitions.filter { _, p in
                        p.blocked > 0 || (p.held > 0 && p.held >= settings.delayHoldMax)
                    }.keys
                )
            }
            let pause = desired.subtracting(s.paused)
            let resume = s.paused.subtracting(desired).intersection(all)
            s.paused = desired
            return (Array(pause), Array(resume))
        }
        if !toPause.isEmpty {
            let list = PartitionList(toPause.map { ($0, Int64(-1001)) })
            _ = rd_kafka_pause_partitions(handle.rk, list.list)
        }
        if !toResume.isEmpty {
            let list = PartitionList(toResume.map { ($0, Int64(-1001)) })
            _ = rd_kafka_resume_partitions(handle.rk, list.list)
        }
    }

    private func commitDirty(sync: Bool, only: Set<TopicPartition>? = nil) {
        let offsets = state.withLock { s -> [(TopicPartition, Int64)] in
            var out: [(TopicPartition, Int64)] = []
            let candidates = sync ? Set(s.partitions.keys) : s.dirty
            for tp in candidates where only == nil || only!.contains(tp) {
                guard let p = s.partitions[tp] else { continue }
                p.isDirty = false
                // Async commits may fail unseen: a sync commit (close, revoke) always sends.
                guard let offset = p.commitOffset, sync || offset != p.committed else { continue }
                p.committed = offset
                out.append((tp, offset))
            }
            if only == nil { s.dirty = [] } else { s.dirty.subtract(only!) }
            return out
        }
        guard !offsets.isEmpty else { return }
        let list = PartitionList(offsets)
        let err = rd_kafka_commit(handle.rk, list.list, sync ? 0 : 1)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET {
            logger.warning("kafka commit of \(offsets.map { "\($0.0)@\($0.1)" }) failed: \(RdKafka.errorName(err))")
        }
    }

    // MARK: - Rebalance (poll thread, inside rd_kafka_consumer_poll)

    private func rebalance(
        _ err: rd_kafka_resp_err_t,
        _ partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
    ) {
        let rk = handle.rk
        let cooperative = rd_kafka_rebalance_protocol(rk).map { String(cString: $0) } == "COOPERATIVE"
        let entries = partitions.map { PartitionList.entries(of: $0) } ?? []
        topicHandlesGeneration &+= 1  // topic handles may be freed and their addresses reused
        let tps = entries.map(\.0)
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            if let partitions { resolveStartOffsets(partitions) }
            state.withLock { s in
                for tp in tps {
                    s.partitions[tp]?.live = false
                    s.partitions[tp] = PartitionState(tp, isCompanion: isQueue && tp.topic != mainTopic)
                }
                s.paused.subtract(tps)
            }
            if cooperative {
                if let error = rd_kafka_incremental_assign(rk, partitions) { rd_kafka_error_destroy(error) }
            } else {
                _ = rd_kafka_assign(rk, partitions)
            }
            // librdkafka keeps a partition's pause across a rebalance: one paused here (a full
            // prefetch, an in-place retry) when it was revoked came back still paused, while
            // the fresh state above says it is not, so nothing ever resumed it and the group
            // stalled with its backlog on the broker (seen in the Kafka soak). Resuming a
            // partition that is not paused does nothing.
            if let partitions { _ = rd_kafka_resume_partitions(rk, partitions) }
            logger.debug("kafka group \(groupID) assigned \(tps)")
            let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
                s.joined = true
                defer { s.joinWaiters = [] }
                return s.joinWaiters
            }
            for waiter in waiters { waiter.resume() }
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            commitDirty(sync: true, only: Set(tps))
            state.withLock { s in
                for tp in tps { s.partitions.removeValue(forKey: tp)?.live = false }
                s.paused.subtract(tps)
                s.held.removeAll { tps.contains($0.record.topicPartition) }
            }
            if cooperative {
                if let error = rd_kafka_incremental_unassign(rk, partitions) { rd_kafka_error_destroy(error) }
            } else {
                _ = rd_kafka_assign(rk, nil)
            }
            logger.debug("kafka group \(groupID) revoked \(tps)")
        default:
            logger.warning("kafka rebalance error \(RdKafka.errorName(err))")
            state.withLock { s in
                for p in s.partitions.values { p.live = false }
                s.partitions = [:]
                s.paused = []
                s.held = []
            }
            _ = rd_kafka_assign(rk, nil)
        }
    }

    /// Sets explicit start offsets in an assignment, for partitions without a committed
    /// offset only (a group that has one keeps it: a member that joins, or a rebalance, never
    /// rewinds the group): the seek target for `position` (other
    /// partitions from the beginning) and `timestamp`; the current end for `latest` (so a
    /// `latest` member does not miss what is published right after it joined) and the
    /// beginning for `earliest` when `auto.offset.reset` would not already start there.
    private func resolveStartOffsets(_ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) {
        let rk = handle.rk
        let timeout = RdKafka.milliseconds(settings.operationTimeout)
        let count = Int(list.pointee.cnt)
        guard count > 0 else { return }
        var start: StartPosition = .earliest
        if case .stream(_, let options) = mode { start = options.start }
        /// The indices of `list` whose partitions have no committed offset; `nil` (and a join
        /// error, so the seek is not skipped silently) when the lookup fails.
        func uncommitted() -> [Int32]? {
            let committed = rd_kafka_topic_partition_list_copy(list)!
            defer { rd_kafka_topic_partition_list_destroy(committed) }
            let err = rd_kafka_committed(rk, committed, timeout)
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                let error = RdKafka.brokerError(
                    err,
                    "committed-offset lookup before a seek failed",
                    server: settings.server,
                    destination: destination
                )
                logger.error("\(error)")
                state.withLock { $0.joinError = error }
                return nil
            }
            return (0..<Int32(count)).filter { bk_tp_offset(committed, $0) < 0 }
        }
        switch start {
        case .position(let position):
            guard let offset = position.numericOffset, let fresh = uncommitted() else { return }
            for i in fresh {
                let seekHere =
                    bk_tp_topic(list, i).map({ String(cString: $0) }) == mainTopic
                    && Int(bk_tp_partition(list, i)) == position.partition
                bk_tp_set_offset(list, i, seekHere ? offset : -2)  // -2: RD_KAFKA_OFFSET_BEGINNING
            }
            return
        case .timestamp(let date):
            guard let fresh = uncommitted(), !fresh.isEmpty else { return }
            let query = rd_kafka_topic_partition_list_copy(list)!
            defer { rd_kafka_topic_partition_list_destroy(query) }
            let ms = Int64(min(max(0, date.timeIntervalSince1970 * 1000), 253_402_300_799_999).rounded(.down))
            for i in 0..<count { bk_tp_set_offset(query, Int32(i), ms) }
            let err = rd_kafka_offsets_for_times(rk, query, timeout)
            if err != RD_KAFKA_RESP_ERR_NO_ERROR {
                let error = RdKafka.brokerError(
                    err,
                    "timestamp seek (offsets_for_times) failed",
                    server: settings.server,
                    destination: destination
                )
                logger.error("\(error)")
                state.withLock { $0.joinError = error }
                return
            }
            for i in fresh {
                let offset = bk_tp_offset(query, i)
                // -1: no record at or after the timestamp: start at the end.
                bk_tp_set_offset(list, i, offset >= 0 ? offset : -1)
            }
            return
        case .earliest where resetsToEarliest:
            // librdkafka starts a partition with no committed offset at auto.offset.reset,
            // which is earliest: the same as the lookup below would set, without a blocking
            // OffsetFetch inside the rebalance callback.
            return
        case .earliest, .latest:
            let committed = rd_kafka_topic_partition_list_copy(list)!
            defer { rd_kafka_topic_partition_list_destroy(committed) }
            let err = rd_kafka_committed(rk, committed, timeout)
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                logger.warning(
                    "kafka committed-offset lookup failed (\(RdKafka.errorName(err))); auto.offset.reset applies"
                )
                return
            }
            for i in 0..<count where bk_tp_offset(committed, Int32(i)) < 0 {
                if case .latest = start, let topic = bk_tp_topic(list, Int32(i)) {
                    var low: Int64 = 0
                    var high: Int64 = 0
                    if rd_kafka_query_watermark_offsets(
                        rk,
                        topic,
                        bk_tp_partition(list, Int32(i)),
                        &low,
                        &high,
                        timeout
                    ) == RD_KAFKA_RESP_ERR_NO_ERROR {
                        bk_tp_set_offset(list, Int32(i), high)
                    } else {
                        bk_tp_set_offset(list, Int32(i), -1)  // RD_KAFKA_OFFSET_END
                    }
                } else {
                    bk_tp_set_offset(list, Int32(i), -2)  // RD_KAFKA_OFFSET_BEGINNING
                }
            }
        }
    }
}

/// Settles one Kafka delivery (see ``KafkaConsumer``).
struct KafkaSettler: DeliverySettler {
    let consumer: KafkaConsumer
    let record: KafkaRecord
    let partition: KafkaConsumer.PartitionState
    let attempt: Int
    let firstFailureAt: Date?

    func ack() async throws {
        try consumer.settle(record, partition: partition)
    }

    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {
        let settings = consumer.settings
        if consumer.isQueue && settings.retryMode == .topics {
            let due = Date().addingTimeInterval(delay.timeInterval)
            let topic = settings.retryTopic(consumer.destination, attempt: nextAttempt - 1)
            // The message as the app got it, rebuilt from the record: keeping a copy in every
            // settler cost each delivery a copy for the rare retry.
            let message = KafkaMessageMapping.consumed(from: record).message
            let outgoing = OutgoingRecord(
                topic: topic,
                message: message,
                extraHeaders: [
                    HeaderName.attempt: String(nextAttempt),
                    HeaderName.firstFailureAt: ISO8601.format(firstFailureAt),
                    HeaderName.deliverAt: ISO8601.format(due),
                ]
            )
            try consumer.checkHeld(record, partition: partition)
            // Not moved if this throws: `Delivery` releases it, so it is not lost.
            _ = try await consumer.broker.activeProducer().produce([outgoing], destination: consumer.destination)
            try consumer.settle(record, partition: partition)
        } else {
            try consumer.retryInPlace(
                record,
                partition: partition,
                after: delay,
                nextAttempt: nextAttempt,
                firstFailureAt: firstFailureAt
            )
        }
    }

    func deadLetter(_ envelope: DeadLetterEnvelope) async throws {
        var dlq = envelope.message
        if let group = consumer.group { dlq.headers[HeaderName.group] = group }
        let outgoing = OutgoingRecord(topic: consumer.settings.dlqTopic(consumer.destination), message: dlq)
        try consumer.checkHeld(record, partition: partition)
        try await consumer.broker.ensureDLQ(consumer.destination)
        _ = try await consumer.broker.activeProducer().produce([outgoing], destination: consumer.destination)
        try consumer.settle(record, partition: partition)
    }

    func release() async throws {
        consumer.release(record, partition: partition, attempt: attempt, firstFailureAt: firstFailureAt)
    }
}
