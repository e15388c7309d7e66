@_spi(BrokerBackend) import BrokerAPI
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
///
/// Entries are untrusted input (other programs write to the same keys). An entry whose
/// `attempt`, `ts` or `ff` is not a whole number in range, whose `id`, `key` or a header is
/// not valid UTF-8, or that has more headers than ``PublishValidation/maxHeaderCount`` is
/// read with a ``Delivery/defect`` naming the field, and is dead-lettered before the app sees it.
enum RedisMessageMapping {
    /// `after` comes first (a command such as `XADD key *`): the whole command is built in
    /// one array, sized once (this runs once per published message).
    static func fields(
        for message: Message,
        attempt: Int = 1,
        firstFailureAt: Date? = nil,
        after prefix: [RedisArgument] = []
    ) -> [RedisArgument] {
        var fields = prefix
        fields.reserveCapacity(prefix.count + 12 + 2 * message.headers.count)
        func add(_ name: RedisArgument, _ value: RedisArgument) {
            fields.append(name)
            fields.append(value)
        }
        add("id", RedisArgument(message.id))
        if let key = message.key { add("key", RedisArgument(key)) }
        add("ts", RedisArgument(EpochMillis.of(message.timestamp)))
        if attempt > 1 { add("attempt", RedisArgument(attempt)) }
        if let firstFailureAt { add("ff", RedisArgument(EpochMillis.of(firstFailureAt))) }
        for (name, value) in message.headers.sorted(by: { $0.key < $1.key }) {
            add(RedisArgument("h:" + name), RedisArgument(value))
        }
        add("payload", RedisArgument(message.payload))
        return fields
    }

    struct Entry: Sendable {
        let entryID: String
        let message: Message
        let attempt: Int
        let firstFailureAt: Date?
        /// Why BrokerKit cannot use the entry (see the type's note), or `nil`.
        var defect: String? = nil
    }

    /// Milliseconds since 1970 that are a date BrokerKit can use (year 1970 to 9999).
    static let millisRange = EpochMillis.range

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
        /// The first thing wrong with the entry.
        var defect: String?

        private mutating func note(_ what: String) {
            if defect == nil { defect = what }
        }

        /// `value` as text; a defect naming `field` if it is not valid UTF-8.
        private mutating func text(_ value: UnsafeRawBufferPointer, field: @autoclosure () -> String) -> String {
            if let text = String(validating: value, as: UTF8.self) { return text }
            note("field '\(field())' is not valid UTF-8")
            return String(decoding: value, as: UTF8.self)
        }

        /// A date in milliseconds; a defect naming `field` if it is not one.
        private mutating func millis(_ value: UnsafeRawBufferPointer, field: String) -> Date? {
            guard let ms = Self.integer(value), RedisMessageMapping.millisRange.contains(ms) else {
                note(
                    "field '\(field)' is '\(Self.shown(value))', not milliseconds since 1970 (0 to \(RedisMessageMapping.millisRange.upperBound))"
                )
                return nil
            }
            return Date(timeIntervalSince1970: Double(ms) / 1000)
        }

        mutating func add(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
            if Self.equals(name, "payload") {
                payload = Data(value)
            } else if Self.equals(name, "id") {
                id = text(value, field: "id")
            } else if Self.equals(name, "key") {
                key = text(value, field: "key")
            } else if Self.equals(name, "ts") {
                timestamp = millis(value, field: "ts")
            } else if Self.equals(name, "attempt") {
                if let n = Self.integer(value), n >= 1, n <= Int64(Delivery.maxAttempt) {
                    attempt = Int(n)
                } else {
                    note(
                        "field 'attempt' is '\(Self.shown(value))', not a whole number from 1 to \(Delivery.maxAttempt)"
                    )
                }
            } else if Self.equals(name, "ff") {
                firstFailure = millis(value, field: "ff")
            } else if name.count > 2, name[0] == UInt8(ascii: "h"), name[1] == UInt8(ascii: ":") {
                // Past the limit the entry is a defect; the rest are not kept (its DLQ copy
                // holds the first ones, so that writing it stays one bounded command), but for
                // BrokerKit's own, which a DLQ entry's envelope needs.
                let header = text(UnsafeRawBufferPointer(rebasing: name[2...]), field: "header name")
                guard headers.count < PublishValidation.maxHeaderCount || header.hasPrefix(HeaderName.reservedPrefix)
                else {
                    note("more than \(PublishValidation.maxHeaderCount) headers")
                    return
                }
                headers[header] = text(value, field: "h:\(header)")
            }
        }

        /// The first bytes of a bad value, for an error message.
        static func shown(_ value: UnsafeRawBufferPointer) -> String {
            let text = String(decoding: value.prefix(40), as: UTF8.self)
            return value.count > 40 ? text + "…" : text
        }

        func entry(entryID: String) -> Entry {
            // Without a `ts` field, the entry id's milliseconds are the creation time.
            let created =
                timestamp
                ?? entryID.utf8.firstIndex(of: UInt8(ascii: "-")).flatMap { Int64(entryID[..<$0]) }.map {
                    Date(timeIntervalSince1970: Double($0) / 1000)
                }
                ?? Date()
            let message = Message(id: id ?? entryID, key: key, payload: payload, headers: headers, timestamp: created)
            return Entry(
                entryID: entryID,
                message: message,
                attempt: attempt,
                firstFailureAt: firstFailure,
                defect: defect
            )
        }

        private static func equals(_ bytes: UnsafeRawBufferPointer, _ name: StaticString) -> Bool {
            bytes.count == name.utf8CodeUnitCount
                && (bytes.count == 0 || memcmp(bytes.baseAddress!, name.utf8Start, bytes.count) == 0)
        }

        /// A decimal integer, parsed without making a `String`; `nil` if it is not one or does
        /// not fit in 64 bits (a value read from Redis can be anything).
        static func integer(_ bytes: UnsafeRawBufferPointer) -> Int64? {
            guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
            var value: Int64 = 0
            let negative = bytes[0] == UInt8(ascii: "-")
            if negative && bytes.count == 1 { return nil }
            for byte in bytes.dropFirst(negative ? 1 : 0) {
                guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
                let digit = Int64(byte - UInt8(ascii: "0"))
                // Accumulated negatively, so that Int64.min parses too.
                let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                let (next, o2) = times10.subtractingReportingOverflow(digit)
                if o1 || o2 { return nil }
                value = next
            }
            if negative { return value }
            let (positive, overflow) = value.multipliedReportingOverflow(by: -1)
            return overflow ? nil : positive
        }
    }

    /// Parses `[entryID, [field, value, ...]]`; `nil` for deleted entries (no fields).
    static func entry(from reply: RedisReply) -> Entry? {
        guard case .array(let parts) = reply, parts.count == 2, let entryID = parts[0].text,
            case .array(let flat) = parts[1]
        else {
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
