import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Examples
import Foundation
import KafkaBackend
import Testing

/// The same example apps, unchanged, on a Kafka-protocol broker: swapping brokers is a URL.
@Suite("Examples on kafka", .enabled(if: TestEnvironment.shouldRun(.kafka)))
struct ExamplesOnKafkaTests {
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        KafkaBackend.register(in: registry)
        return registry
    }()

    /// A prefix of its own, so runs never meet each other's destinations.
    func broker() async throws -> any Broker {
        try await Brokers.connect(
            url: try TestEnvironment.requireURL(.kafka),
            options: ["prefix": "ex\(UUID().uuidString.prefix(6))."],
            registry: Self.registry
        )
    }

    @Test("chat example on kafka: both groups see every event, the bounce lands in the DLQ")
    func chat() async throws {
        try await RealBrokerExampleChecks.chat(on: try await broker(), backend: "kafka")
    }

    @Test("commerce example on kafka: all orders imported, poison notification dead-lettered")
    func commerce() async throws {
        try await RealBrokerExampleChecks.commerce(on: try await broker(), backend: "kafka")
    }

    @Test("jobs example on kafka: exact counts, delayed jobs on time, the poison job dead-lettered")
    func jobs() async throws {
        try await RealBrokerExampleChecks.jobs(on: try await broker(), backend: "kafka")
    }
}
