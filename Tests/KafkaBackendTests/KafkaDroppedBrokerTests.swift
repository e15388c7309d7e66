import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Testing

@Suite("Kafka broker dropped without close", .enabled(if: TestEnvironment.shouldRun(.kafka)))
struct KafkaDroppedBrokerTests {
    /// Its producer and admin threads end, and librdkafka's handles are destroyed (their
    /// `rdk:` threads end and their connections close), as if it had been closed.
    @Test func aDroppedBrokerEndsItsThreadsAndClosesItsConnections() async throws {
        try await DroppedBrokerCheck.run(
            threadPrefixes: ["kafka-", "rdk:"],
            connect: { try await KafkaTestSupport.connect() },
            use: DroppedBrokerCheck.publishAndConsume
        )
    }
}
