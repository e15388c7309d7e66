@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation

/// What the Kafka consumer makes of a record another program wrote, reachable from the fuzz
/// targets (`Sources/BrokerFuzzTargets`). Package access: not part of the API.
package enum KafkaUntrustedInput {
    /// One header as a producer may write it: any name bytes (librdkafka stores them as a C
    /// string), a value or none (a null value).
    package struct Header {
        package var name: [UInt8]
        package var value: [UInt8]?
        package init(name: [UInt8], value: [UInt8]?) {
            self.name = name
            self.value = value
        }
    }

    /// What the consumer hands the app (or dead-letters) for a record with these parts:
    /// the message, the defect that dead-letters it, the attempt header's text, and the
    /// DLQ envelope read back when the record sits on a DLQ topic.
    package static func decode(
        key: [UInt8]?,
        value: [UInt8]?,
        headers: [Header],
        timestampMillis: Int64
    ) -> (message: Message, defect: String?, attempt: String?, envelope: DeadLetterEnvelope?, copy: Message?) {
        let list = rd_kafka_headers_new(headers.count)!
        defer { rd_kafka_headers_destroy(list) }
        var zero: UInt8 = 0
        for header in headers {
            // librdkafka copies the name up to name_size and ends it with a NUL; empty ones
            // still need non-null pointers.
            withUnsafePointer(to: &zero) { zero in
                header.name.withUnsafeBytes { name in
                    let namePointer = (name.baseAddress ?? UnsafeRawPointer(zero)).assumingMemoryBound(to: CChar.self)
                    if let value = header.value {
                        value.withUnsafeBytes { value in
                            _ = rd_kafka_header_add(
                                list,
                                namePointer,
                                name.count,
                                value.baseAddress ?? UnsafeRawPointer(zero),
                                value.count
                            )
                        }
                    } else {
                        _ = rd_kafka_header_add(list, namePointer, name.count, nil, 0)
                    }
                }
            }
        }
        func withOptionalBytes<T>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> T) -> T {
            guard let bytes else { return body(nil) }
            return bytes.withUnsafeBytes { body($0) }
        }
        let record = withOptionalBytes(key) { key in
            withOptionalBytes(value) { value in
                KafkaRecord(
                    topic: "fuzz",
                    partition: 0,
                    offset: 0,
                    key: key,
                    value: value,
                    headers: list,
                    timestampMillis: timestampMillis
                )
            }
        }
        let consumed = KafkaMessageMapping.consumed(from: record)
        return (
            consumed.message, record.defect, consumed.attempt,
            DeadLetterEnvelope(dlqMessage: KafkaMessageMapping.message(from: record)),
            copy(of: consumed.message)
        )
    }

    /// The message a consumer reads from the record BrokerKit produces for `message` (a retry
    /// or DLQ copy).
    static func copy(of message: Message) -> Message? {
        let outgoing = OutgoingRecord(topic: "fuzz", message: message)
        guard let list = outgoing.makeHeaders() else { return nil }
        defer { rd_kafka_headers_destroy(list) }
        let record = outgoing.key.withUnsafeBytes { key in
            outgoing.value.withUnsafeBytes { value in
                KafkaRecord(
                    topic: "fuzz",
                    partition: 0,
                    offset: 1,
                    key: outgoing.hasKey ? key : nil,
                    value: value,
                    headers: list,
                    timestampMillis: outgoing.timestampMilliseconds
                )
            }
        }
        return KafkaMessageMapping.consumed(from: record).message
    }
}
