import BrokerAPI
import Foundation

/// How a BrokerKit message is stored in a stream entry. Other clients can read and write
/// the same layout (`redis-cli XADD orders '*' id 42 key user-1 h:source cli payload '{...}'`):
///
/// | field | value | required |
/// |---|---|---|
/// | `id` | message id | no (the entry id is used) |
/// | `key` | routing key | no |
/// | `ts` | creation time, milliseconds since 1970 | no (the entry id's time is used) |
/// | `attempt` | attempt number of the entry's first delivery | no (1) |
/// | `ff` | first failure, milliseconds since 1970 | no |
/// | `h:<name>` | one header | no |
/// | `payload` | the payload bytes, unchanged | yes (empty if missing) |
enum RedisFieldLayout {
    /// `after` comes first (a command such as `XADD key *`): the whole command is built in
    /// one array, sized once (this runs once per published message).
    static func fields(
        for message: Message, attempt: Int = 1, firstFailureAt: Date? = nil, after prefix: [RedisArgument] = []
    ) -> [RedisArgument] {
        var fields = prefix
        fields.reserveCapacity(prefix.count + 12 + 2 * message.headers.count)
        func add(_ name: RedisArgument, _ value: RedisArgument) {
            fields.append(name)
            fields.append(value)
        }
        add("id", RedisArgument(message.id))
        if let key = message.key { add("key", RedisArgument(key)) }
        add("ts", RedisArgument(Int64((message.timestamp.timeIntervalSince1970 * 1000).rounded())))
        if attempt > 1 { add("attempt", RedisArgument(attempt)) }
        if let firstFailureAt { add("ff", RedisArgument(Int64((firstFailureAt.timeIntervalSince1970 * 1000).rounded()))) }
        for (name, value) in message.headers.sorted(by: { $0.key < $1.key }) { add(RedisArgument("h:" + name), RedisArgument(value)) }
        add("payload", RedisArgument(message.payload))
        return fields
    }

    struct Entry: Sendable {
        let entryID: String
        let message: Message
        let attempt: Int
        let firstFailureAt: Date?
    }

    /// Collects one entry's fields. Names are compared as bytes and numbers parsed from
    /// bytes: this runs once per consumed message (straight from hiredis's reply for
    /// XREADGROUP, see `HiredisConnection.decodeStreamRead`).
    struct FieldCollector {
        var id: String?
        var key: String?
        var timestamp: Date?
        var attempt = 1
        var firstFailure: Date?
        var headers: [String: String] = [:]
        var payload = Data()

        mutating func add(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
            if Self.equals(name, "payload") {
                payload = Data(value)
            } else if Self.equals(name, "id") {
                id = String(decoding: value, as: UTF8.self)
            } else if Self.equals(name, "key") {
                key = String(decoding: value, as: UTF8.self)
            } else if Self.equals(name, "ts") {
                timestamp = Self.integer(value).map { Date(timeIntervalSince1970: Double($0) / 1000) }
            } else if Self.equals(name, "attempt") {
                attempt = max(1, Int(Self.integer(value) ?? 1))
            } else if Self.equals(name, "ff") {
                firstFailure = Self.integer(value).map { Date(timeIntervalSince1970: Double($0) / 1000) }
            } else if name.count > 2, name[0] == UInt8(ascii: "h"), name[1] == UInt8(ascii: ":") {
                headers[String(decoding: UnsafeRawBufferPointer(rebasing: name[2...]), as: UTF8.self)] = String(decoding: value, as: UTF8.self)
            }
        }

        func entry(entryID: String) -> Entry {
            // Without a `ts` field, the entry id's milliseconds are the creation time.
            let created = timestamp
                ?? entryID.utf8.firstIndex(of: UInt8(ascii: "-")).flatMap { Int64(entryID[..<$0]) }.map { Date(timeIntervalSince1970: Double($0) / 1000) }
                ?? Date()
            let message = Message(id: id ?? entryID, key: key, payload: payload, headers: headers, timestamp: created)
            return Entry(entryID: entryID, message: message, attempt: attempt, firstFailureAt: firstFailure)
        }

        private static func equals(_ bytes: UnsafeRawBufferPointer, _ name: StaticString) -> Bool {
            bytes.count == name.utf8CodeUnitCount && (bytes.count == 0 || memcmp(bytes.baseAddress!, name.utf8Start, bytes.count) == 0)
        }

        /// A decimal integer, parsed without making a `String`.
        static func integer(_ bytes: UnsafeRawBufferPointer) -> Int64? {
            guard !bytes.isEmpty, bytes.count <= 19 else { return nil }
            var value: Int64 = 0
            var negative = false
            for (offset, byte) in bytes.enumerated() {
                if offset == 0 && byte == UInt8(ascii: "-") && bytes.count > 1 {
                    negative = true
                    continue
                }
                guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            return negative ? -value : value
        }
    }

    /// Parses `[entryID, [field, value, ...]]`; `nil` for deleted entries (no fields).
    static func entry(from reply: RedisReply) -> Entry? {
        guard case .array(let parts) = reply, parts.count == 2, let entryID = parts[0].text, case .array(let flat) = parts[1] else {
            return nil
        }
        var fields = FieldCollector()
        var index = 0
        while index + 1 < flat.count {
            if let name = flat[index].data, let value = flat[index + 1].data {
                name.withUnsafeBytes { name in value.withUnsafeBytes { value in fields.add(name: name, value: value) } }
            }
            index += 2
        }
        return fields.entry(entryID: entryID)
    }

    /// Entries of an XREADGROUP / XRANGE reply's entry list.
    static func entries(_ list: RedisReply) -> (valid: [Entry], deleted: [String]) {
        if case .entries(let decoded) = list { return (decoded.valid, decoded.deleted) }
        var valid: [Entry] = []
        var deleted: [String] = []
        for item in list.array ?? [] {
            if let entry = entry(from: item) {
                valid.append(entry)
            } else if let id = item.array?.first?.text {
                deleted.append(id)
            }
        }
        return (valid, deleted)
    }

    /// The entry id just before `id` (so that a group's last-delivered id makes `id` the next).
    static func idBefore(_ id: String) -> String? {
        let parts = id.split(separator: "-")
        guard let ms = UInt64(parts.first ?? "") else { return nil }
        let seq = parts.count > 1 ? UInt64(parts[1]) ?? 0 : 0
        if seq > 0 { return "\(ms)-\(seq - 1)" }
        if ms == 0 { return "0-0" }
        return "\(ms - 1)-18446744073709551615"
    }
}
