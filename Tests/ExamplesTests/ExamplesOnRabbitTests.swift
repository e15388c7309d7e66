import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Examples
import Foundation
import RabbitBackend
import Testing

/// The same example apps, unchanged, on a real RabbitMQ: swapping brokers is a URL. Only the
/// jobs example: chat and commerce read streams with consumer groups, which the amqp backend
/// does not claim (`BrokerCapabilities.consumerGroups`).
@Suite("Examples on amqp", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct ExamplesOnRabbitTests {
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        RabbitBackend.register(in: registry)
        return registry
    }()

    static func connect(prefix: String) async throws -> any Broker {
        try await Brokers.connect(
            url: try TestEnvironment.requireURL(.amqp),
            options: ["prefix": prefix],
            registry: Self.registry
        )
    }

    /// Runs `body` on a broker with a prefix of its own, so runs never meet each other's
    /// destinations, then deletes what is left under that prefix (as the Rabbit tests do).
    func withBroker(_ body: (any Broker) async throws -> Void) async throws {
        let prefix = "ex\(UUID().uuidString.prefix(6).lowercased())-"
        do {
            try await body(try await Self.connect(prefix: prefix))
        } catch {
            await Self.cleanUp(prefix: prefix)
            throw error
        }
        await Self.cleanUp(prefix: prefix)
    }

    static func cleanUp(prefix: String) async {
        guard let broker = try? await connect(prefix: prefix) else { return }
        for destination in (try? await broker.listDestinations()) ?? [] {
            try? await broker.deleteDestination(destination.name)
        }
        try? await broker.deleteDestination("__brokerkit.catalog")
        await broker.close()
    }

    @Test("jobs example on amqp: exact counts, delayed jobs on time, the poison job dead-lettered")
    func jobs() async throws {
        try await withBroker { broker in
            try await RealBrokerExampleChecks.jobs(on: broker, backend: "amqp")
        }
    }
}
