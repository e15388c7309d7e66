import BrokerConformance
import BrokerTestSupport
import Foundation
import Testing

/// The CLI across processes on a real broker: what one `brokerkit publish` writes, a later
/// `brokerkit consume` reads.
@Suite("brokerkit CLI on redis", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct CLIRedisTests {
    @Test("publish then consume in two processes shares messages on redis://")
    func publishThenConsumeAcrossProcesses() async throws {
        let url = try TestEnvironment.requireURL(.redis)
        let queue = "cli-\(UUID().uuidString.prefix(8))"
        let published = try await CLI.run([
            "publish", "--broker", url, "--to", queue, "--key", "k1", "--header", "source=cli", "--payload",
            "hello {n}", "--count", "3",
        ])
        try published.expectExit(0)
        #expect(published.stdout.split(separator: "\n").count == 3)
        let consumed = try await CLI.run([
            "consume", "--broker", url, "--from", queue, "--count", "3", "--timeout", "5",
        ])
        try consumed.expectExit(0)
        let lines = consumed.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 3, "stdout: \(consumed.stdout)")
        let first = try CLI.jsonObject(try #require(lines.first))
        #expect(first["key"] as? String == "k1")
        #expect((first["headers"] as? [String: String])?["source"] == "cli")
        #expect((first["payload"] as? String)?.hasPrefix("hello ") == true)
        let stats = try await CLI.run(["stats", queue, "--broker", url, "--format", "json"])
        try stats.expectExit(0)
        #expect(
            stats.stdout.contains("\"depth\" : 0") || stats.stdout.contains("\"depth\":0"),
            "stats: \(stats.stdout)"
        )
    }

    @Test("capabilities shows redis as a registered backend")
    func redisRegistered() async throws {
        let result = try await CLI.run(["capabilities", "--format", "json"])
        try result.expectExit(0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let backends = try #require(object["backends"] as? [[String: Any]])
        let redis = try #require(
            backends.first { $0["name"] as? String == "redis" },
            "redis is not registered: \(result.stdout)"
        )
        #expect((redis["capabilities"] as? [String: Bool])?["cross-process"] == true)
    }
}
