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

    /// Parses `[entryID, [field, value, ...]]`; `nil` for deleted entries (no fields).
    static func entry(from reply: RedisReply) -> Entry? {
        guard let parts = reply.array, parts.count == 2, let entryID = parts[0].text, let flat = parts[1].array else { return nil }
        var id: String?
        var key: String?
        var timestamp: Date?
        var attempt = 1
        var firstFailure: Date?
        var headers: [String: String] = [:]
        var payload = Data()
        var index = 0
        while index + 1 < flat.count {
            let name = flat[index].text ?? ""
            let value = flat[index + 1]
            switch name {
            case "id": id = value.text
            case "key": key = value.text
            case "ts": timestamp = value.integer.map { Date(timeIntervalSince1970: Double($0) / 1000) }
            case "attempt": attempt = max(1, Int(value.integer ?? 1))
            case "ff": firstFailure = value.integer.map { Date(timeIntervalSince1970: Double($0) / 1000) }
            case "payload": payload = value.data ?? Data()
            default:
                if name.hasPrefix("h:") { headers[String(name.dropFirst(2))] = value.text ?? "" }
            }
            index += 2
        }
        let entryTime = Int64(entryID.split(separator: "-").first ?? "").map { Date(timeIntervalSince1970: Double($0) / 1000) }
        let message = Message(
            id: id ?? entryID, key: key, payload: payload, headers: headers, timestamp: timestamp ?? entryTime ?? Date())
        return Entry(entryID: entryID, message: message, attempt: attempt, firstFailureAt: firstFailure)
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
