import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RedisStreamsBackend
import Testing

extension ConformanceCase: CustomTestStringConvertible {
    public var testDescription: String { name }
}

enum RedisTestSupport {
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        RedisStreamsBackend.register(in: registry)
        return registry
    }()

    /// The test server's URL with a database of its own for this run.
    static func url() throws -> String {
        try TestEnvironment.requireURL(.redis)
    }

    static func harness() throws -> ConformanceHarness {
        ConformanceHarness(
            name: "redis",
            url: try url(),
            capabilities: RedisStreamsBackend.capabilities,
            unreachableURL: "redis://127.0.0.1:1",
            options: ["claim.interval": "250ms", "prefix": "conf:"],
            registry: registry
        )
    }

    static func connect(_ options: [String: String] = [:]) async throws -> any Broker {
        try await Brokers.connect(url: try url(), options: options, registry: registry)
    }

    /// Runs redis-cli against the test server (on a thread of its own, never blocking the
    /// cooperative pool); returns stdout.
    @discardableResult
    static func redisCLI(_ arguments: [String]) async throws -> String {
        let (host, port) = try #require(TestEnvironment.hostAndPort(try url()))
        return try await TestEnvironment.blocking {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["redis-cli", "-h", host, "-p", String(port)] + arguments
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            try process.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return String(decoding: data, as: UTF8.self)
        }
    }
}

/// The shared conformance suite against a real redis-server (started by scripts/brokers.sh).
@Suite("Conformance: redis", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct RedisConformanceTests {
    @Test("case", arguments: ConformanceSuite.cases(for: RedisStreamsBackend.capabilities))
    func conformance(_ testCase: ConformanceCase) async throws {
        try await ConformanceSuite.run(testCase, on: try RedisTestSupport.harness())
    }

    @Test("redis skips only what it disclaims")
    func skipped() {
        let skipped = ConformanceSuite.skipped(for: RedisStreamsBackend.capabilities)
        for entry in skipped { print("redis skips \(entry.name): needs [\(entry.missing)]") }
        #expect(skipped.isEmpty)
    }
}
