import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RedisStreamsBackend
import Testing

/// Another client (redis-cli) reads what BrokerKit writes and writes what BrokerKit reads,
/// in the documented field layout; and bad input gets clear errors.
@Suite("Redis interop and bad input", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct RedisInteropTests {
    @Test func brokerKitEntryReadsBackWithRedisCLI() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = "interop-out-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        let message = Message(id: "msg-1", key: "user-7", text: "héllo from BrokerKit", headers: ["source": "swift"])
        let receipt = try await broker.publish(message, to: queue)
        await broker.close()
        let output = try await RedisTestSupport.redisCLI(["XRANGE", queue, "-", "+"])
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.first == receipt.position?.offset)
        func value(after field: String) -> String? {
            lines.firstIndex(of: field).flatMap { $0 + 1 < lines.count ? lines[$0 + 1] : nil }
        }
        #expect(value(after: "id") == "msg-1")
        #expect(value(after: "key") == "user-7")
        #expect(value(after: "h:source") == "swift")
        #expect(value(after: "payload") == "héllo from BrokerKit")
        #expect(value(after: "ts").flatMap { Int64($0) } != nil)
    }

    @Test func redisCLIEntryIsConsumedByBrokerKit() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = "interop-in-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        try await RedisTestSupport.redisCLI([
            "XADD", queue, "*", "id", "from-cli", "key", "k9", "h:origin", "redis-cli", "payload", "{\"n\":1}",
        ])
        try await RedisTestSupport.redisCLI(["XADD", queue, "*", "payload", "bare"])
        let consumer = try await broker.consumeQueue(queue)
        let first = try #require(try await consumer.next(timeout: .seconds(5)))
        let second = try #require(try await consumer.next(timeout: .seconds(5)))
        try await first.ack()
        try await second.ack()
        await consumer.close()
        #expect(first.message.id == "from-cli")
        #expect(first.message.key == "k9")
        #expect(first.message.headers["origin"] == "redis-cli")
        #expect(first.message.text == "{\"n\":1}")
        #expect(first.attempt == 1)
        #expect(second.message.text == "bare" && second.message.key == nil)
        #expect(second.message.id == second.position?.offset)  // no id field: the entry id
        #expect(try await broker.stats(for: queue).depth == 0)
        await broker.close()
    }

    @Test func wrongTypeKeyIsAClearError() async throws {
        let name = "not-a-stream-\(UUID().uuidString.prefix(8))"
        try await RedisTestSupport.redisCLI(["SET", name, "plain string"])
        let broker = try await RedisTestSupport.connect()
        do {
            try await broker.publish(Message(text: "x"), to: name)
            Issue.record("published to a string key")
        } catch let error as BrokerError {
            #expect(error.code == .wrongDestinationKind)
            #expect(error.message.contains(name) && error.message.contains("string"), "\(error)")
        }
        #expect(try await RedisTestSupport.redisCLI(["GET", name]).contains("plain string"))
        await broker.close()
    }

    @Test func wrongPasswordIsAnAuthenticationError() async throws {
        let user = "bk-\(UUID().uuidString.prefix(6).lowercased())"
        try await RedisTestSupport.redisCLI(["ACL", "SETUSER", user, "on", ">right-secret", "~*", "&*", "+@all"])
        do {
            try await connectAs(user)
        } catch {
            _ = try? await RedisTestSupport.redisCLI(["ACL", "DELUSER", user])
            throw error
        }
        _ = try? await RedisTestSupport.redisCLI(["ACL", "DELUSER", user])
    }

    func connectAs(_ user: String) async throws {
        let (host, port) = try #require(TestEnvironment.hostAndPort(try RedisTestSupport.url()))
        do {
            _ = try await Brokers.connect(
                url: "redis://\(user):wrong-secret@\(host):\(port)",
                registry: RedisTestSupport.registry
            )
            Issue.record("connected with a wrong password")
        } catch let error as BrokerError {
            #expect(error.code == .authenticationFailed)
            #expect(!error.description.contains("wrong-secret"))
        }
        let ok = try await Brokers.connect(
            url: "redis://\(user):right-secret@\(host):\(port)",
            registry: RedisTestSupport.registry
        )
        let queue = "acl-\(UUID().uuidString.prefix(8))"
        try await ok.publish(Message(text: "authenticated"), to: queue)
        #expect(try await ok.stats(for: queue).depth == 1)
        await ok.close()
    }

    @Test func tlsURLIsRejectedClearly() async {
        do {
            _ = try await Brokers.connect(url: "rediss://127.0.0.1:6390", registry: RedisTestSupport.registry)
            Issue.record("accepted rediss://")
        } catch let error as BrokerError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("TLS"))
        } catch { Issue.record("\(error)") }
    }

    @Test func databaseIndexIsUsed() async throws {
        let base = try RedisTestSupport.url()
        let broker = try await Brokers.connect(url: base + "/3", registry: RedisTestSupport.registry)
        let queue = "db3-\(UUID().uuidString.prefix(8))"
        try await broker.publish(Message(text: "in db 3"), to: queue)
        await broker.close()
        #expect(try await RedisTestSupport.redisCLI(["-n", "3", "XLEN", queue]).contains("1"))
        #expect(try await RedisTestSupport.redisCLI(["-n", "0", "EXISTS", queue]).contains("0"))
    }

    @Test func streamRetentionTrimsStreamsNotQueues() async throws {
        let broker = try await RedisTestSupport.connect(["retention.maxlen": "10"])
        let stream = "trim-\(UUID().uuidString.prefix(8))"
        try await broker.createStream(stream)
        for batch in 0..<10 {
            _ = try await broker.publish((0..<20).map { Message(text: "\(batch)-\($0)") }, to: stream)
        }
        let length = try await broker.stats(for: stream).depth
        #expect(length < 200, "stream was not trimmed: \(length)")
        let queue = "notrim-\(UUID().uuidString.prefix(8))"
        _ = try await broker.publish((0..<50).map { Message(text: "\($0)") }, to: queue)
        #expect(try await broker.stats(for: queue).depth == 50)
        await broker.close()
    }
}
