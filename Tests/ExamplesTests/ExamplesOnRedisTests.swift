import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Examples
import Foundation
import RedisStreamsBackend
import Testing

/// The same example apps, unchanged, on a real Redis: swapping brokers is a URL.
@Suite("Examples on redis", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct ExamplesOnRedisTests {
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        RedisStreamsBackend.register(in: registry)
        return registry
    }()

    /// A prefix of its own, so runs never meet each other's destinations.
    func broker() async throws -> any Broker {
        try await Brokers.connect(
            url: try TestEnvironment.requireURL(.redis),
            options: ["prefix": "ex\(UUID().uuidString.prefix(6)):", "claim.interval": "250ms"],
            registry: Self.registry
        )
    }

    @Test("chat example on redis: both groups see every event, the bounce lands in the DLQ")
    func chat() async throws {
        try await RealBrokerExampleChecks.chat(on: try await broker(), backend: "redis")
    }

    @Test("commerce example on redis: all orders imported, poison notification dead-lettered")
    func commerce() async throws {
        try await RealBrokerExampleChecks.commerce(on: try await broker(), backend: "redis")
    }

    @Test("jobs example on redis: exact counts, delayed jobs on time, the poison job dead-lettered")
    func jobs() async throws {
        try await RealBrokerExampleChecks.jobs(on: try await broker(), backend: "redis")
    }
}
