@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// Publishing: one XADD per message, batches pipelined in one round trip; delayed messages
/// go to the destination's delay set until due. See ``RedisMessageMapping`` for the entry fields.
extension RedisBroker {
    func publish(
        checked prepared: [Message],
        to destination: String,
        kind: DestinationKind?,
        options: PublishOptions
    ) async throws -> [PublishReceipt] {
        let key = try key(destination)
        for message in prepared where message.payload.count > maxBulkLength {
            throw BrokerError(
                .messageTooLarge,
                "message '\(message.id)' payload is \(message.payload.count) bytes; redis \(settings.server) accepts at most \(maxBulkLength) (proto-max-bulk-len)",
                backend: backendName,
                destination: destination
            )
        }
        if let deliverAt = options.deliverAt, deliverAt > Date() {
            let due = RedisArgument(Int64((deliverAt.timeIntervalSince1970 * 1000).rounded(.up)))
            let commands = prepared.map { message -> [RedisArgument] in
                ["EVAL", RedisArgument(RedisScripts.delay), "1", RedisArgument(key + ":delay"), due]
                    + RedisMessageMapping.fields(for: message)
            }
            let replies = try await client.pipeline(commands)
            try check(replies, destination: destination)
            return prepared.map { PublishReceipt(messageID: $0.id, destination: destination, position: nil) }
        }
        var trim: [RedisArgument] = []
        if kind == .stream {
            if let maxLen = settings.retentionMaxLen {
                trim = ["MAXLEN", "~", RedisArgument(maxLen)]
            } else if let maxAge = settings.retentionMaxAge {
                let minID = Int64((Date().timeIntervalSince1970 - maxAge.timeInterval) * 1000)
                trim = ["MINID", "~", RedisArgument(max(0, minID))]
            }
        }
        let xadd: [RedisArgument] = ["XADD", RedisArgument(key)] + trim + ["*"]
        let commands = prepared.map { RedisMessageMapping.fields(for: $0, after: xadd) }
        let replies = try await client.pipeline(commands)
        try check(replies, destination: destination)
        return zip(prepared, replies).map { message, reply in
            PublishReceipt(
                messageID: message.id,
                destination: destination,
                position: reply.text.map { Position(partition: 0, offset: $0) }
            )
        }
    }

    func check(_ replies: [RedisReply], destination: String) throws {
        for reply in replies {
            if let error = reply.errorText {
                throw RedisClient.map(.server(error), server: settings.server, destination: destination)
            }
        }
    }
}
