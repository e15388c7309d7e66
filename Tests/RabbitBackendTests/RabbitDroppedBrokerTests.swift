import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import Testing

@Suite("RabbitMQ broker dropped without close", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitDroppedBrokerTests {
    /// Its publisher and admin connections close (politely) and their threads end, as if it
    /// had been closed.
    @Test func aDroppedBrokerEndsItsThreadsAndClosesItsConnections() async throws {
        let harness = try RabbitTestSupport.harness(prefix: "t\(UUID().uuidString.prefix(6).lowercased())-")
        try await DroppedBrokerCheck.run(
            threadPrefixes: ["amqp-"],
            connect: { try await harness.connect() },
            use: DroppedBrokerCheck.publishAndConsume
        )
    }
}
