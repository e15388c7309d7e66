import BrokerAPI
import BrokerConformance
import Foundation
import Testing

extension ConformanceCase: CustomTestStringConvertible {
    public var testDescription: String { name }
}

/// The shared conformance suite against the embedded in-memory backend.
@Suite("Conformance: memory")
struct MemoryConformanceTests {
    static let harness = ConformanceHarness(
        name: "memory",
        url: "memory://conformance-\(UUID().uuidString.prefix(8))",
        capabilities: MemoryBackend.capabilities
    )

    @Test("case", arguments: ConformanceSuite.cases(for: MemoryBackend.capabilities))
    func conformance(_ testCase: ConformanceCase) async throws {
        try await ConformanceSuite.run(testCase, on: Self.harness)
    }

    @Test("memory disclaims only what it cannot do across processes")
    func skippedCasesAreOnlyCrossProcess() {
        let skipped = ConformanceSuite.skipped(for: MemoryBackend.capabilities)
        for entry in skipped {
            print("memory skips \(entry.name): needs [\(entry.missing)]")
        }
        #expect(skipped.allSatisfy { $0.missing.isSubset(of: [.crossProcess, .persistent]) })
        #expect(ConformanceSuite.cases(for: MemoryBackend.capabilities).count >= 35)
    }

    @Test("every case name is unique")
    func uniqueNames() {
        let names = ConformanceSuite.allCases.map(\.name)
        #expect(Set(names).count == names.count)
    }
}
