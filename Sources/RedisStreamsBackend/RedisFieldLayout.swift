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
    static func fields(for message: Message, attempt: Int = 1, firstFailureAt: Date? = nil) -> [RedisArgument] {
        var fields: [RedisArgument] = ["id", RedisArgument(message.id)]
        if let key = message.key { fields += ["key", RedisArgument(key)] }
        fields += ["ts", RedisArgument(Int64((message.timestamp.timeIntervalSince1970 * 1000).rounded()))]
        if attempt > 1 { fields += ["attempt", RedisArgument(attempt)] }
        if let firstFailureAt { fields += ["ff", RedisArgument(Int64((firstFailureAt.timeIntervalSince1970 * 1000).rounded()))] }
        for (name, value) in message.headers.sorted(by: { $0.key < $1.key }) {
            fields += [RedisArgument("h:" + name), RedisArgument(value)]
        }
        fields += ["payload", RedisArgument(message.payload)]
        return fields
    }

    struct Entry: Sendable {
        let entryID: String
        let message: Message
        let attempt: Int
        let firstFailureAt: Date?
    }

    private static let idField = Data("id".utf8)
    private static let keyField = Data("key".utf8)
    private static let timestampField = Data("ts".utf8)
    private static let attemptField = Data("attempt".utf8)
    private static let firstFailureField = Data("ff".utf8)
    private static let payloadField = Data("payload".utf8)

    /// Parses `[entryID, [field, value, ...]]`; `nil` for deleted entries (no fields).
    /// Field names are compared as bytes and numbers parsed from bytes: this runs once per
    /// consumed message.
    static func entry(from reply: RedisReply) -> Entry? {
        guard case .array(let parts) = reply, parts.count == 2, let entryID = parts[0].text, case .array(let flat) = parts[1] else {
            return nil
        }
        var id: String?
        var key: String?
        var timestamp: Date?
        var attempt = 1
        var firstFailure: Date?
        var headers: [String: String] = [:]
        var payload = Data()
        var index = 0
        while index + 1 < flat.count {
            defer { index += 2 }
            guard case .string(let name) = flat[index] else { continue }
            let value = flat[index + 1]
            switch name {
            case idField: id = value.text
            case keyField: key = value.text
            case timestampField: timestamp = integer(value).map { Date(timeIntervalSince1970: Double($0) / 1000) }
            case attemptField: attempt = max(1, Int(integer(value) ?? 1))
            case firstFailureField: firstFailure = integer(value).map { Date(timeIntervalSince1970: Double($0) / 1000) }
            case payloadField: payload = value.data ?? Data()
            default:
                if name.count > 2, name[name.startIndex] == UInt8(ascii: "h"), name[name.startIndex + 1] == UInt8(ascii: ":") {
                    headers[String(decoding: name.dropFirst(2), as: UTF8.self)] = value.text ?? ""
                }
            }
        }
        // Without a `ts` field, the entry id's milliseconds are the creation time.
        let created = timestamp
            ?? entryID.utf8.firstIndex(of: UInt8(ascii: "-")).flatMap { Int64(entryID[..<$0]) }.map { Date(timeIntervalSince1970: Double($0) / 1000) }
            ?? Date()
        let message = Message(id: id ?? entryID, key: key, payload: payload, headers: headers, timestamp: created)
        return Entry(entryID: entryID, message: message, attempt: attempt, firstFailureAt: firstFailure)
    }

    /// A decimal integer reply or bulk string, parsed without making a `String`.
    private static func integer(_ reply: RedisReply) -> Int64? {
        guard case .string(let bytes) = reply else { return reply.integer }
        guard !bytes.isEmpty, bytes.count <= 19 else { return reply.integer }
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

    /// Entries of an XREADGROUP / XRANGE reply's entry list.
    static func entries(_ list: RedisReply) -> (valid: [Entry], deleted: [String]) {
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
