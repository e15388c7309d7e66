import CRabbitMQ
import Foundation

/// The `basic` content properties BrokerKit reads and writes, copied out of rabbitmq-c.
struct AMQPProperties: Sendable, Hashable {
    var contentType: String?
    var contentEncoding: String?
    var headers = AMQPTable()
    var deliveryMode: UInt8?
    var priority: UInt8?
    var correlationID: String?
    var replyTo: String?
    var expiration: String?
    var messageID: String?
    /// Seconds since 1970 (AMQP timestamps have no fraction).
    var timestamp: UInt64?
    var type: String?
    var userID: String?
    var appID: String?
    /// `message-id` when its bytes were not UTF-8 (read with replacement characters): the
    /// one text property BrokerKit carries over (as the message's id). The others are not
    /// part of a `Message`, and their bytes do not matter to it.
    var invalidText: String?

    init() {}

    init(_ raw: amqp_basic_properties_t) {
        let flags = raw._flags
        func has(_ flag: Int32) -> Bool { flags & amqp_flags_t(flag) != 0 }
        var invalid: String?
        func text(_ bytes: amqp_bytes_t, _ name: String) -> String {
            let (value, valid) = String.checking(amqpBytes: bytes)
            if !valid && invalid == nil { invalid = name }
            return value
        }
        if has(AMQP_BASIC_CONTENT_TYPE_FLAG) { contentType = String(amqpBytes: raw.content_type) }
        if has(AMQP_BASIC_CONTENT_ENCODING_FLAG) { contentEncoding = String(amqpBytes: raw.content_encoding) }
        if has(AMQP_BASIC_HEADERS_FLAG) { headers = AMQPTable(raw.headers) }
        if has(AMQP_BASIC_DELIVERY_MODE_FLAG) { deliveryMode = raw.delivery_mode }
        if has(AMQP_BASIC_PRIORITY_FLAG) { priority = raw.priority }
        if has(AMQP_BASIC_CORRELATION_ID_FLAG) { correlationID = String(amqpBytes: raw.correlation_id) }
        if has(AMQP_BASIC_REPLY_TO_FLAG) { replyTo = String(amqpBytes: raw.reply_to) }
        if has(AMQP_BASIC_EXPIRATION_FLAG) { expiration = String(amqpBytes: raw.expiration) }
        if has(AMQP_BASIC_MESSAGE_ID_FLAG) { messageID = text(raw.message_id, "message-id") }
        if has(AMQP_BASIC_TIMESTAMP_FLAG) { timestamp = raw.timestamp }
        if has(AMQP_BASIC_TYPE_FLAG) { type = String(amqpBytes: raw.type) }
        if has(AMQP_BASIC_USER_ID_FLAG) { userID = String(amqpBytes: raw.user_id) }
        if has(AMQP_BASIC_APP_ID_FLAG) { appID = String(amqpBytes: raw.app_id) }
        invalidText = invalid
    }

    /// The C struct, its memory owned by `arena`.
    func encode(in arena: AMQPArena) -> amqp_basic_properties_t {
        var raw = amqp_basic_properties_t()
        var flags: amqp_flags_t = 0
        func set(_ flag: Int32) { flags |= amqp_flags_t(flag) }
        if let contentType {
            raw.content_type = arena.bytes(contentType)
            set(AMQP_BASIC_CONTENT_TYPE_FLAG)
        }
        if let contentEncoding {
            raw.content_encoding = arena.bytes(contentEncoding)
            set(AMQP_BASIC_CONTENT_ENCODING_FLAG)
        }
        if !headers.isEmpty {
            raw.headers = arena.table(headers)
            set(AMQP_BASIC_HEADERS_FLAG)
        }
        if let deliveryMode {
            raw.delivery_mode = deliveryMode
            set(AMQP_BASIC_DELIVERY_MODE_FLAG)
        }
        if let priority {
            raw.priority = priority
            set(AMQP_BASIC_PRIORITY_FLAG)
        }
        if let correlationID {
            raw.correlation_id = arena.bytes(correlationID)
            set(AMQP_BASIC_CORRELATION_ID_FLAG)
        }
        if let replyTo {
            raw.reply_to = arena.bytes(replyTo)
            set(AMQP_BASIC_REPLY_TO_FLAG)
        }
        if let expiration {
            raw.expiration = arena.bytes(expiration)
            set(AMQP_BASIC_EXPIRATION_FLAG)
        }
        if let messageID {
            raw.message_id = arena.bytes(messageID)
            set(AMQP_BASIC_MESSAGE_ID_FLAG)
        }
        if let timestamp {
            raw.timestamp = timestamp
            set(AMQP_BASIC_TIMESTAMP_FLAG)
        }
        if let type {
            raw.type = arena.bytes(type)
            set(AMQP_BASIC_TYPE_FLAG)
        }
        if let userID {
            raw.user_id = arena.bytes(userID)
            set(AMQP_BASIC_USER_ID_FLAG)
        }
        if let appID {
            raw.app_id = arena.bytes(appID)
            set(AMQP_BASIC_APP_ID_FLAG)
        }
        raw._flags = flags
        return raw
    }
}

/// A message to publish: where to, with which properties and body.
struct AMQPOutgoing: Sendable {
    var exchange: String = ""
    var routingKey: String
    var properties: AMQPProperties
    var body: Data
}

/// A message the broker pushed (`basic.deliver`) or handed out (`basic.get-ok`).
struct AMQPDelivery: Sendable {
    var channel: UInt16
    var deliveryTag: UInt64
    var redelivered: Bool
    var exchange: String
    var routingKey: String
    var consumerTag: String
    var properties: AMQPProperties
    var body: Data
}

/// Something the broker sent that is not the reply to a call we made.
enum AMQPIncoming: Sendable {
    /// `basic.deliver` with its content.
    case delivery(AMQPDelivery)
    /// `basic.return`: an unroutable `mandatory` message.
    case returned(channel: UInt16, replyCode: UInt16, replyText: String, routingKey: String, properties: AMQPProperties)
    /// `basic.ack` (publisher confirm).
    case ack(channel: UInt16, tag: UInt64, multiple: Bool)
    /// `basic.nack` (publisher confirm: the broker could not take the message).
    case nack(channel: UInt16, tag: UInt64, multiple: Bool)
    /// `channel.close` from the broker (already answered with close-ok).
    case channelClosed(channel: UInt16, code: UInt16, text: String)
    /// `basic.cancel` from the broker (the queue was deleted, or a stream consumer was removed).
    case consumerCancelled(channel: UInt16, consumerTag: String)
}
