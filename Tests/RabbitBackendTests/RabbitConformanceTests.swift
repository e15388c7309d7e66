import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import RabbitBackend
import Testing

/// The whole shared conformance suite against the real RabbitMQ the scripts start.
@Suite("Conformance: amqp", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitConformanceTests {
    @Test("case", arguments: ConformanceSuite.cases(for: RabbitBackend().capabilities))
    func conformance(_ testCase: ConformanceCase) async throws {
        try await RabbitTestSupport.runCase(testCase)
    }

    @Test("amqp skips only cases needing consumer groups, replay by receipt position or per-consumer leases")
    func skipped() {
        let skipped = ConformanceSuite.skipped(for: RabbitBackend().capabilities)
        for entry in skipped { print("amqp skips \(entry.name): needs [\(entry.missing)]") }
        #expect(skipped.allSatisfy { $0.missing.isSubset(of: [.consumerGroups, .replay, .leaseExpiry]) })
    }
}
