import BrokerConformance
import BrokerTestSupport
import CHiredis
import Foundation
import RedisStreamsBackend
import Testing

/// Proves the hiredis link and the test Redis server the scripts start. The Redis Streams
/// backend itself lands with its own issue; its conformance run will live beside this.
@Suite("hiredis link", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct HiredisLinkTests {
    @Test func libraryVersion() {
        #expect(
            RedisStreamsBackend.libraryVersion.hasPrefix("0.14") || RedisStreamsBackend.libraryVersion.hasPrefix("1.")
        )
    }

    @Test func pingAndStreamRoundTripThroughHiredis() async throws {
        let url = try TestEnvironment.requireURL(.redis)
        let (host, port) = try #require(TestEnvironment.hostAndPort(url))
        let result: [String] = try await TestEnvironment.blocking {
            guard let context = redisConnectWithTimeout(host, port, timeval(tv_sec: 2, tv_usec: 0)) else {
                throw ConformanceFailure("hiredis could not allocate a context")
            }
            defer { redisFree(context) }
            if context.pointee.err != 0 {
                let message = withUnsafeBytes(of: context.pointee.errstr) {
                    String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
                }
                throw ConformanceFailure("connect to \(host):\(port) failed: \(message)")
            }
            func command(_ args: [String]) -> String {
                let cStrings = args.map { strdup($0) }
                defer { for cString in cStrings { free(cString) } }
                var argv = cStrings.map { UnsafePointer<CChar>($0) }
                let lengths = args.map { $0.utf8.count }
                guard let raw = redisCommandArgv(context, Int32(args.count), &argv, lengths) else {
                    return "<no reply>"
                }
                let reply = raw.assumingMemoryBound(to: redisReply.self)
                defer { freeReplyObject(raw) }
                switch reply.pointee.type {
                case REDIS_REPLY_INTEGER: return String(reply.pointee.integer)
                case REDIS_REPLY_STRING, REDIS_REPLY_STATUS, REDIS_REPLY_ERROR:
                    return String(cString: reply.pointee.str)
                default: return "<type \(reply.pointee.type)>"
                }
            }
            let stream = "bk-link-\(UUID().uuidString.prefix(8))"
            let pong = command(["PING"])
            let id = command(["XADD", stream, "*", "payload", "héllo"])
            let length = command(["XLEN", stream])
            _ = command(["DEL", stream])
            return [pong, id, length]
        }
        #expect(result[0] == "PONG")
        #expect(result[1].contains("-"), "XADD returned \(result[1])")
        #expect(result[2] == "1")
    }
}
