import BrokerAPI
import Foundation
import Synchronization
import Testing

@Suite("DeliveryProcessor ordering")
struct ProcessorOrderingTests {
    /// Partition-ordered processing: never two handlers on one partition, several partitions
    /// at once, and each partition's messages in offset order.
    @Test func orderedByPartitionSerialisesEachPartition() async throws {
        let broker = try await Brokers.connect(url: "memory://ordering-\(UUID().uuidString.prefix(8))")
        let stream = "ordered-partitions"
        try await broker.createStream(stream, options: DestinationOptions(partitions: 4))
        _ = try await broker.publish((0..<120).map { Message(key: "k\($0 % 12)", text: "\($0)") }, to: stream)
        let consumer = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
        let state = Mutex<
            (
                running: [Int: Int], maxSame: Int, maxTotal: Int, total: Int, last: [Int: Int64], outOfOrder: Int,
                handled: Int
            )
        >(([:], 0, 0, 0, [:], 0, 0))
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 8, orderedByPartition: true))
        { delivery in
            let partition = delivery.position?.partition ?? -1
            let offset = delivery.position?.numericOffset ?? -1
            state.withLock { s in
                s.running[partition, default: 0] += 1
                s.total += 1
                s.maxSame = max(s.maxSame, s.running[partition]!)
                s.maxTotal = max(s.maxTotal, s.total)
                if let last = s.last[partition], last >= offset { s.outOfOrder += 1 }
                s.last[partition] = offset
            }
            try await Task.sleep(for: .milliseconds(2))
            state.withLock { s in
                s.running[partition]! -= 1
                s.total -= 1
                s.handled += 1
            }
        }
        let run = Task { try await processor.run() }
        let deadline = ContinuousClock.now + .seconds(20)
        while state.withLock({ $0.handled }) < 120 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        processor.stop()
        try await run.value
        await broker.close()
        let result = state.withLock { $0 }
        #expect(result.handled == 120)
        #expect(result.maxSame == 1, "two handlers ran on one partition at once")
        #expect(result.maxTotal >= 2, "partitions never ran concurrently")
        #expect(result.outOfOrder == 0)
    }
}
