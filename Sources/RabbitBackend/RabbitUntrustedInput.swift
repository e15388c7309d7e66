@_spi(BrokerBackend) import BrokerAPI
import CRabbitMQ
import Foundation

/// What the RabbitMQ consumer makes of a message another program wrote, reachable from the
/// fuzz targets (`Sources/BrokerFuzzTargets`). Package access: not part of the API.
package enum RabbitUntrustedInput {
    package struct Decoded {
        /// `nil`: rabbitmq-c rejected the content header (the connection would close).
        package var message: Message?
        package var defect: String?
        package var envelope: DeadLetterEnvelope?
        /// The message BrokerKit reads back from the copy it would publish (a retry, a DLQ
        /// entry): `nil` when there is no message or the copy could not be encoded.
        package var copy: Message?
    }

    /// `properties`: a basic content header's property bytes as on the wire (flags, then the
    /// fields they announce), decoded by rabbitmq-c as a delivery's are; `body`: the payload.
    package static func decode(properties: UnsafeRawBufferPointer, body: Data) -> Decoded {
        var pool = amqp_pool_t()
        init_amqp_pool(&pool, 4096)
        defer { empty_amqp_pool(&pool) }
        var raw: UnsafeMutableRawPointer?
        let encoded = amqp_bytes_t(
            len: properties.count,
            bytes: UnsafeMutableRawPointer(mutating: properties.baseAddress)
        )
        guard amqp_decode_properties(UInt16(AMQP_BASIC_CLASS), &pool, encoded, &raw) == 0, let raw else {
            return Decoded()
        }
        let delivery = AMQPDelivery(
            channel: 1,
            deliveryTag: 1,
            redelivered: false,
            exchange: "",
            routingKey: "fuzz",
            consumerTag: "fuzz",
            properties: AMQPProperties(raw.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee),
            body: body
        )
        let defect = RabbitMessageMapping.defect(of: delivery)
        let (message, kept) = RabbitMessageMapping.message(from: delivery)
        return Decoded(
            message: message,
            defect: defect,
            envelope: DeadLetterEnvelope(dlqMessage: message),
            copy: roundTrip(RabbitMessageMapping.outgoing(message, routingKey: "fuzz", extra: kept))
        )
    }

    /// `outgoing` encoded by rabbitmq-c and decoded again, as the broker would hand it back.
    static func roundTrip(_ outgoing: AMQPOutgoing) -> Message? {
        let arena = AMQPArena()
        var properties = outgoing.properties.encode(in: arena)
        let capacity = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        let length = amqp_encode_properties(
            UInt16(AMQP_BASIC_CLASS),
            &properties,
            amqp_bytes_t(len: capacity, bytes: buffer)
        )
        guard length > 0 else { return nil }
        var pool = amqp_pool_t()
        init_amqp_pool(&pool, 4096)
        defer { empty_amqp_pool(&pool) }
        var raw: UnsafeMutableRawPointer?
        guard
            amqp_decode_properties(UInt16(AMQP_BASIC_CLASS), &pool, amqp_bytes_t(len: Int(length), bytes: buffer), &raw)
                == 0,
            let raw
        else { return nil }
        let delivery = AMQPDelivery(
            channel: 1,
            deliveryTag: 2,
            redelivered: false,
            exchange: "",
            routingKey: "fuzz",
            consumerTag: "fuzz",
            properties: AMQPProperties(raw.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee),
            body: outgoing.body
        )
        return RabbitMessageMapping.message(from: delivery).message
    }
}
