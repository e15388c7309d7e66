import BrokerAPI
import BrokerConformance
import Foundation
import RabbitBackend
import Testing

/// Acks are recorded and written by the consumer connection's thread in batches (see
/// `RabbitQueueConsumer.ack`): these pin down what users rely on from that.
@Suite("amqp acks")
struct RabbitAckTests {
    /// Unacked count of `queue` as RabbitMQ sees it (classic queues report it live).
    static func unacked(_ queue: String) async throws -> Int? {
        let output = try await RabbitTestSupport.rabbitmqctl([
            "list_queues", "--no-table-headers", "name", "messages_unacknowledged",
        ])
        for line in output.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            if fields.count == 2, fields[0] == queue { return Int(fields[1]) }
        }
        return nil
    }

    /// An ack reaches the broker within milliseconds while the consumer stays open (it is
    /// not held back until a batch fills or the consumer closes).
    @Test func acksReachTheBrokerWhileTheConsumerStaysOpen() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["queue.type": "classic"])
            let queue = "bk-acks-\(UUID().uuidString.prefix(8).lowercased())"
            try await broker.createQueue(queue)
            _ = try await broker.publish((0..<10).map { Message(text: "m\($0)") }, to: queue)
            let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 256))
            var deliveries: [Delivery] = []
            for _ in 0..<10 { deliveries.append(try #require(try await consumer.next(timeout: .seconds(10)))) }
            #expect(try await Self.unacked(queue) == 10, "all ten are out and unacked")
            for delivery in deliveries.prefix(3) { try await delivery.ack() }  // fewer than a batch
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await Self.unacked(queue) == 7, "three acks written while the consumer is open")
            for delivery in deliveries.dropFirst(3) { try await delivery.ack() }
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await Self.unacked(queue) == 0)
            await consumer.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// A consumer whose prefetch window is used up gets more deliveries as soon as it acks a
    /// few, and acks recorded just before `close()` are written, so nothing comes back.
    @Test func usedUpWindowRefillsAfterAFewAcksAndCloseWritesTheRest() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect()
            let queue = "bk-acks-\(UUID().uuidString.prefix(8).lowercased())"
            try await broker.createQueue(queue)
            _ = try await broker.publish((0..<80).map { Message(text: "m\($0)") }, to: queue)
            let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 64))
            var held: [Delivery] = []
            for _ in 0..<64 { held.append(try #require(try await consumer.next(timeout: .seconds(10)))) }
            for delivery in held.prefix(5) { try await delivery.ack() }
            let started = ContinuousClock.now
            let more = try await consumer.next(timeout: .seconds(5))
            #expect(more != nil, "five acks on a full window let the broker send more")
            #expect(ContinuousClock.now - started < .seconds(1))
            held.removeFirst(5)
            if let more { held.append(more) }
            for delivery in held { try await delivery.ack() }
            await consumer.close()
            // Everything taken was acked before close: a new consumer sees only the rest.
            let second = try await broker.consumeQueue(queue, options: .init(prefetch: 64))
            var rest = 0
            while let delivery = try await second.next(timeout: .seconds(2)) {
                rest += 1
                try await delivery.ack()
            }
            #expect(rest == 80 - 65)
            await second.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }
}
