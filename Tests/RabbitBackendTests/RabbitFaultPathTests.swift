import BrokerAPI
import BrokerConformance
import Foundation
import RabbitBackend
import Testing

/// Issue 22 on RabbitMQ: settlement steps that fail, and headers another client wrote.
@Suite("amqp fault paths", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitFaultPathTests {
    static func queueName(_ label: String) -> String { "bk-fault-\(label)-\(UUID().uuidString.prefix(8).lowercased())" }

    /// Item 7: a dead-letter after the DLQ was deleted behind the process's back came back
    /// unroutable, and the delivery stayed unacked until the connection closed; after
    /// `prefetch` such failures the consumer received nothing. Now the DLQ is declared again.
    @Test func aDeadLetterAfterTheDLQWasDeletedStillLandsAndNothingIsStranded() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["queue.type": "classic"])
            let queue = Self.queueName("dlq-gone")
            try await broker.createQueue(queue)
            _ = try await broker.publish((0..<4).map { Message(text: "m\($0)") }, to: queue)
            let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 2))
            let first = try #require(try await consumer.next(timeout: .seconds(10)))
            try await first.deadLetter(reason: "primes the DLQ")
            _ = try await RabbitTestSupport.rabbitmqctl(["delete_queue", queue + ".dlq"])
            for _ in 0..<3 {
                let delivery = try #require(try await consumer.next(timeout: .seconds(10)), "the consumer stalled")
                try await delivery.deadLetter(reason: "after the DLQ was deleted")
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await RabbitAckTests.unacked(queue) == 0)
            #expect(try await broker.deadLetters(of: queue, limit: 10).count == 3)
            await consumer.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// Item 7: a retry whose copy the broker refuses (here a policy rejects every publish to
    /// the wait queue) throws, and the delivery comes back instead of staying unacked: more
    /// failures than `prefetch` and the consumer still receives.
    @Test func aRetryWhoseCopyIsRefusedGivesTheDeliveryBack() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["queue.type": "classic"])
            let queue = Self.queueName("copy-refused")
            let policy = "bk-reject-\(UUID().uuidString.prefix(8).lowercased())"
            _ = try await RabbitTestSupport.rabbitmqctl([
                "set_policy", "--apply-to", "queues", policy, "^\(queue)\\.wait\\.", #"{"max-length":0,"overflow":"reject-publish"}"#,
            ])
            defer { Task { _ = try? await RabbitTestSupport.rabbitmqctl(["clear_policy", policy]) } }
            try await Task.sleep(for: .milliseconds(500))  // the policy applies to queues declared from now on
            try await broker.createQueue(queue)
            try await broker.publish(Message(text: "stubborn"), to: queue)
            let consumer = try await broker.consumeQueue(
                queue, options: .init(prefetch: 2, retryPolicy: RetryPolicy(maxAttempts: 10, backoff: .fixed(.milliseconds(200)))))
            var failures = 0
            for _ in 0..<4 {
                let delivery = try #require(try await consumer.next(timeout: .seconds(10)), "stalled after \(failures) failed retries")
                #expect(delivery.message.text == "stubborn")
                do { try await delivery.nack(error: "boom") } catch { failures += 1 }
            }
            #expect(failures == 4, "the refused copies did not fail the nack")
            let last = try #require(try await consumer.next(timeout: .seconds(10)))
            try await last.ack()
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await RabbitAckTests.unacked(queue) == 0)
            await consumer.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// RabbitMQ's own bookkeeping headers, which BrokerKit reads as attempts and origins,
    /// cannot be published by an app (any case): refused before anything is sent.
    @Test(arguments: ["x-delivery-count", "x-death", "X-First-Death-Queue", "x-last-death-reason"])
    func rabbitBookkeepingHeadersAreRefused(name: String) async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect()
            let queue = Self.queueName("hdr")
            do {
                _ = try await broker.publish(Message(text: "x", headers: [name: "99"]), to: queue)
                Issue.record("\(name) was published")
            } catch let error as BrokerError {
                #expect(error.code == .invalidMessage && error.message.contains(name), "\(error)")
            }
            try? await broker.deleteDestination(queue)
            await broker.close()
        }
    }
}
