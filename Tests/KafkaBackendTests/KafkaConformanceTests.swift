import BrokerAPI
import BrokerConformance
import Foundation
import KafkaBackend
import Testing

extension ConformanceCase: CustomTestStringConvertible {
    public var testDescription: String { name }
}

enum KafkaTestSupport {
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        KafkaBackend.register(in: registry)
        return registry
    }()

    /// Options every Kafka test connection uses: a prefix per test process, so reruns
    /// against the same server never see each other's groups.
    static let runPrefix = "t\(UUID().uuidString.prefix(6).lowercased())."

    static func url() throws -> String { try TestEnvironment.requireURL(.kafka) }

    static func harness(url: String? = nil, name: String = "kafka", extra: [String: String] = [:]) throws -> ConformanceHarness {
        ConformanceHarness(
            name: name, url: try url ?? self.url(), capabilities: KafkaBackend.capabilities,
            unreachableURL: "kafka://127.0.0.1:1",
            options: ["prefix": runPrefix, "default.partitions": "2"].merging(extra) { $1 }, registry: registry)
    }

    /// librdkafka's mock cluster has no admin API: topics are auto-created by the broker.
    static let mockOptions = ["topic.creation": "auto", "session.timeout": "6s"]

    static func connect(_ options: [String: String] = [:], url: String? = nil) async throws -> any Broker {
        try await Brokers.connect(
            url: try url ?? self.url(), options: ["prefix": runPrefix].merging(options) { $1 }, registry: registry)
    }
}

/// The shared conformance suite against an out-of-process Kafka-protocol broker (noida-db,
/// started by scripts/brokers.sh).
@Suite("Conformance: kafka", .enabled(if: TestEnvironment.shouldRun(.kafka)))
struct KafkaConformanceTests {
    @Test("case", arguments: ConformanceSuite.cases(for: KafkaBackend.capabilities))
    func conformance(_ testCase: ConformanceCase) async throws {
        try await ConformanceSuite.run(testCase, on: try KafkaTestSupport.harness())
    }

    @Test("kafka skips only what it disclaims")
    func skipped() {
        let skipped = ConformanceSuite.skipped(for: KafkaBackend.capabilities)
        for entry in skipped { print("kafka skips \(entry.name): needs [\(entry.missing)]") }
        #expect(skipped.isEmpty)
    }
}
