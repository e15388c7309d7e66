import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Testing

@Suite("Redis broker dropped without close", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct RedisDroppedBrokerTests {
    /// Its connection threads end and its connections close, as if it had been closed.
    @Test func aDroppedBrokerEndsItsThreadsAndClosesItsConnections() async throws {
        try await DroppedBrokerCheck.run(
            threadPrefixes: ["redis-"],
            connect: { try await RedisTestSupport.connect() },
            use: DroppedBrokerCheck.publishAndConsume
        )
    }
}
