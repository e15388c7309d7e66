@_spi(BrokerBackend) import BrokerAPI
import CHiredis
import Foundation

/// What the Redis consumers make of a reply, reachable from the fuzz targets
/// (`Sources/BrokerFuzzTargets`). Package access: not part of the API.
package enum RedisUntrustedInput {
    package struct Entry {
        package var entryID: String
        package var message: Message
        package var attempt: Int
        package var defect: String?
        package var envelope: DeadLetterEnvelope?
        /// The message read back from the fields BrokerKit writes for it (a retry or DLQ copy).
        package var copy: Message
    }

    /// `resp`: bytes as a Redis server sends them, parsed by hiredis's reader. Each complete
    /// reply is decoded as an XREADGROUP reply (the consumer's fast path) and through the
    /// reply tree (XRANGE, XCLAIM, the admin calls). `nil` when hiredis rejects the bytes.
    package static func decode(resp: UnsafeRawBufferPointer) -> [Entry]? {
        guard let reader = redisReaderCreate() else { return nil }
        defer { redisReaderFree(reader) }
        guard redisReaderFeed(reader, resp.baseAddress?.assumingMemoryBound(to: CChar.self), resp.count) == REDIS_OK
        else { return nil }
        var out: [Entry] = []
        while true {
            var reply: UnsafeMutableRawPointer?
            guard redisReaderGetReply(reader, &reply) == REDIS_OK else { return nil }
            guard let reply else { return out }
            let typed = reply.assumingMemoryBound(to: redisReply.self)
            defer { freeReplyObject(reply) }
            var entries: [RedisMessageMapping.Entry] = []
            if case .array(let streams) = HiredisConnection.decodeStreamRead(typed) {
                for stream in streams {
                    if let parts = stream.array, parts.count == 2 {
                        entries += RedisMessageMapping.entries(parts[1]).valid
                    }
                }
            }
            // The generic path: the reply as a tree, read as an XREADGROUP reply (a stream's
            // entry list) and as an XRANGE / XCLAIM reply (an entry list).
            let tree = HiredisConnection.decode(typed)
            for stream in tree.array ?? [] {
                if let parts = stream.array, parts.count == 2 { entries += RedisMessageMapping.entries(parts[1]).valid }
            }
            entries += RedisMessageMapping.entries(tree).valid
            for entry in entries {
                _ = RedisMessageMapping.idBefore(entry.entryID)
                out.append(
                    Entry(
                        entryID: entry.entryID,
                        message: entry.message,
                        attempt: entry.attempt,
                        defect: entry.defect,
                        envelope: DeadLetterEnvelope(dlqMessage: entry.message),
                        copy: copy(of: entry)
                    )
                )
            }
        }
    }

    /// The message a consumer reads from the fields BrokerKit writes for `entry`.
    static func copy(of entry: RedisMessageMapping.Entry) -> Message {
        let fields = RedisMessageMapping.fields(
            for: entry.message,
            attempt: entry.attempt,
            firstFailureAt: entry.firstFailureAt
        )
        var collector = RedisMessageMapping.FieldCollector()
        var index = 0
        while index + 1 < fields.count {
            let name = bytes(fields[index])
            let value = bytes(fields[index + 1])
            name.withUnsafeBytes { name in value.withUnsafeBytes { value in collector.add(name: name, value: value) } }
            index += 2
        }
        return collector.entry(entryID: entry.entryID).message
    }

    private static func bytes(_ argument: RedisArgument) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: argument.count)
        bytes.withUnsafeMutableBytes { if let base = $0.baseAddress { argument.copyBytes(to: base) } }
        return bytes
    }
}
