import CHiredis
import Foundation

/// One hiredis context. Not thread-safe: a `RedisClient` only touches it from its own
/// `ConnectionThread`.
final class HiredisConnection {
    struct Endpoint: Sendable {
        var host: String
        var port: Int
        var user: String?
        var password: String?
        var database: Int
        var connectTimeout: Duration
        var commandTimeout: Duration
    }

    let endpoint: Endpoint
    private var context: UnsafeMutablePointer<redisContext>?

    init(endpoint: Endpoint) { self.endpoint = endpoint }

    deinit { close() }

    var isConnected: Bool { context != nil }

    func close() {
        if let context { redisFree(context) }
        context = nil
    }

    private static func timeval(_ duration: Duration) -> Glibc.timeval {
        let (seconds, attoseconds) = duration.components
        return Glibc.timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }

    /// Connects, authenticates and selects the database. Throws `RedisFailure`.
    func connect() throws {
        close()
        guard
            let context = redisConnectWithTimeout(
                endpoint.host,
                Int32(endpoint.port),
                Self.timeval(endpoint.connectTimeout)
            )
        else {
            throw RedisFailure.io("cannot allocate a hiredis context")
        }
        if context.pointee.err != 0 {
            let message = Self.errorString(context)
            redisFree(context)
            throw RedisFailure.io(message)
        }
        _ = redisSetTimeout(context, Self.timeval(endpoint.commandTimeout))
        _ = redisEnableKeepAlive(context)
        self.context = context
        if let password = endpoint.password {
            var args: [RedisArgument] = ["AUTH"]
            if let user = endpoint.user { args.append(RedisArgument(user)) }
            args.append(RedisArgument(password))
            let reply = try command(args)
            if let error = reply.errorText {
                close()
                throw RedisFailure.server(error)
            }
        }
        if endpoint.database != 0 {
            let reply = try command(["SELECT", RedisArgument(endpoint.database)])
            if let error = reply.errorText {
                close()
                throw RedisFailure.server(error)
            }
        }
    }

    /// Changes the socket timeout (for a blocking read that waits longer than usual).
    func setTimeout(_ duration: Duration) {
        if let context { _ = redisSetTimeout(context, Self.timeval(duration)) }
    }

    /// Sends one command and reads its reply. An error reply is returned as `.error`; I/O
    /// failures throw `RedisFailure.io` and drop the connection.
    func command(_ args: [RedisArgument]) throws -> RedisReply {
        try pipeline([args])[0]
    }

    /// Sends several commands in one write and reads all replies.
    func pipeline(_ commands: [[RedisArgument]]) throws -> [RedisReply] {
        if context == nil { try connect() }
        guard let context else { throw RedisFailure.io("not connected") }
        for args in commands {
            let status = args.withCArguments { argc, argv, lengths in
                redisAppendCommandArgv(context, argc, argv, lengths)
            }
            if status != REDIS_OK { throw fail(context) }
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for args in commands {
            var raw: UnsafeMutableRawPointer?
            if redisGetReply(context, &raw) != REDIS_OK || raw == nil { throw fail(context) }
            let reply = raw!.assumingMemoryBound(to: redisReply.self)
            replies.append(args.first?.isText("XREADGROUP") == true ? Self.decodeStreamRead(reply) : Self.decode(reply))
            freeReplyObject(raw)
        }
        return replies
    }

    private func fail(_ context: UnsafeMutablePointer<redisContext>) -> RedisFailure {
        let message = Self.errorString(context)
        close()
        return .io(message.isEmpty ? "connection lost" : message)
    }

    static func errorString(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: context.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// An XREADGROUP reply, `[[stream, [[id, [field, value, …]], …]], …]`, with each
    /// stream's entry list parsed into entries right here, without building a reply tree
    /// first (the consumer's hot path).
    static func decodeStreamRead(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let r = reply.pointee
        guard r.type == REDIS_REPLY_ARRAY else { return decode(reply) }
        var streams: [RedisReply] = []
        streams.reserveCapacity(r.elements)
        for i in 0..<r.elements {
            guard let stream = r.element[i], stream.pointee.type == REDIS_REPLY_ARRAY, stream.pointee.elements == 2,
                let name = stream.pointee.element[0], let list = stream.pointee.element[1],
                list.pointee.type == REDIS_REPLY_ARRAY
            else {
                streams.append(r.element[i].map { decode($0) } ?? .null)
                continue
            }
            var valid: [RedisMessageMapping.Entry] = []
            var deleted: [String] = []
            valid.reserveCapacity(list.pointee.elements)
            for j in 0..<list.pointee.elements {
                guard let item = list.pointee.element[j]?.pointee, item.type == REDIS_REPLY_ARRAY, item.elements == 2,
                    let idReply = item.element[0]?.pointee, idReply.type == REDIS_REPLY_STRING,
                    let idBytes = idReply.str
                else { continue }
                let entryID = String(
                    decoding: UnsafeRawBufferPointer(start: idBytes, count: idReply.len),
                    as: UTF8.self
                )
                guard let flat = item.element[1]?.pointee, flat.type == REDIS_REPLY_ARRAY else {
                    deleted.append(entryID)  // deleted while pending: no fields
                    continue
                }
                var fields = RedisMessageMapping.FieldCollector()
                var k = 0
                while k + 1 < flat.elements {
                    if let name = flat.element[k]?.pointee, let value = flat.element[k + 1]?.pointee,
                        name.type == REDIS_REPLY_STRING, value.type == REDIS_REPLY_STRING
                    {
                        fields.add(
                            name: UnsafeRawBufferPointer(start: name.str, count: name.len),
                            value: UnsafeRawBufferPointer(start: value.str, count: value.len)
                        )
                    }
                    k += 2
                }
                valid.append(fields.entry(entryID: entryID))
            }
            streams.append(.array([decode(name), .entries(StreamEntries(valid: valid, deleted: deleted))]))
        }
        return .array(streams)
    }

    static func decode(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            return .string(r.str.map { Data(bytes: $0, count: r.len) } ?? Data())
        case REDIS_REPLY_STATUS:
            return .status(
                r.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: r.len), as: UTF8.self) } ?? ""
            )
        case REDIS_REPLY_ERROR:
            return .error(
                r.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: r.len), as: UTF8.self) } ?? ""
            )
        case REDIS_REPLY_INTEGER:
            return .integer(r.integer)
        case REDIS_REPLY_ARRAY:
            var items: [RedisReply] = []
            items.reserveCapacity(r.elements)
            for i in 0..<r.elements {
                if let element = r.element[i] { items.append(decode(element)) } else { items.append(.null) }
            }
            return .array(items)
        default:
            return .null
        }
    }
}

extension Array where Element == RedisArgument {
    /// Calls `body` with C argv / argvlen arrays that stay valid for the call. All arguments
    /// are copied into one contiguous buffer (one allocation per command).
    func withCArguments<T>(_ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> T) -> T {
        var lengths: [Int] = []
        lengths.reserveCapacity(count)
        var total = 0
        for argument in self {
            let length = argument.count
            lengths.append(length)
            total += length
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(1, total), alignment: 1)
        defer { buffer.deallocate() }
        var pointers: [UnsafePointer<CChar>?] = []
        pointers.reserveCapacity(count)
        var offset = 0
        for (index, argument) in enumerated() {
            let length = lengths[index]
            if length > 0 { argument.copyBytes(to: buffer + offset) }
            pointers.append(UnsafePointer((buffer + offset).assumingMemoryBound(to: CChar.self)))
            offset += length
        }
        return pointers.withUnsafeMutableBufferPointer { argv in
            lengths.withUnsafeBufferPointer { argvlen in
                body(Int32(count), argv.baseAddress!, argvlen.baseAddress!)
            }
        }
    }
}
