import BrokerAPI
import BrokerConformance
import BrokerTestSupport
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

    /// Issue 22, item 11: in a resource alarm RabbitMQ stops reading what a connection
    /// publishes. Sends then block on a full socket (rabbitmq-c waits for it without a
    /// deadline), and `publish` and `close()` hung past `operation.timeout`. Now a publish
    /// fails with `timeout` naming the alarm, and `close()` returns. Runs in the serial pass:
    /// the alarm blocks every publisher of the server.
    @Test func aResourceAlarmTimesPublishesOutAndCloseStillReturns() async throws {
        try await RabbitServerGate.shared.withExclusive {
            let broker = try await RabbitTestSupport.connect(["operation.timeout": "3s", "queue.type": "classic"])
            let queue = "bk-alarm-\(UUID().uuidString.prefix(8).lowercased())"
            try await broker.createQueue(queue)
            try await broker.publish(Message(text: "before the alarm"), to: queue)
            _ = try await RabbitTestSupport.rabbitmqctl(["set_vm_memory_high_watermark", "0"])
            var outcome: Result<Void, any Error> = .success(())
            do {
                try await Task.sleep(for: .seconds(2))
                // A small publish: written, never confirmed; RabbitMQ says `connection.blocked`.
                let small = try await RabbitTestSupport.within(.seconds(10)) {
                    do {
                        _ = try await broker.publish(Message(text: "during the alarm"), to: queue)
                        return "confirmed"
                    } catch let error as BrokerError { return "\(error.code): \(error.message)" }
                }
                let smallOutcome = try #require(small, "a small publish during the alarm did not return within 10 s")
                #expect(smallOutcome.hasPrefix("timeout: "), "\(smallOutcome)")
                #expect(
                    smallOutcome.contains("has blocked publishing"),
                    "connection.blocked was not seen: \(smallOutcome)"
                )
                // 32 MiB in one call: far more than the socket buffers hold, so the send blocks.
                let big = (0..<32).map { _ in Message(payload: Data(repeating: 0x61, count: 1 << 20)) }
                let bigOutcome = try await RabbitTestSupport.within(.seconds(10)) {
                    do {
                        _ = try await broker.publish(big, to: queue)
                        return "confirmed"
                    } catch let error as BrokerError { return "\(error.code): \(error.message)" }
                }
                let blocked = try #require(
                    bigOutcome,
                    "a publish stuck on a full socket did not return within 10 s (operation.timeout 3 s)"
                )
                #expect(blocked.hasPrefix("timeout: "), "\(blocked)")
                #expect(blocked.contains("resource alarm"), "the error does not name the alarm: \(blocked)")
                let closed: Bool? = try await RabbitTestSupport.within(.seconds(10)) {
                    await broker.close()
                    return true
                }
                #expect(closed == true, "close() did not return within 10 s (operation.timeout 3 s)")
            } catch {
                outcome = .failure(error)
                await broker.close()
            }
            // 0.4: RabbitMQ's default, which scripts/brokers.sh does not change.
            _ = try await RabbitTestSupport.rabbitmqctl(["set_vm_memory_high_watermark", "0.4"])
            try outcome.get()
            try await Task.sleep(for: .seconds(1))
            let after = try await RabbitTestSupport.connect(["queue.type": "classic"])
            try await after.publish(Message(text: "after the alarm"), to: queue)
            try await after.deleteDestination(queue)
            await after.close()
        }
    }

    /// Delayed messages (and retries, which wait the same way) sit in wait queues until their
    /// TTL dead-letters them back. Found by `brokerkit soak`: across a restart, due messages
    /// were dropped (classic wait queues dead-letter at most once, and the quorum queue they
    /// go back to was not up yet when the restarted node expired them).
    @Test func delayedMessagesSurviveABrokerRestart() async throws {
        try await RabbitServerGate.shared.withExclusive {
            let broker = try await RabbitTestSupport.connect(["operation.timeout": "60s", "heartbeat": "2s"])
            let queue = "bk-delay-restart-\(UUID().uuidString.prefix(8))"
            try await broker.createQueue(queue)
            // Due while the node is down, and due just after it is back.
            var sent: [String] = []
            for (index, delay) in [1.0, 1.5, 2.0, 4.0, 6.0].enumerated() {
                for copy in 0..<4 {
                    let message = Message(id: "d\(index)-\(copy)", text: "delayed \(delay)")
                    _ = try await broker.publish(
                        message,
                        to: queue,
                        options: .delayed(by: .milliseconds(Int64(delay * 1000)))
                    )
                    sent.append(message.id)
                }
            }
            _ = try await RabbitTestSupport.rabbitmqctl(["stop_app"])
            try await Task.sleep(for: .seconds(3))
            _ = try await RabbitTestSupport.rabbitmqctl(["start_app"])
            _ = try? await RabbitTestSupport.rabbitmqctl(["await_startup"])
            // Calls fail fast with connectionFailed while the client reconnects (docs/rabbitmq.md),
            // and a consumer opened on the connection the restart is closing fails with it:
            // both retried here as an app would.
            func open() async throws -> any MessageConsumer {
                let until = ContinuousClock.now + .seconds(30)
                while true {
                    do {
                        return try await broker.consumeQueue(queue, options: .init(prefetch: 32))
                    } catch let error as BrokerError
                        where error.code == .connectionFailed && ContinuousClock.now < until
                    {
                        try await Task.sleep(for: .milliseconds(500))
                    }
                }
            }
            var consumer = try await open()
            var seen = Set<String>()
            let deadline = ContinuousClock.now + .seconds(30)
            while !Set(sent).isSubset(of: seen), ContinuousClock.now < deadline {
                do {
                    guard let delivery = try await consumer.next(timeout: .seconds(2)) else { continue }
                    seen.insert(delivery.message.id)
                    try? await delivery.ack()
                } catch let error as BrokerError where error.code == .connectionFailed || error.code == .closed {
                    await consumer.close()
                    try await Task.sleep(for: .milliseconds(500))
                    consumer = try await open()
                }
            }
            let missing = Set(sent).subtracting(seen).sorted()
            #expect(
                missing.isEmpty,
                "\(missing.count) of \(sent.count) delayed messages lost across the restart: \(missing)"
            )
            await consumer.close()
            let until = ContinuousClock.now + .seconds(30)
            while true {
                do {
                    try await broker.deleteDestination(queue)
                    break
                } catch let error as BrokerError where error.code == .connectionFailed && ContinuousClock.now < until {
                    try await Task.sleep(for: .milliseconds(500))
                }
            }
            await broker.close()
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
