import Foundation

/// Whether a destination is a work queue or an append-only stream.
public enum DestinationKind: String, Sendable, Hashable, Codable, CaseIterable {
    case queue
    case stream
}

/// Options used when a destination is created.
///
/// ```swift
/// try await broker.createStream("message.sent", options: DestinationOptions(partitions: 4, retention: .init(maxAge: .seconds(86_400))))
/// ```
public struct DestinationOptions: Sendable, Hashable {
    /// How long / how much a stream keeps. `nil` fields mean "backend default".
    public struct Retention: Sendable, Hashable {
        public var maxAge: Duration?
        public var maxMessages: Int?
        public var maxBytes: Int?
        public init(maxAge: Duration? = nil, maxMessages: Int? = nil, maxBytes: Int? = nil) {
            self.maxAge = maxAge
            self.maxMessages = maxMessages
            self.maxBytes = maxBytes
        }
    }

    /// Partitions (Kafka, in-memory streams). Keys hash to partitions; order holds per partition.
    public var partitions: Int?
    /// Replication factor (Kafka).
    public var replicationFactor: Int?
    /// Retention for streams.
    public var retention: Retention?
    /// Extra backend-specific settings (e.g. Kafka topic configs, RabbitMQ queue arguments).
    public var backendSettings: [String: String]

    public init(
        partitions: Int? = nil,
        replicationFactor: Int? = nil,
        retention: Retention? = nil,
        backendSettings: [String: String] = [:]
    ) {
        self.partitions = partitions
        self.replicationFactor = replicationFactor
        self.retention = retention
        self.backendSettings = backendSettings
    }
}

/// A destination as listed by ``BrokerAdmin/listDestinations()``.
public struct DestinationInfo: Sendable, Hashable {
    public let name: String
    public let kind: DestinationKind
    public let partitions: Int
    public init(name: String, kind: DestinationKind, partitions: Int) {
        self.name = name
        self.kind = kind
        self.partitions = partitions
    }
}

/// Per-group numbers for a stream (or the implicit group of a queue).
public struct GroupStats: Sendable, Hashable {
    /// Group name.
    public let group: String
    /// Messages not yet delivered to the group (Kafka: high watermark − committed offset).
    public let lag: Int
    /// Delivered but not yet acknowledged.
    public let pending: Int
    /// Live consumers in the group.
    public let consumers: Int
    /// Committed position per partition.
    public let committed: [Position]

    public init(group: String, lag: Int, pending: Int, consumers: Int, committed: [Position]) {
        self.group = group
        self.lag = lag
        self.pending = pending
        self.consumers = consumers
        self.committed = committed
    }
}

/// Numbers for one destination, read from the broker.
public struct DestinationStats: Sendable, Hashable {
    public let name: String
    public let kind: DestinationKind
    /// Messages stored and ready (queue) or stored in total (stream).
    public let depth: Int
    /// Delivered, not yet settled (queues).
    public let inFlight: Int
    /// Waiting for a retry delay or a `deliverAt` time.
    public let delayed: Int
    /// Entries in the dead-letter queue.
    public let deadLettered: Int
    /// Consumer groups (streams) with their lag.
    public let groups: [GroupStats]

    public init(
        name: String,
        kind: DestinationKind,
        depth: Int,
        inFlight: Int,
        delayed: Int,
        deadLettered: Int,
        groups: [GroupStats]
    ) {
        self.name = name
        self.kind = kind
        self.depth = depth
        self.inFlight = inFlight
        self.delayed = delayed
        self.deadLettered = deadLettered
        self.groups = groups
    }
}

/// Destination and group names: 1–200 characters from `A–Z a–z 0–9 . _ -` and `:`, not
/// starting with `.` or `-`. Every backend accepts this set, so apps can switch brokers.
public enum DestinationName {
    public static let maxLength = 200

    /// Throws ``BrokerError/Code/invalidDestination`` naming the problem.
    public static func validate(_ name: String, what: String = "destination", backend: String? = nil) throws {
        func fail(_ why: String) -> BrokerError {
            BrokerError(.invalidDestination, "invalid \(what) name '\(name)': \(why)", backend: backend)
        }
        // Every publish and consumer checks its name: a name of allowed ASCII bytes is checked
        // on its UTF-8 bytes (where bytes are characters); anything else takes the path below,
        // which names the problem.
        var bytes = name
        let reserved = bytes.withUTF8 { utf8 -> String?? in
            guard !utf8.isEmpty, utf8.count <= maxLength, utf8[0] != dot, utf8[0] != dash,
                utf8.allSatisfy(isAllowed)
            else { return .none }
            return .some(reservedPart(utf8: utf8, what: what))
        }
        if let reserved {
            if let reserved {
                throw fail(
                    "\(reserved) is reserved for BrokerKit's own delay, retry, dead-letter, offset and catalog structures"
                )
            }
            return
        }
        if name.isEmpty { throw fail("must not be empty") }
        if name.count > maxLength { throw fail("longer than \(maxLength) characters") }
        if name.first == "." || name.first == "-" { throw fail("must not start with '.' or '-'") }
        for scalar in name.unicodeScalars {
            let ok =
                (scalar >= "a" && scalar <= "z") || (scalar >= "A" && scalar <= "Z")
                || (scalar >= "0" && scalar <= "9") || scalar == "." || scalar == "_" || scalar == "-" || scalar == ":"
            if !ok {
                throw fail("character '\(scalar.escaped(asASCII: true))' is not allowed (use A-Z a-z 0-9 . _ - :)")
            }
        }
        if let reserved = reservedPart(of: name, what: what) {
            throw fail(
                "\(reserved) is reserved for BrokerKit's own delay, retry, dead-letter, offset and catalog structures"
            )
        }
    }

    /// Names an app cannot use, because a backend derives the names of its internal
    /// structures from the destination's: `<name>.dlq` / `<name>:dlq` (dead letters),
    /// `<name>.delay` / `<name>:delay` (delayed messages), `<name>:retry` and
    /// `<name>.retry.<n>` (retries), `<name>.wait.<ms>` and `<name>.wait.<ms>.quorum` (RabbitMQ's
    /// delay queues),
    /// `<name>.offsets.<group>` (RabbitMQ's committed stream positions) and names starting
    /// with `__` (BrokerKit's catalog, Kafka's own topics). Group names only may not start
    /// with `__`. Every backend refuses the same names, so an app can move between brokers.
    /// Returns what is reserved, or `nil`.
    public static func reservedPart(of name: String, what: String = "destination") -> String? {
        var bytes = name
        return bytes.withUTF8 { reservedPart(utf8: $0, what: what) }
    }

    /// ``reservedPart(of:what:)`` on a name's UTF-8 bytes. The reserved parts are ASCII, and
    /// an ASCII byte never occurs inside the encoding of another character, so comparing
    /// bytes finds exactly the reserved names.
    private static func reservedPart(utf8 name: UnsafeBufferPointer<UInt8>, what: String) -> String? {
        if name.count >= 2 && name[0] == underscore && name[1] == underscore { return "a name starting with '__'" }
        guard what == "destination" else { return nil }
        for suffix: StaticString in [".dlq", ":dlq", ".delay", ":delay", ":retry"] where name.ends(with: suffix) {
            return "a name ending in '\(suffix)'"
        }
        for infix: StaticString in [".retry.", ".wait."] {
            if let after = name.end(ofLast: infix), name.allDigits(after..<name.count) {
                return "a name ending in '\(infix)<number>'"
            }
        }
        // RabbitMQ's quorum wait queues: `<name>.wait.<ms>.quorum`.
        if name.ends(with: ".quorum"), let after = name.end(ofLast: ".wait."), after <= name.count - 7,
            name.allDigits(after..<(name.count - 7))
        {
            return "a name ending in '.wait.<number>.quorum'"
        }
        if name.end(ofLast: ".offsets.") != nil { return "a name containing '.offsets.'" }
        return nil
    }

    private static let dot = UInt8(ascii: "."), dash = UInt8(ascii: "-"), underscore = UInt8(ascii: "_")

    private static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), dot, underscore, dash, UInt8(ascii: ":"):
            true
        default: false
        }
    }
}

extension UnsafeBufferPointer<UInt8> {
    fileprivate func ends(with suffix: StaticString) -> Bool {
        let n = suffix.utf8CodeUnitCount
        guard count >= n else { return false }
        return suffix.withUTF8Buffer { tail in (0..<n).allSatisfy { self[count - n + $0] == tail[$0] } }
    }

    /// The index just past the last occurrence of `infix`, or `nil`.
    fileprivate func end(ofLast infix: StaticString) -> Int? {
        let n = infix.utf8CodeUnitCount
        guard count >= n else { return nil }
        return infix.withUTF8Buffer { pattern in
            for start in stride(from: count - n, through: 0, by: -1)
            where (0..<n).allSatisfy({ self[start + $0] == pattern[$0] }) {
                return start + n
            }
            return nil
        }
    }

    /// Whether `range` is not empty and holds only ASCII digits (an empty or inverted range: no).
    fileprivate func allDigits(_ range: Range<Int>) -> Bool {
        !range.isEmpty && range.allSatisfy { self[$0] >= UInt8(ascii: "0") && self[$0] <= UInt8(ascii: "9") }
    }
}
