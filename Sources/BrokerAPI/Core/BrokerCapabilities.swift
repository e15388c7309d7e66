/// What a backend can do. The conformance suite runs every case whose requirements a backend
/// claims and skips only what it disclaims; `brokerkit capabilities` prints the matrix.
public struct BrokerCapabilities: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Point-to-point work queues with competing consumers.
    public static let queues = BrokerCapabilities(rawValue: 1 << 0)
    /// Append-only streams.
    public static let streams = BrokerCapabilities(rawValue: 1 << 1)
    /// Independent consumer groups on one stream, members sharing the work.
    public static let consumerGroups = BrokerCapabilities(rawValue: 1 << 2)
    /// Order per key is kept while different keys run concurrently.
    public static let orderedPerKey = BrokerCapabilities(rawValue: 1 << 3)
    /// Replay from earliest / a position.
    public static let replay = BrokerCapabilities(rawValue: 1 << 4)
    /// A group created later still sees messages published before it existed.
    public static let newGroupSeesHistory = BrokerCapabilities(rawValue: 1 << 5)
    /// Start a stream consumer at a timestamp.
    public static let timestampSeek = BrokerCapabilities(rawValue: 1 << 6)
    /// Delayed delivery (publish with `deliverAt`), emulated or native.
    public static let delayedDelivery = BrokerCapabilities(rawValue: 1 << 7)
    /// The broker itself schedules delayed messages (no client-side timer).
    public static let nativeDelay = BrokerCapabilities(rawValue: 1 << 8)
    /// The broker itself routes rejected messages to a dead-letter destination.
    public static let nativeDLQ = BrokerCapabilities(rawValue: 1 << 9)
    /// Messages survive a broker restart.
    public static let persistent = BrokerCapabilities(rawValue: 1 << 10)
    /// Each message is acknowledged on its own (not only a position).
    public static let perMessageAck = BrokerCapabilities(rawValue: 1 << 11)
    /// Unacked messages of a consumer that vanished are redelivered after a lease expires.
    public static let leaseExpiry = BrokerCapabilities(rawValue: 1 << 12)
    /// State is shared between processes (not only inside one process).
    public static let crossProcess = BrokerCapabilities(rawValue: 1 << 13)
    /// Per-consumer in-flight bound (prefetch).
    public static let prefetch = BrokerCapabilities(rawValue: 1 << 14)

    /// Every flag with its display name, in matrix order.
    public static let named: [(name: String, flag: BrokerCapabilities)] = [
        ("queues", .queues), ("streams", .streams), ("consumer groups", .consumerGroups),
        ("ordered per key", .orderedPerKey), ("replay", .replay),
        ("new group sees history", .newGroupSeesHistory), ("timestamp seek", .timestampSeek),
        ("delayed delivery", .delayedDelivery), ("native delay", .nativeDelay),
        ("native DLQ", .nativeDLQ), ("persistent", .persistent), ("per-message ack", .perMessageAck),
        ("lease expiry", .leaseExpiry), ("cross-process", .crossProcess), ("prefetch", .prefetch),
    ]

    public var description: String {
        Self.named.filter { contains($0.flag) }.map(\.name).joined(separator: ", ")
    }
}
