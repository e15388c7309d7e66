import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RedisStreamsBackend
import Testing

/// Acks are asynchronous on Redis (recorded, then flushed in one round trip per batch); what
/// users rely on is that nothing acked comes back, that `close()` sends every recorded ack,
/// that this process's `stats` reflect its own acks at once, and that acking an entry the
/// consumer no longer holds fails.
@Suite("Redis asynchronous acks", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct RedisAckTests {
    func drain(_ consumer: any MessageConsumer, _ count: Int) async throws {
        for _ in 0..<count {
            let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
            try await delivery.ack()
        }
    }

    @Test func statsRightAfterAcksShowsThem() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = "acks-stats-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        _ = try await broker.publish((0..<200).map { Message(text: "m\($0)") }, to: queue)
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 100))
        try await drain(consumer, 200)
        // No waiting: the same process reads its own acks.
        let stats = try await broker.stats(for: queue)
        #expect(
            stats.depth == 0 && stats.inFlight == 0,
            "depth \(stats.depth), in flight \(stats.inFlight) right after 200 acks"
        )
        let pending = try await RedisTestSupport.redisCLI(["XPENDING", queue, "brokerkit"]).split(separator: "\n").first
        #expect(pending == "0", "XPENDING summary starts with \(pending ?? "nothing")")
        await consumer.close()
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    @Test func closeSendsEveryRecordedAckAndNothingComesBack() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = "acks-close-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        _ = try await broker.publish((0..<150).map { Message(text: "m\($0)") }, to: queue)
        let consumer = try await broker.consumeQueue(
            queue,
            options: .init(prefetch: 50, visibilityTimeout: .seconds(1))
        )
        try await drain(consumer, 100)
        await consumer.close()
        // What close sent, straight from Redis: the 100 acked entries are gone.
        #expect(
            try await RedisTestSupport.redisCLI(["XLEN", queue]).trimmingCharacters(in: .whitespacesAndNewlines) == "50"
        )
        // Past the lease, a new consumer gets exactly the 50 never acked.
        try await Task.sleep(for: .milliseconds(1200))
        let second = try await broker.consumeQueue(queue, options: .init(prefetch: 100))
        var texts: Set<String> = []
        while let delivery = try await second.next(timeout: .milliseconds(1500)) {
            texts.insert(delivery.message.text ?? "")
            try await delivery.ack()
        }
        #expect(texts == Set((100..<150).map { "m\($0)" }), "redelivered \(texts.count): \(texts.sorted().prefix(5))…")
        await second.close()
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    @Test func ackOfAnEntryGivenBackOnCloseFails() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = "acks-late-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        try await broker.publish(Message(text: "late"), to: queue)
        let consumer = try await broker.consumeQueue(queue)
        let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
        await consumer.close()
        await #expect(throws: BrokerError.self) { try await delivery.ack() }
        try await broker.deleteDestination(queue)
        await broker.close()
    }
}
