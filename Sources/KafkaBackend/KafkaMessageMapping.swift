@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation

/// Record layout on Kafka (documented in docs/kafka.md):
/// - key: ``Message/key`` as UTF-8 (no key: a null key, partitioned by librdkafka)
/// - value: the payload bytes, untouched
/// - headers: the message's headers as UTF-8, plus `x-brokerkit-id` (the message id)
/// - timestamp: ``Message/timestamp`` (CreateTime)
/// Retried and delayed copies also carry `x-brokerkit-attempt`, `x-brokerkit-first-failure-at`
/// and `x-brokerkit-deliver-at`; consumers strip those before the app sees the message.
enum KafkaMessageMapping {
    static let idHeader = "x-brokerkit-id"
    /// ``idHeader`` as a C string, to recognise it among a record's header names without
    /// building a `String` for it.
    static let idHeaderCString: [CChar] = Array(idHeader.utf8CString)
    /// What a consumer hands the app: the message without the transport headers (id,
    /// attempt, first failure, deliver-at), and the attempt and first-failure time those
    /// carried (one pass over the headers).
    /// The attempt header is returned as text, for the consumer to check.
    static func consumed(from record: KafkaRecord) -> (message: Message, attempt: String?, firstFailureAt: Date?) {
        var headers: [String: String] = [:]
        var id: String?
        var attempt: String?
        var firstFailureAt: Date?
        for (name, value) in record.headers {
            switch name {
            case idHeader: id = value
            case HeaderName.attempt: attempt = value
            case HeaderName.firstFailureAt: firstFailureAt = ISO8601.parse(value)
            case HeaderName.deliverAt: continue
            default: headers[name] = value
            }
        }
        return (message(of: record, id: id, headers: headers), attempt, firstFailureAt)
    }

    /// The message a record carries, every header but the id kept.
    static func message(from record: KafkaRecord) -> Message {
        var headers: [String: String] = [:]
        var id: String?
        for (name, value) in record.headers {
            if name == idHeader {
                id = value
                continue
            }
            headers[name] = value
        }
        return message(of: record, id: id, headers: headers)
    }

    /// `record` as a message with `headers` (id from the header, else `topic-partition-offset`).
    private static func message(of record: KafkaRecord, id: String?, headers: [String: String]) -> Message {
        Message(
            id: id ?? "\(record.topic)-\(record.partition)-\(record.offset)",
            key: record.key.map { String(decoding: $0, as: UTF8.self) },
            payload: record.value,
            headers: headers,
            timestamp: record.timestamp ?? Date()
        )
    }
}
