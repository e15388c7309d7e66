import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RabbitBackend
import Testing

/// RabbitMQ 3.10 acknowledges the declaration of a stream another client created a moment
/// earlier before the stream can take writes; publishing in that window crashed the channel
/// on the server (541 INTERNAL_ERROR closed the whole connection). Several brokers starting
/// on a fresh prefix at once (fresh catalog stream) and creating the same stream must all
/// succeed and lose nothing.
@Suite("amqp fresh streams under concurrent first use", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitFreshStreamTests {
    @Test func brokersCreatingTheSameFreshStreamsAtOnceAllSucceed() async throws {
        try await RabbitServerGate.shared.withShared {
            for _ in 0..<8 {
                let prefix = "tf\(UUID().uuidString.prefix(6).lowercased())-"
                do {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for member in 0..<4 {
                            group.addTask {
                                let broker = try await RabbitTestSupport.connect(["prefix": prefix])
                                do {
                                    try await broker.createQueue("q\(member)")
                                    try await broker.createStream("events")
                                    try await broker.publish(Message(text: "from \(member)"), to: "events")
                                } catch {
                                    await broker.close()
                                    throw error
                                }
                                await broker.close()
                            }
                        }
                        try await group.waitForAll()
                    }
                    let reader = try await RabbitTestSupport.connect(["prefix": prefix])
                    let consumer = try await reader.consumeStream(
                        "events",
                        group: "check",
                        options: StreamConsumerOptions(start: .earliest)
                    )
                    var texts: [String] = []
                    while texts.count < 4, let delivery = try await consumer.next(timeout: .seconds(10)) {
                        texts.append(delivery.message.text ?? "")
                        try await delivery.ack()
                    }
                    await consumer.close()
                    #expect(Set(texts) == Set((0..<4).map { "from \($0)" }), "stream holds \(texts)")
                    let kinds = try await reader.listDestinations().filter { $0.kind == .queue }.count
                    #expect(kinds == 4, "catalog lists \(kinds) queues, expected 4")
                    await reader.close()
                } catch {
                    await RabbitTestSupport.cleanUp(prefix: prefix)
                    throw error
                }
                await RabbitTestSupport.cleanUp(prefix: prefix)
            }
        }
    }
}
