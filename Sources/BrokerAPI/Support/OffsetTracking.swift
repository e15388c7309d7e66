/// Which offsets of one partition are acknowledged, and the position a consumer group commits:
/// the first offset not yet acknowledged. Acks arrive in any order (concurrent handlers); the
/// commit point moves only over an unbroken run of acked offsets, so a restarted group never
/// skips a message that was still being handled.
///
/// For logs whose offsets are dense (every offset from the start holds a record: the memory
/// broker, RabbitMQ streams). Kafka's offsets can have gaps (transaction markers, compaction),
/// so its consumer uses ``HandedOutOffsets`` instead.
@_spi(BrokerBackend) public struct ContiguousAcks: Sendable {
    /// The first offset not yet acknowledged (everything below it is); `nil` until the start
    /// is known.
    public private(set) var committed: Int64?
    /// Acked offsets above `committed`.
    private var acked: Set<Int64> = []

    public init(committed: Int64? = nil) { self.committed = committed }

    /// Moves the commit point to `offset` (a seek, a stored position read back) and forgets
    /// every ack.
    public mutating func reset(to offset: Int64?) {
        committed = offset
        acked = []
    }

    /// Marks `offset` acknowledged. Returns the offsets the commit point moved past (empty
    /// when it did not move, when `offset` is below it, or when the start is not known).
    @discardableResult
    public mutating func ack(_ offset: Int64) -> Range<Int64> {
        guard let start = committed, offset >= start else { return 0..<0 }
        if offset == start && acked.isEmpty {
            committed = start + 1  // acked in order: the common case, no set needed
            return start..<(start + 1)
        }
        acked.insert(offset)
        var next = start
        while acked.remove(next) != nil { next += 1 }
        committed = next
        return start..<next
    }

    /// Acked offsets still waiting above the commit point.
    public var pendingCount: Int { acked.count }
}

/// The commit position of a partition whose offsets may have gaps: the records handed out,
/// in offset order, and which of them are done. The position to commit is the first handed
/// out and not done, else one past the last handed out. Kafka's consumer keeps one per
/// assigned partition.
@_spi(BrokerBackend) public struct HandedOutOffsets: Sendable {
    private var order: [Int64] = []
    private var head = 0
    private var done: Set<Int64> = []
    /// The last offset handed out.
    public private(set) var last: Int64?

    public init() {}

    /// Records that `offset` was handed out, in fetch (increasing offset) order.
    public mutating func handedOut(_ offset: Int64) {
        order.append(offset)
        last = offset
    }

    /// The offset to commit: the first not-done one, or one past the last handed out.
    public var commitOffset: Int64? {
        if head < order.count { return order[head] }
        return last.map { $0 + 1 }
    }

    /// Marks a handed-out `offset` done.
    public mutating func markDone(_ offset: Int64) {
        if head < order.count && order[head] == offset && done.isEmpty {
            head += 1  // settled in fetch order: the common case, no set needed
        } else {
            done.insert(offset)
            while head < order.count, done.remove(order[head]) != nil { head += 1 }
        }
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }
}
