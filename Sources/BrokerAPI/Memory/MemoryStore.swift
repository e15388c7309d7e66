import Foundation

/// The state of one in-memory "server": destinations, consumer groups, in-flight deliveries,
/// delayed messages and dead letters. An actor, so every mutation is serialized; consumers
/// wait on continuations that publishes, settlements and the timer resume.
actor MemoryStore {
    let name: String

    init(name: String) { self.name = name }

    // MARK: - Records

    struct Record {
        var message: Message
        var offset: Int64
        var storedAt: Date
    }

    struct QueueItem {
        var record: Record
        var attempt: Int
        var firstFailureAt: Date?
        var due: Date
    }

    struct Inflight {
        var item: QueueItem
        var consumer: UInt64
        var leaseExpiry: Date
    }

    final class Partition {
        var baseOffset: Int64 = 0
        var records: [Record] = []
        var endOffset: Int64 { baseOffset + Int64(records.count) }
        func record(at offset: Int64) -> Record? {
            let index = Int(offset - baseOffset)
            return index >= 0 && index < records.count ? records[index] : nil
        }
    }

    final class GroupPartition {
        /// Acked offsets and the next offset to commit: everything below it is acked.
        var acks = ContiguousAcks()
        var committed: Int64? { acks.committed }
        /// Next offset to deliver.
        var cursor: Int64 = 0
        /// Delivered, not settled: offset -> member.
        var outstanding: [Int64: UInt64] = [:]
        /// In-place retries, by offset: while any is pending the partition hands out nothing
        /// new (order holds); each goes out again when due. Several deliveries of one
        /// partition can be nacked at once (concurrent handlers on different keys): each is
        /// kept (one slot lost all but the last).
        var retries: [Int64: (attempt: Int, firstFailureAt: Date, due: Date)] = [:]
        /// Attempt counts of offsets that were retried.
        var attempts: [Int64: (attempt: Int, firstFailureAt: Date)] = [:]
    }

    final class Group {
        var partitions: [GroupPartition]
        var members: [UInt64] = []
        var assignment: [Int: UInt64] = [:]
        var nextPartition = 0
        init(partitionCount: Int) { partitions = (0..<partitionCount).map { _ in GroupPartition() } }
    }

    final class Destination {
        let name: String
        let kind: DestinationKind
        let partitions: [Partition]
        let retention: DestinationOptions.Retention?
        // Queue state.
        var ready: [QueueItem] = []
        var readyHead = 0
        var delayed: [QueueItem] = []  // sorted by due
        var inflight: [UInt64: Inflight] = [:]
        // Stream state.
        var groups: [String: Group] = [:]
        var roundRobin = 0
        // Shared.
        var dlq: [Record] = []
        var dlqNextOffset: Int64 = 0
        var nextOffset: Int64 = 0
        var waiters: [UInt64] = []

        /// Its message counters, looked up on its first delivery (see `DeliveryObserver`), so
        /// destinations nothing consumes get none.
        lazy var metrics: DeliveryObserver.Destination = MemoryStore.observer.destination(name)

        init(name: String, kind: DestinationKind, partitions: Int, retention: DestinationOptions.Retention?) {
            self.name = name
            self.kind = kind
            self.partitions = (0..<max(1, partitions)).map { _ in Partition() }
            self.retention = retention
        }

        var readyCount: Int { ready.count - readyHead }

        func popReady() -> QueueItem? {
            guard readyHead < ready.count else { return nil }
            let item = ready[readyHead]
            readyHead += 1
            if readyHead > 1024 && readyHead * 2 > ready.count {
                ready.removeFirst(readyHead)
                readyHead = 0
            }
            return item
        }

        func pushFront(_ item: QueueItem) {
            if readyHead > 0 {
                readyHead -= 1
                ready[readyHead] = item
            } else {
                ready.insert(item, at: 0)
            }
        }

        func insertDelayed(_ item: QueueItem) {
            var low = 0
            var high = delayed.count
            while low < high {
                let mid = (low + high) / 2
                if delayed[mid].due <= item.due { low = mid + 1 } else { high = mid }
            }
            delayed.insert(item, at: low)
        }
    }

    struct ConsumerState {
        let id: UInt64
        let destination: String
        let group: String?
        let prefetch: Int
        let retryPolicy: RetryPolicy
        let visibilityTimeout: Duration
        var inflight = 0
        var closed = false
    }

    struct Waiter {
        let consumer: UInt64
        let continuation: CheckedContinuation<Delivery?, any Error>
    }

    // MARK: - State

    var destinations: [String: Destination] = [:]
    var consumers: [UInt64: ConsumerState] = [:]
    var waiters: [UInt64: Waiter] = [:]
    var cancelledWaiters: Set<UInt64> = []
    var nextID: UInt64 = 1
    var timerTask: Task<Void, Never>?
    var timerDeadline: Date?
    let backend = "memory"

    func makeID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    // MARK: - Admin

    func create(_ name: String, kind: DestinationKind, options: DestinationOptions, defaultPartitions: Int) throws {
        if let existing = destinations[name] {
            guard existing.kind == kind else {
                throw BrokerError(
                    .wrongDestinationKind,
                    "'\(name)' already exists as a \(existing.kind), cannot create it as a \(kind)",
                    backend: backend,
                    destination: name
                )
            }
            return
        }
        let partitions = kind == .queue ? 1 : (options.partitions ?? defaultPartitions)
        guard partitions >= 1 && partitions <= 1024 else {
            throw BrokerError(
                .invalidConfiguration,
                "partitions must be 1...1024, got \(partitions)",
                backend: backend,
                destination: name
            )
        }
        destinations[name] = Destination(name: name, kind: kind, partitions: partitions, retention: options.retention)
    }

    func delete(_ name: String) throws {
        guard let destination = destinations.removeValue(forKey: name) else {
            throw BrokerError(.unknownDestination, "'\(name)' does not exist", backend: backend, destination: name)
        }
        // Wake consumers of the deleted destination so they end instead of hanging.
        for waiterID in destination.waiters {
            if let waiter = waiters.removeValue(forKey: waiterID) {
                waiter.continuation.resume(
                    throwing: BrokerError(
                        .unknownDestination,
                        "'\(name)' was deleted",
                        backend: backend,
                        destination: name
                    )
                )
            }
        }
    }

    func list() -> [DestinationInfo] {
        destinations.values.map { DestinationInfo(name: $0.name, kind: $0.kind, partitions: $0.partitions.count) }
            .sorted { $0.name < $1.name }
    }

    /// The destination `name`, created as `createAs` when it does not exist and `autoCreate`.
    func destination(
        _ name: String,
        createAs: DestinationKind,
        autoCreate: Bool,
        defaultPartitions: Int
    ) throws -> Destination {
        if let existing = destinations[name] { return existing }
        guard autoCreate else {
            throw BrokerError(
                .unknownDestination,
                "'\(name)' does not exist and auto.create is off",
                backend: backend,
                destination: name
            )
        }
        try create(name, kind: createAs, options: DestinationOptions(), defaultPartitions: defaultPartitions)
        return destinations[name]!
    }

    func kind(
        _ name: String,
        createAs: DestinationKind,
        autoCreate: Bool,
        defaultPartitions: Int
    ) throws
        -> DestinationKind
    {
        try destination(name, createAs: createAs, autoCreate: autoCreate, defaultPartitions: defaultPartitions).kind
    }

    func stats(_ name: String) throws -> DestinationStats {
        guard let d = destinations[name] else {
            throw BrokerError(.unknownDestination, "'\(name)' does not exist", backend: backend, destination: name)
        }
        switch d.kind {
        case .queue:
            let live = consumers.values.filter { $0.destination == name && !$0.closed }.count
            let group = GroupStats(
                group: "queue",
                lag: d.readyCount + d.delayed.count,
                pending: d.inflight.count,
                consumers: live,
                committed: []
            )
            return DestinationStats(
                name: name,
                kind: .queue,
                depth: d.readyCount,
                inFlight: d.inflight.count,
                delayed: d.delayed.count,
                deadLettered: d.dlq.count,
                groups: [group]
            )
        case .stream:
            let groups = d.groups.keys.sorted().map { groupName -> GroupStats in
                let g = d.groups[groupName]!
                var lag = 0
                var pending = 0
                var committed: [Position] = []
                for (index, gp) in g.partitions.enumerated() {
                    let start = gp.committed ?? d.partitions[index].baseOffset
                    lag += Int(max(0, d.partitions[index].endOffset - start))
                    pending += gp.outstanding.count
                    if let c = gp.committed { committed.append(Position(partition: index, offset: c)) }
                }
                return GroupStats(
                    group: groupName,
                    lag: lag,
                    pending: pending,
                    consumers: g.members.count,
                    committed: committed
                )
            }
            let depth = d.partitions.reduce(0) { $0 + $1.records.count }
            let pending = groups.reduce(0) { $0 + $1.pending }
            return DestinationStats(
                name: name,
                kind: .stream,
                depth: depth,
                inFlight: pending,
                delayed: 0,
                deadLettered: d.dlq.count,
                groups: groups
            )
        }
    }

    // MARK: - Publish

    func publish(
        _ messages: [Message],
        to name: String,
        deliverAt: Date?,
        autoCreate: Bool,
        defaultPartitions: Int,
        maxMessages: Int
    ) throws -> [PublishReceipt] {
        let d = try destination(name, createAs: .queue, autoCreate: autoCreate, defaultPartitions: defaultPartitions)
        let now = Date()
        let stored =
            d.kind == .queue
            ? d.readyCount + d.delayed.count + d.inflight.count : d.partitions.reduce(0) { $0 + $1.records.count }
        if stored + messages.count > maxMessages && d.retention == nil {
            throw BrokerError(
                .brokerError,
                "'\(name)' holds \(stored) messages; max.messages is \(maxMessages)",
                backend: backend,
                destination: name
            )
        }
        var receipts: [PublishReceipt] = []
        receipts.reserveCapacity(messages.count)
        for message in messages {
            switch d.kind {
            case .queue:
                let record = Record(message: message, offset: d.nextOffset, storedAt: now)
                d.nextOffset += 1
                let due = deliverAt ?? now
                let item = QueueItem(record: record, attempt: 1, firstFailureAt: nil, due: due)
                if due > now { d.insertDelayed(item) } else { d.ready.append(item) }
                receipts.append(
                    PublishReceipt(messageID: message.id, destination: name, position: Position(offset: record.offset))
                )
            case .stream:
                let partitionIndex: Int
                if let key = message.key {
                    partitionIndex = Int(MemoryStore.fnv1a(key) % UInt64(d.partitions.count))
                } else {
                    partitionIndex = d.roundRobin % d.partitions.count
                    d.roundRobin &+= 1
                }
                let partition = d.partitions[partitionIndex]
                let record = Record(message: message, offset: partition.endOffset, storedAt: now)
                partition.records.append(record)
                applyRetention(d, partition)
                receipts.append(
                    PublishReceipt(
                        messageID: message.id,
                        destination: name,
                        position: Position(partition: partitionIndex, offset: record.offset)
                    )
                )
            }
        }
        if d.kind == .queue, let deliverAt, deliverAt > now { scheduleTimer(at: deliverAt) }
        pump(d)
        return receipts
    }

    private func applyRetention(_ d: Destination, _ partition: Partition) {
        guard let retention = d.retention else { return }
        var drop = 0
        if let maxMessages = retention.maxMessages {
            drop = max(drop, partition.records.count - max(1, maxMessages / d.partitions.count))
        }
        if let maxAge = retention.maxAge {
            let cutoff = Date().addingTimeInterval(-maxAge.timeInterval)
            while drop < partition.records.count && partition.records[drop].storedAt < cutoff { drop += 1 }
        }
        if drop > 0 {
            partition.records.removeFirst(drop)
            partition.baseOffset += Int64(drop)
        }
    }

    static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }

    // MARK: - Consumers

    func registerQueueConsumer(
        _ name: String,
        options: QueueConsumerOptions,
        autoCreate: Bool,
        defaultPartitions: Int
    ) throws -> UInt64 {
        _ = try destination(name, createAs: .queue, autoCreate: autoCreate, defaultPartitions: defaultPartitions)
        let id = makeID()
        consumers[id] = ConsumerState(
            id: id,
            destination: name,
            group: nil,
            prefetch: options.prefetch,
            retryPolicy: options.retryPolicy,
            visibilityTimeout: options.visibilityTimeout
        )
        return id
    }

    func registerStreamConsumer(
        _ name: String,
        group groupName: String,
        options: StreamConsumerOptions,
        autoCreate: Bool,
        defaultPartitions: Int
    ) throws -> UInt64 {
        let d = try destination(name, createAs: .stream, autoCreate: autoCreate, defaultPartitions: defaultPartitions)
        let id = makeID()
        consumers[id] = ConsumerState(
            id: id,
            destination: name,
            group: groupName,
            prefetch: options.prefetch,
            retryPolicy: options.retryPolicy,
            visibilityTimeout: .seconds(3600)
        )
        let group: Group
        if let existing = d.groups[groupName] {
            group = existing
        } else {
            group = Group(partitionCount: d.partitions.count)
            d.groups[groupName] = group
        }
        // Every start applies only to partitions the group has no commit for: a member that
        // joins never rewinds the group.
        for (index, gp) in group.partitions.enumerated() {
            let partition = d.partitions[index]
            switch options.start {
            case .earliest:
                if gp.committed == nil { gp.acks.reset(to: partition.baseOffset) }
            case .latest:
                if gp.committed == nil { gp.acks.reset(to: partition.endOffset) }
            case .position(let position):
                guard gp.committed == nil else { continue }
                if position.partition == index {
                    guard let offset = position.numericOffset else {
                        throw BrokerError(
                            .invalidConfiguration,
                            "position '\(position)' is not a numeric offset",
                            backend: backend,
                            destination: name
                        )
                    }
                    seek(gp, to: max(partition.baseOffset, min(offset, partition.endOffset)))
                } else if gp.committed == nil {
                    gp.acks.reset(to: partition.baseOffset)
                }
            case .timestamp(let date):
                guard gp.committed == nil else { continue }
                let offset = partition.records.first { $0.message.timestamp >= date }?.offset ?? partition.endOffset
                seek(gp, to: offset)
            }
        }
        group.members.append(id)
        rebalance(d, group)
        return id
    }

    private func seek(_ gp: GroupPartition, to offset: Int64) {
        gp.acks.reset(to: offset)
        gp.cursor = offset
        gp.outstanding = [:]
        gp.retries = [:]
        gp.attempts = [:]
    }

    /// Range assignment over the sorted members; partitions that change owner restart at the
    /// committed position (their uncommitted in-flight messages are delivered again).
    private func rebalance(_ d: Destination, _ group: Group) {
        let members = group.members.sorted()
        for index in group.partitions.indices {
            let owner = members.isEmpty ? nil : members[index % members.count]
            let previous = group.assignment[index]
            if owner != previous {
                let gp = group.partitions[index]
                gp.cursor = gp.committed ?? d.partitions[index].baseOffset
                for member in gp.outstanding.values { consumers[member]?.inflight -= 1 }
                gp.outstanding = [:]
                if let first = gp.retries.keys.min() { gp.cursor = min(gp.cursor, first) }
                gp.retries = [:]
            }
            group.assignment[index] = owner
        }
    }

    func next(consumer id: UInt64, waiterID: UInt64) async throws -> Delivery? {
        if Task.isCancelled { throw CancellationError() }
        guard let state = consumers[id], !state.closed else { return nil }
        if let delivery = try tryDeliver(to: id) { return delivery }
        guard let d = destinations[state.destination] else {
            throw BrokerError(
                .unknownDestination,
                "'\(state.destination)' was deleted",
                backend: backend,
                destination: state.destination
            )
        }
        return try await withCheckedThrowingContinuation { continuation in
            if cancelledWaiters.remove(waiterID) != nil {
                continuation.resume(throwing: CancellationError())
                return
            }
            waiters[waiterID] = Waiter(consumer: id, continuation: continuation)
            d.waiters.append(waiterID)
        }
    }

    func cancelWaiter(_ waiterID: UInt64) {
        if let waiter = waiters.removeValue(forKey: waiterID) {
            waiter.continuation.resume(throwing: CancellationError())
        } else {
            if cancelledWaiters.count > 10_000 { cancelledWaiters.removeAll() }
            cancelledWaiters.insert(waiterID)
        }
    }

    /// Hands available messages to waiting consumers of `d`, oldest waiter first.
    private func pump(_ d: Destination) {
        var remaining: [UInt64] = []
        for waiterID in d.waiters {
            guard let waiter = waiters[waiterID] else { continue }
            if consumers[waiter.consumer]?.closed != false {
                waiters[waiterID] = nil
                waiter.continuation.resume(returning: nil)
                continue
            }
            do {
                if let delivery = try tryDeliver(to: waiter.consumer) {
                    waiters[waiterID] = nil
                    waiter.continuation.resume(returning: delivery)
                } else {
                    remaining.append(waiterID)
                }
            } catch {
                waiters[waiterID] = nil
                waiter.continuation.resume(throwing: error)
            }
        }
        d.waiters = remaining
    }

    private func tryDeliver(to id: UInt64) throws -> Delivery? {
        guard let state = consumers[id], !state.closed, state.inflight < state.prefetch,
            let d = destinations[state.destination]
        else { return nil }
        let now = Date()
        switch d.kind {
        case .queue:
            promoteDue(d, now: now)
            guard let item = d.popReady() else { return nil }
            let tag = makeID()
            let leaseExpiry = now.addingTimeInterval(state.visibilityTimeout.timeInterval)
            d.inflight[tag] = Inflight(item: item, consumer: id, leaseExpiry: leaseExpiry)
            consumers[id]?.inflight += 1
            scheduleTimer(at: leaseExpiry)
            return Delivery(
                message: item.record.message,
                destination: d.name,
                attempt: item.attempt,
                firstFailureAt: item.firstFailureAt,
                position: Position(offset: item.record.offset),
                retryPolicy: state.retryPolicy,
                backend: backend,
                settler: MemoryQueueSettler(store: self, destination: d.name, tag: tag),
                metrics: d.metrics
            )
        case .stream:
            guard let groupName = state.group, let group = d.groups[groupName] else { return nil }
            let owned = group.assignment.filter { $0.value == id }.map(\.key).sorted()
            guard !owned.isEmpty else { return nil }
            for step in 0..<owned.count {
                let index = owned[(group.nextPartition + step) % owned.count]
                let gp = group.partitions[index]
                let partition = d.partitions[index]
                var offset: Int64
                var attempt = 1
                var firstFailure: Date?
                if !gp.retries.isEmpty {
                    // Blocked until a retry is due (keeps order); the lowest due offset first.
                    guard let due = gp.retries.filter({ $0.value.due <= now }).keys.min(),
                        let retry = gp.retries.removeValue(forKey: due)
                    else { continue }
                    offset = due
                    attempt = retry.attempt
                    firstFailure = retry.firstFailureAt
                } else {
                    if gp.cursor < partition.baseOffset { gp.cursor = partition.baseOffset }
                    guard gp.cursor < partition.endOffset else { continue }
                    offset = gp.cursor
                    gp.cursor += 1
                    if let previous = gp.attempts[offset] {
                        attempt = previous.attempt
                        firstFailure = previous.firstFailureAt
                    }
                }
                guard let record = partition.record(at: offset) else { continue }
                gp.outstanding[offset] = id
                consumers[id]?.inflight += 1
                group.nextPartition = (group.nextPartition + step + 1) % max(1, owned.count)
                return Delivery(
                    message: record.message,
                    destination: d.name,
                    group: groupName,
                    attempt: attempt,
                    firstFailureAt: firstFailure,
                    position: Position(partition: index, offset: offset),
                    retryPolicy: state.retryPolicy,
                    backend: backend,
                    settler: MemoryStreamSettler(
                        store: self,
                        destination: d.name,
                        group: groupName,
                        partition: index,
                        offset: offset,
                        consumer: id
                    ),
                    metrics: d.metrics
                )
            }
            return nil
        }
    }

    static let observer = DeliveryObserver.shared(for: "memory")

    func closeConsumer(_ id: UInt64) {
        guard var state = consumers[id], !state.closed else { return }
        state.closed = true
        consumers[id] = state
        guard let d = destinations[state.destination] else {
            consumers[id] = nil
            return
        }
        // Wake this consumer's waiters with nil (end of sequence).
        var remaining: [UInt64] = []
        for waiterID in d.waiters {
            if let waiter = waiters[waiterID], waiter.consumer == id {
                waiters[waiterID] = nil
                waiter.continuation.resume(returning: nil)
            } else {
                remaining.append(waiterID)
            }
        }
        d.waiters = remaining
        switch d.kind {
        case .queue:
            // Unsettled deliveries go back to the front, counted as an attempt (the consumer
            // may have started on them); graceful workers release unstarted ones first.
            let mine = d.inflight.filter { $0.value.consumer == id }.sorted {
                $0.value.item.record.offset > $1.value.item.record.offset
            }
            for (tag, inflight) in mine {
                d.inflight[tag] = nil
                var item = inflight.item
                item.attempt += 1
                item.firstFailureAt = item.firstFailureAt ?? Date()
                d.pushFront(item)
            }
        case .stream:
            if let groupName = state.group, let group = d.groups[groupName] {
                group.members.removeAll { $0 == id }
                rebalance(d, group)
            }
        }
        consumers[id] = nil
        pump(d)
    }

    // MARK: - Queue settlement

    private func takeInflight(_ name: String, _ tag: UInt64) throws -> (Destination, Inflight) {
        guard let d = destinations[name] else {
            throw BrokerError(.unknownDestination, "'\(name)' was deleted", backend: backend, destination: name)
        }
        guard let inflight = d.inflight.removeValue(forKey: tag) else {
            throw BrokerError(
                .closed,
                "delivery is no longer held (its consumer closed or its lease expired); it will be redelivered",
                backend: backend,
                destination: name
            )
        }
        consumers[inflight.consumer]?.inflight -= 1
        return (d, inflight)
    }

    func queueAck(_ name: String, tag: UInt64) throws {
        let (d, _) = try takeInflight(name, tag)
        pump(d)
    }

    func queueRetry(_ name: String, tag: UInt64, delay: Duration, nextAttempt: Int, firstFailureAt: Date) throws {
        let (d, inflight) = try takeInflight(name, tag)
        var item = inflight.item
        item.attempt = nextAttempt
        item.firstFailureAt = firstFailureAt
        let now = Date()
        item.due = now.addingTimeInterval(delay.timeInterval)
        if delay > .zero {
            d.insertDelayed(item)
            scheduleTimer(at: item.due)
        } else {
            d.ready.append(item)
        }
        pump(d)
    }

    func queueRelease(_ name: String, tag: UInt64) throws {
        let (d, inflight) = try takeInflight(name, tag)
        d.pushFront(inflight.item)
        pump(d)
    }

    func queueDeadLetter(_ name: String, tag: UInt64, envelope: DeadLetterEnvelope) throws {
        let (d, _) = try takeInflight(name, tag)
        appendDLQ(d, envelope)
        pump(d)
    }

    private func appendDLQ(_ d: Destination, _ envelope: DeadLetterEnvelope) {
        d.dlq.append(Record(message: envelope.message, offset: d.dlqNextOffset, storedAt: Date()))
        d.dlqNextOffset += 1
    }

    // MARK: - Stream settlement

    private func groupPartition(
        _ name: String,
        _ groupName: String,
        _ partition: Int
    ) throws -> (Destination, Group, GroupPartition) {
        guard let d = destinations[name], let group = d.groups[groupName], partition < group.partitions.count else {
            throw BrokerError(
                .unknownDestination,
                "'\(name)' or group '\(groupName)' no longer exists",
                backend: backend,
                destination: name
            )
        }
        return (d, group, group.partitions[partition])
    }

    private func settleOutstanding(_ gp: GroupPartition, offset: Int64, consumer: UInt64) {
        if gp.outstanding[offset] == consumer {
            gp.outstanding[offset] = nil
            consumers[consumer]?.inflight -= 1
        }
    }

    private func markAcked(_ gp: GroupPartition, _ offset: Int64) {
        for passed in gp.acks.ack(offset) { gp.attempts[passed] = nil }
    }

    func streamAck(_ name: String, group: String, partition: Int, offset: Int64, consumer: UInt64) throws {
        let (d, _, gp) = try groupPartition(name, group, partition)
        settleOutstanding(gp, offset: offset, consumer: consumer)
        markAcked(gp, offset)
        pump(d)
    }

    func streamRetry(
        _ name: String,
        group: String,
        partition: Int,
        offset: Int64,
        consumer: UInt64,
        delay: Duration,
        nextAttempt: Int,
        firstFailureAt: Date
    ) throws {
        let (d, _, gp) = try groupPartition(name, group, partition)
        let wasOutstanding = gp.outstanding[offset] == consumer
        settleOutstanding(gp, offset: offset, consumer: consumer)
        guard wasOutstanding else { return }  // partition moved: the new owner re-reads it anyway
        gp.attempts[offset] = (nextAttempt, firstFailureAt)
        let due = Date().addingTimeInterval(delay.timeInterval)
        gp.retries[offset] = (nextAttempt, firstFailureAt, due)
        scheduleTimer(at: due)
        pump(d)
    }

    func streamRelease(_ name: String, group: String, partition: Int, offset: Int64, consumer: UInt64) throws {
        let (d, _, gp) = try groupPartition(name, group, partition)
        let wasOutstanding = gp.outstanding[offset] == consumer
        settleOutstanding(gp, offset: offset, consumer: consumer)
        if wasOutstanding { gp.cursor = min(gp.cursor, offset) }
        pump(d)
    }

    func streamDeadLetter(
        _ name: String,
        group: String,
        partition: Int,
        offset: Int64,
        consumer: UInt64,
        envelope: DeadLetterEnvelope
    ) throws {
        let (d, _, gp) = try groupPartition(name, group, partition)
        settleOutstanding(gp, offset: offset, consumer: consumer)
        var envelope = envelope
        envelope.original.headers[HeaderName.group] = group
        appendDLQ(d, envelope)
        markAcked(gp, offset)
        pump(d)
    }

    // MARK: - Dead letters

    func deadLetters(_ name: String, limit: Int) throws -> [DeadLetterRecord] {
        guard let d = destinations[name] else {
            throw BrokerError(.unknownDestination, "'\(name)' does not exist", backend: backend, destination: name)
        }
        return d.dlq.prefix(limit).map { DeadLetterRecord(message: $0.message, position: Position(offset: $0.offset)) }
    }

    /// Moves the oldest `limit` dead letters of `name` to where `replay` says (full names).
    func moveDeadLetters(
        _ name: String,
        limit: Int,
        defaultPartitions: Int,
        replay: @Sendable (DeadLetterRecord) -> DeadLetterReplay
    ) throws -> Int {
        guard let d = destinations[name] else {
            throw BrokerError(.unknownDestination, "'\(name)' does not exist", backend: backend, destination: name)
        }
        let taken = d.dlq.prefix(limit)
        var byTarget: [String: [Message]] = [:]
        var order: [String] = []
        for record in taken {
            let copy = replay(DeadLetterRecord(message: record.message, position: Position(offset: record.offset)))
            if byTarget[copy.destination] == nil { order.append(copy.destination) }
            byTarget[copy.destination, default: []].append(copy.message)
        }
        // All in this actor turn: nothing else sees the records between removal and publish.
        d.dlq.removeFirst(taken.count)
        for target in order {
            _ = try publish(
                byTarget[target]!,
                to: target,
                deliverAt: nil,
                autoCreate: true,
                defaultPartitions: defaultPartitions,
                maxMessages: .max
            )
        }
        return taken.count
    }

    // MARK: - Timer (delays, retries, leases)

    private func promoteDue(_ d: Destination, now: Date) {
        var moved = 0
        while moved < d.delayed.count && d.delayed[moved].due <= now { moved += 1 }
        if moved > 0 {
            d.ready.append(contentsOf: d.delayed[0..<moved])
            d.delayed.removeFirst(moved)
        }
    }

    private func nextDeadline() -> Date? {
        var earliest: Date?
        func consider(_ date: Date) { if earliest.map({ date < $0 }) ?? true { earliest = date } }
        for d in destinations.values {
            if let first = d.delayed.first { consider(first.due) }
            for inflight in d.inflight.values { consider(inflight.leaseExpiry) }
            for group in d.groups.values {
                for gp in group.partitions { for retry in gp.retries.values { consider(retry.due) } }
            }
        }
        return earliest
    }

    /// Makes sure the timer fires no later than `date` (cheap: no scan).
    private func scheduleTimer(at date: Date) {
        if let current = timerDeadline, timerTask != nil, current <= date { return }
        timerTask?.cancel()
        timerDeadline = date
        timerTask = Task { [weak self] in
            let wait = date.timeIntervalSinceNow
            if wait > 0 { try? await Task.sleep(for: .interval(wait)) }
            if Task.isCancelled { return }
            await self?.onTimer()
        }
    }

    /// Schedules the timer for the earliest pending deadline (scans everything: only after a fire).
    private func rescheduleTimer() {
        guard let deadline = nextDeadline() else { return }
        scheduleTimer(at: deadline)
    }

    private func onTimer() {
        timerTask = nil
        timerDeadline = nil
        let now = Date()
        for d in destinations.values {
            // Expired leases: a consumer that is still open renews them (a running handler is
            // never taken away, as on Redis); otherwise the consumer is presumed dead and the
            // delivery, counted as an attempt, goes back.
            let expired = d.inflight.filter { $0.value.leaseExpiry <= now }
            for (tag, inflight) in expired {
                if let owner = consumers[inflight.consumer], !owner.closed {
                    d.inflight[tag]?.leaseExpiry = now.addingTimeInterval(owner.visibilityTimeout.timeInterval)
                    continue
                }
                d.inflight[tag] = nil
                consumers[inflight.consumer]?.inflight -= 1
                var item = inflight.item
                item.attempt += 1
                item.firstFailureAt = item.firstFailureAt ?? now
                d.pushFront(item)
            }
            promoteDue(d, now: now)
            pump(d)
        }
        rescheduleTimer()
    }

    func shutdown() {
        timerTask?.cancel()
        timerTask = nil
    }
}
