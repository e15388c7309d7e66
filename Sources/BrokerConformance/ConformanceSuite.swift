import BrokerAPI
import Foundation

/// One named conformance case.
public struct ConformanceCase: Sendable, CustomStringConvertible {
    public enum Area: String, Sendable { case queue, stream, jobs, errors }

    /// Stable name, e.g. `queue.nack.redeliversAfterBackoff`.
    public let name: String
    public let area: Area
    /// Capabilities the case needs; backends that disclaim any of them skip it.
    public let requires: BrokerCapabilities
    let body: @Sendable (ConformanceContext) async throws -> Void

    public init(
        _ name: String,
        area: Area,
        requires: BrokerCapabilities,
        body: @escaping @Sendable (ConformanceContext) async throws -> Void
    ) {
        self.name = name
        self.area = area
        self.requires = requires
        self.body = body
    }

    public var description: String { name }
}

/// The shared conformance suite every backend must pass.
///
/// Set `BROKERKIT_CONFORMANCE_STRESS=N` to run every case N times in parallel (each run with
/// its own destinations) to shake out races, and `BROKERKIT_CONFORMANCE_CASES=a,b` to run only
/// the cases whose name contains one of the comma-separated parts (to chase one flaky case).
public enum ConformanceSuite {
    /// Every case, in a stable order.
    public static let allCases: [ConformanceCase] = QueueCases.all + StreamCases.all + JobCases.all + ErrorCases.all

    /// The cases a backend with `capabilities` must pass.
    public static func cases(for capabilities: BrokerCapabilities) -> [ConformanceCase] {
        let only = selectedNames
        return allCases.filter { testCase in
            capabilities.isSuperset(of: testCase.requires)
                && (only.isEmpty || only.contains { testCase.name.contains($0) })
        }
    }

    /// Name parts from `BROKERKIT_CONFORMANCE_CASES` (empty: every case).
    public static var selectedNames: [String] {
        (ProcessInfo.processInfo.environment["BROKERKIT_CONFORMANCE_CASES"] ?? "")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// The cases a backend with `capabilities` skips, with the capabilities it lacks.
    public static func skipped(for capabilities: BrokerCapabilities) -> [(name: String, missing: BrokerCapabilities)] {
        allCases.filter { !capabilities.isSuperset(of: $0.requires) }.map {
            ($0.name, $0.requires.subtracting(capabilities))
        }
    }

    /// Parallel repetitions from `BROKERKIT_CONFORMANCE_STRESS` (default 1).
    public static var stressRepetitions: Int {
        max(1, Int(ProcessInfo.processInfo.environment["BROKERKIT_CONFORMANCE_STRESS"] ?? "") ?? 1)
    }

    /// Runs `testCase` against `harness` (``stressRepetitions`` times in parallel).
    public static func run(_ testCase: ConformanceCase, on harness: ConformanceHarness) async throws {
        guard harness.capabilities.isSuperset(of: testCase.requires) else {
            throw ConformanceFailure(
                "\(testCase.name) needs [\(testCase.requires.subtracting(harness.capabilities))], which \(harness.name) disclaims"
            )
        }
        let repetitions = stressRepetitions
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<repetitions {
                group.addTask {
                    let broker = try await harness.connect()
                    let context = ConformanceContext(harness: harness, broker: broker, caseName: testCase.name)
                    do {
                        try await testCase.body(context)
                    } catch {
                        await broker.close()
                        throw error
                    }
                    await broker.close()
                }
            }
            try await group.waitForAll()
        }
    }
}

/// Text of `count` bytes with a recognizable pattern.
func patternedPayload(_ count: Int, seed: UInt8 = 7) -> Data {
    var bytes = [UInt8](repeating: 0, count: count)
    var x = UInt32(seed) &* 2_654_435_761
    for i in 0..<count {
        x ^= x << 13
        x ^= x >> 17
        x ^= x << 5
        bytes[i] = UInt8(truncatingIfNeeded: x)
    }
    return Data(bytes)
}
