import BrokerAPI
import BrokerConformance
import Foundation
import RedisStreamsBackend
import Testing
import BrokerTestSupport

/// Tests that restart Redis or change its configuration; they run in the separate serial
/// pass of scripts/test.sh (BROKERKIT_RESTART_TESTS=1).
@Suite("Redis restart and server limits", .serialized, .enabled(if: TestEnvironment.shouldRunRestartTests(.redis)))
struct RedisRestartTests {
    func restartRedis(pause: Double) async throws {
        guard let command = ProcessInfo.processInfo.environment["BROKERKIT_TEST_REDIS_RESTART"] else {
            throw ConformanceFailure("BROKERKIT_TEST_REDIS_RESTART is not set (scripts/brokers.sh start exports it)")
        }
        // system() waits with waitpid; Foundation's Process can miss the exit of a shell whose
        // child daemonizes. Run it on its own thread, off the cooperative pool.
        let status = try await TestEnvironment.blocking { system("\(command) \(pause) >/dev/null 2>&1") }
        guard status == 0 else { throw ConformanceFailure("restarting redis failed (status \(status))") }
    }

    @Test func publishersAndConsumersSurviveARestartWithoutLosingAcknowledgedPublishes() async throws {
        let broker = try await RedisTestSupport.connect(["operation.timeout": "20s"])
        let queue = "restart-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        let acknowledged = Collector<String>()
        let handled = Collector<String>()
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 8))
        let consuming = Task {
            while handled.count < 1_000_000 {
                guard let delivery = try await consumer.next(timeout: .seconds(30)) else { break }
                handled.append(delivery.message.text ?? "")
                try? await delivery.ack()
            }
        }
        let publishing = Task {
            for i in 0..<300 {
                let text = "m\(i)"
                do {
                    try await broker.publish(Message(text: text), to: queue)
                    acknowledged.append(text)
                } catch {
                    // A publish that failed was not acknowledged; the test only counts acknowledged ones.
                }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        try await Task.sleep(for: .milliseconds(400))
        try await restartRedis(pause: 1)
        try await publishing.value
        let deadline = ContinuousClock.now + .seconds(30)
        while !Set(acknowledged.values).isSubset(of: Set(handled.values)), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        consuming.cancel()
        await consumer.close()
        let missing = Set(acknowledged.values).subtracting(handled.values)
        #expect(acknowledged.count > 250, "only \(acknowledged.count) publishes were acknowledged across the restart")
        #expect(missing.isEmpty, "acknowledged but never delivered: \(missing.sorted().prefix(10))")
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
