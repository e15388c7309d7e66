import BrokerAPI
import BrokerConformance
import Foundation
import RabbitBackend
import Testing

/// RabbitMQ restarts mid-run (`rabbitmqctl stop_app` / `start_app`): publishers and
/// consumers reconnect with backoff and redeclare, and no confirmed publish is lost. Runs in
/// the serial restart pass only (it takes the server away from every other test).
@Suite("amqp reconnect", .enabled(if: TestEnvironment.shouldRunRestartTests(.amqp)))
struct RabbitRestartTests {
    @Test func brokerRestartLosesNoConfirmedMessage() async throws {
        try await RabbitServerGate.shared.withExclusive {
            try await Self.restartScenario()
        }
    }

    static func restartScenario() async throws {
        let broker = try await RabbitTestSupport.connect(["operation.timeout": "60s", "heartbeat": "2s"])
        let queue = "bk-restart-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 8))
        let confirmed = Collector<String>()
        for receipt in try await broker.publish((0..<20).map { Message(text: "before-\($0)") }, to: queue) {
            confirmed.append(receipt.messageID)
        }
        var seen = Set<String>()
        for _ in 0..<5 {
            let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
            seen.insert(delivery.message.id)
            try await delivery.ack()
        }
        // Keep publishing one by one while the broker goes away and comes back.
        let publisher = Task {
            for index in 0..<30 {
                let receipt = try await broker.publish(Message(text: "during-\(index)"), to: queue)
                confirmed.append(receipt.messageID)
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        _ = try await RabbitTestSupport.rabbitmqctl(["stop_app"])
        try await Task.sleep(for: .seconds(1))
        _ = try await RabbitTestSupport.rabbitmqctl(["start_app"])
        _ = try? await RabbitTestSupport.rabbitmqctl(["await_startup"])
        try await publisher.value
        #expect(confirmed.count == 50)
        // The same consumer (reconnected) receives every confirmed message not acked before.
        let deadline = ContinuousClock.now + .seconds(60)
        while !Set(confirmed.values).isSubset(of: seen), ContinuousClock.now < deadline {
            guard let delivery = try await consumer.next(timeout: .seconds(5)) else { continue }
            seen.insert(delivery.message.id)
            try? await delivery.ack()
        }
        let missing = Set(confirmed.values).subtracting(seen)
        #expect(missing.isEmpty, "\(missing.count) confirmed messages were lost across the restart")
        await consumer.close()
        try await broker.deleteDestination(queue)
        await broker.close()
    }
}
