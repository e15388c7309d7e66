@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// How a BrokerKit ``Message`` travels as an AMQP 0-9-1 message.
///
/// | BrokerKit | AMQP |
/// |---|---|
/// | `payload` | body, bytes unchanged |
/// | `id` | `message_id` property |
/// | `key` | header `x-brokerkit-key` (long string); absent when `nil` |
/// | `timestamp` | `timestamp` property (whole seconds, for other clients) and header `x-brokerkit-timestamp-ms` (milliseconds, read back first) |
/// | `headers` | the `headers` table, each value a long string (`S`) |
/// | — | `delivery_mode` 2 (persistent) on every message |
/// | delivery `attempt` | header `x-brokerkit-attempt` (set on retries and releases) plus the broker's redeliveries: quorum queues' `x-delivery-count`, or 1 for a classic queue's `redelivered` flag |
/// | delivery `firstFailureAt` | header `x-brokerkit-first-failure-at` (ISO 8601) |
///
/// Reading a message from another client: a missing `message_id` gets a fresh id, a missing
/// key header means no key, numeric and boolean header values become their text, and the
/// broker's bookkeeping headers (`x-death`, `x-first-death-*`, `x-last-death-*`,
/// `x-delivery-count`, `x-stream-offset`) are not copied into ``Message/headers`` (they are
/// kept, unchanged, on the copy a dead-lettered message leaves in `<queue>.dlq`).
enum RabbitMessageMapping {
    static let keyHeader = "x-brokerkit-key"
    static let timestampHeader = "x-brokerkit-timestamp-ms"
    static let deliveryCountHeader = "x-delivery-count"
    static let streamOffsetHeader = "x-stream-offset"

    /// Headers the broker adds that do not fit `[String: String]` or are not the sender's.
    static func isBrokerBookkeeping(_ name: String) -> Bool {
        name == "x-death" || name.hasPrefix("x-first-death-") || name.hasPrefix("x-last-death-")
            || name == deliveryCountHeader || name == streamOffsetHeader
    }

    /// Why BrokerKit cannot use `delivery` (``Delivery/defect``): more headers than
    /// ``PublishValidation/maxHeaderCount``, or a text header (`S`), a header name (nested
    /// ones too) or the message id that is not UTF-8 (its copy would carry other bytes). `nil` for a usable message: one pass over the headers,
    /// ASCII checked without decoding.
    static func defect(of delivery: AMQPDelivery) -> String? {
        let entries = delivery.properties.headers.entries
        if entries.count > PublishValidation.maxHeaderCount {
            return "\(entries.count) headers, more than \(PublishValidation.maxHeaderCount)"
        }
        if let property = delivery.properties.invalidText {
            return "property '\(property)' is not valid UTF-8"
        }
        if let key = delivery.properties.headers.invalidKey {
            return "header name '\(key)' is not valid UTF-8"
        }
        for entry in entries {
            guard case .string(let data) = entry.value else { continue }
            if !data.allSatisfy({ $0 < 0x80 }) && String(validating: data, as: UTF8.self) == nil {
                return "header '\(entry.key)' is not valid UTF-8"
            }
        }
        return nil
    }

    /// The AMQP message for `message`. `extra` entries (e.g. a kept `x-death`) are added.
    static func outgoing(_ message: Message, routingKey: String, extra: AMQPTable = AMQPTable()) -> AMQPOutgoing {
        var properties = AMQPProperties()
        properties.deliveryMode = 2
        properties.messageID = message.id
        // A timestamp read from a broker can be anything: bounded to years 1970...9999.
        let millis = EpochMillis.of(message.timestamp)
        properties.timestamp = UInt64(millis / 1000)
        var headers = AMQPTable()
        headers.entries.reserveCapacity(message.headers.count + 2 + extra.entries.count)
        for (name, value) in message.headers.sorted(by: { $0.key < $1.key }) {
            headers.entries.append(.init(key: name, value: .text(value)))
        }
        if let key = message.key { headers.entries.append(.init(key: keyHeader, value: .text(key))) }
        headers.entries.append(.init(key: timestampHeader, value: .int64(millis)))
        // A set, not `headers[key]` per entry: a foreign message can carry tens of thousands
        // of kept entries, and the linear lookup made every copy of it quadratic.
        // At most `maxHeaderCount` of them: a foreign message with more is dead-lettered, and
        // its DLQ copy must still fit a frame.
        var present = Set(headers.entries.map(\.key))
        var kept = 0
        for entry in extra.entries where kept < PublishValidation.maxHeaderCount && present.insert(entry.key).inserted {
            headers.entries.append(entry)
            kept += 1
        }
        properties.headers = headers
        return AMQPOutgoing(routingKey: routingKey, properties: properties, body: message.payload)
    }

    /// The BrokerKit message in `delivery`, and the header entries it could not carry
    /// (broker bookkeeping such as `x-death`, nested tables), to keep on DLQ copies.
    static func message(from delivery: AMQPDelivery) -> (message: Message, kept: AMQPTable) {
        let properties = delivery.properties
        var headers: [String: String] = [:]
        var key: String?
        var millis: Int64?
        var kept = AMQPTable()
        for entry in properties.headers.entries {
            switch entry.key {
            case keyHeader: key = entry.value.stringValue
            case timestampHeader: millis = entry.value.intValue
            case _ where isBrokerBookkeeping(entry.key) || !entry.value.isScalar:
                if entry.key != deliveryCountHeader && entry.key != streamOffsetHeader { kept.entries.append(entry) }
            default:
                if let text = entry.value.stringValue { headers[entry.key] = text }
            }
        }
        let timestamp: Date
        if let millis {
            timestamp = Date(timeIntervalSince1970: Double(millis) / 1000)
        } else if let seconds = properties.timestamp {
            timestamp = Date(timeIntervalSince1970: Double(seconds))
        } else {
            timestamp = Date()
        }
        let id = properties.messageID.flatMap { $0.isEmpty ? nil : $0 } ?? Message.newID()
        return (Message(id: id, key: key, payload: delivery.body, headers: headers, timestamp: timestamp), kept)
    }
}
