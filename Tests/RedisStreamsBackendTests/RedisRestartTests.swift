import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RedisStreamsBackend
import Testing

/// Tests that restart Redis or change its configuration; they run in the separate serial
/// pass of scripts/test.sh (BROKERKIT_RESTART_TESTS=1).
@Suite("Redis restart and server limits", .serialized, .enabled(if: TestEnvironment.shouldRunRestartTests(.redis)))
struct RedisRestartTests {
    @Test func publishersAndConsumersSurviveARestartWithoutLosingAcknowledgedPublishes() async throws {
        let broker = try await RedisTestSupport.connect(["operation.timeout": "20s"])
        try await RestartCheck.run(
            broker,
            plan: .init(publishes: 300, pause: .milliseconds(5), minimumAcknowledged: 251, settle: .seconds(30)),
            restart: { try await TestEnvironment.restartServer("BROKERKIT_TEST_REDIS_RESTART", pause: 1) }
        )
        await broker.close()
    }

    @Test func payloadAboveProtoMaxBulkLenIsAClearErrorOthersUnaffected() async throws {
        try await RedisTestSupport.redisCLI(["CONFIG", "SET", "proto-max-bulk-len", "1mb"])
        do {
            try await publishAboveTheLimit()
        } catch {
            _ = try? await RedisTestSupport.redisCLI(["CONFIG", "SET", "proto-max-bulk-len", "512mb"])
            throw error
        }
        _ = try? await RedisTestSupport.redisCLI(["CONFIG", "SET", "proto-max-bulk-len", "512mb"])
    }

    func publishAboveTheLimit() async throws {
        let broker = try await RedisTestSupport.connect(["max.message.bytes": "16777216"])
        let queue = "bulk-\(UUID().uuidString.prefix(8))"
        let big = Message(payload: Data(repeating: 7, count: 2 * 1024 * 1024))
        do {
            try await broker.publish(big, to: queue)
            Issue.record("a 2 MiB payload passed a 1 MiB proto-max-bulk-len")
        } catch let error as BrokerError {
            #expect(error.code == .messageTooLarge)
            #expect(error.message.contains("proto-max-bulk-len") && error.destination == queue, "\(error)")
        }
        try await broker.publish(Message(text: "small"), to: queue)
        let consumer = try await broker.consumeQueue(queue)
        let got = try #require(try await consumer.next(timeout: .seconds(5)))
        try await got.ack()
        #expect(got.message.text == "small")
        await consumer.close()
        await broker.close()
    }
}
