import BrokerConformance
import BrokerTestSupport
import Foundation
import Testing

/// `brokerkit compare`: the seven scenarios, their numbers and the semantics they observe.
@Suite("brokerkit compare")
struct CLICompareTests {
    /// Small settings, so a whole run takes seconds per backend.
    static let small = [
        "--messages", "200", "--low-traffic-seconds", "1", "--idle-seconds", "1", "--delayed-jobs", "60",
        "--delay-window-seconds", "2", "--timeout-seconds", "120", "--awaited-publishes", "100",
    ]

    static func results(_ stdout: String) throws -> (report: [String: Any], results: [[String: Any]]) {
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any],
            "not JSON:\n\(stdout)"
        )
        return (report, try #require(report["results"] as? [[String: Any]]))
    }

    static func result(_ results: [[String: Any]], _ backend: String, _ scenario: String) throws -> [String: Any] {
        try #require(
            results.first { $0["backend"] as? String == backend && $0["scenario"] as? String == scenario },
            "no \(backend) \(scenario) result"
        )
    }

    /// What every backend must show: all seven ran, counts exact, order kept, history visible.
    static func checkCommon(_ results: [[String: Any]], backend: String) throws {
        for scenario in [
            "work-queue", "fan-out", "replay", "ordered-per-key", "low-traffic", "awaited-publish", "delayed-jobs",
        ] {
            let r = try result(results, backend, scenario)
            #expect(r["status"] as? String == "ok", "\(backend) \(scenario): \(r["error"] ?? "")")
            #expect((r["throughput"] as? Double ?? 0) > 0, "\(backend) \(scenario) throughput")
            #expect((r["cpuSeconds"] as? Double ?? 0) > 0, "\(backend) \(scenario) CPU")
            #expect(r["latencyP99Ms"] is Double, "\(backend) \(scenario) has no p99")
        }
        let work = try result(results, backend, "work-queue")
        #expect(work["messages"] as? Int == 200)
        let workObserved = try #require(work["observed"] as? [String: Any])
        #expect(workObserved["retried"] as? Int == 20, "every 20th of 200 fails twice: \(workObserved)")
        #expect(workObserved["deadLettered"] as? Int == 0)
        #expect(try result(results, backend, "fan-out")["messages"] as? Int == 600, "3 groups x 200")
        let ordered = try #require(try result(results, backend, "ordered-per-key")["observed"] as? [String: Any])
        #expect(ordered["orderKeptPerKey"] as? Bool == true && ordered["outOfOrder"] as? Int == 0, "\(ordered)")
        let replay = try #require(try result(results, backend, "replay")["observed"] as? [String: Any])
        #expect(replay["replayExact"] as? Bool == true, "\(replay)")
        #expect(replay["newGroupSeesOld"] as? Bool == true, "\(replay)")
        let low = try result(results, backend, "low-traffic")
        #expect(low["messages"] as? Int == 100, "100 msg/s for 1 s")
        #expect((try #require(low["observed"] as? [String: Any]))["idleCPUPercent"] is Double)
        let awaited = try result(results, backend, "awaited-publish")
        #expect(awaited["messages"] as? Int == 100 && awaited["latencyKind"] as? String == "publish call", "\(awaited)")
        #expect((try #require(awaited["observed"] as? [String: Any]))["endToEndP50Ms"] is Double, "\(awaited)")
        let delayed = try result(results, backend, "delayed-jobs")
        #expect(delayed["messages"] as? Int == 60 && delayed["latencyKind"] as? String == "lateness")
        #expect(
            (try #require(delayed["observed"] as? [String: Any]))["early"] as? Int == 0,
            "a delayed job ran before it was due"
        )
    }

    @Test("compare on memory: all seven scenarios succeed with exact counts and observed semantics")
    func memory() async throws {
        let run = try await CLI.run(
            ["compare", "--broker", "memory://", "--format", "json", "--quiet"] + Self.small,
            timeout: .seconds(120)
        )
        try run.expectExit(0)
        let (report, results) = try Self.results(run.stdout)
        #expect(results.count == 7)
        try Self.checkCommon(results, backend: "memory")
        let replay = try #require(try Self.result(results, "memory", "replay")["observed"] as? [String: Any])
        #expect(replay["replayByPosition"] as? Bool == true)
        let settings = try #require(report["settings"] as? [String: Any])
        #expect(settings["messages"] as? Int == 200 && settings["lowTrafficSeconds"] as? Double == 1)
    }

    @Test(
        "compare on all four backends: one table, every scenario on each, and an SVG chart",
        .enabled(
            if: TestEnvironment.shouldRun(.redis) && TestEnvironment.shouldRun(.amqp)
                && TestEnvironment.shouldRun(.kafka)
        )
    )
    func allBackends() async throws {
        let urls = try [
            TestEnvironment.requireURL(.redis), TestEnvironment.requireURL(.amqp), TestEnvironment.requireURL(.kafka),
        ]
        let chart = FileManager.default.temporaryDirectory.appendingPathComponent("compare-\(UUID().uuidString).svg")
        defer { try? FileManager.default.removeItem(at: chart) }
        var arguments = ["compare", "--broker", "memory://", "--format", "json", "--chart", chart.path] + Self.small
        for url in urls { arguments += ["--broker", url] }
        let run = try await CLI.run(arguments, timeout: .seconds(600))
        try run.expectExit(0)
        let (report, results) = try Self.results(run.stdout)
        #expect(results.count == 28, "\(results.count) results")
        for backend in ["memory", "redis", "amqp", "kafka"] { try Self.checkCommon(results, backend: backend) }
        // What differs between brokers, as the capability matrix says.
        func replayByPosition(_ backend: String) throws -> Bool? {
            (try Self.result(results, backend, "replay")["observed"] as? [String: Any])?["replayByPosition"] as? Bool
        }
        #expect(try replayByPosition("redis") == true && replayByPosition("kafka") == true)
        #expect(try replayByPosition("amqp") == false, "AMQP publish receipts carry no stream offset")
        func native(_ backend: String, _ key: String) throws -> Bool? {
            (try Self.result(results, backend, "work-queue")["observed"] as? [String: Any])?[key] as? Bool
        }
        #expect(try native("amqp", "nativeDLQ") == true && native("amqp", "nativeDelay") == true)
        #expect(try native("kafka", "nativeDLQ") == false && native("kafka", "nativeDelay") == false)
        let backends = try #require(report["backends"] as? [[String: Any]])
        #expect(backends.compactMap { $0["name"] as? String } == ["memory", "redis", "amqp", "kafka"])
        #expect(!run.stdout.contains("guest:guest"), "a password was printed")
        // Progress lines on stderr name each backend and scenario.
        #expect(run.stderr.contains("compare: [kafka] delayed-jobs: done"), "stderr:\n\(run.stderr)")
        let svg = try String(contentsOf: chart, encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>"))
        for backend in ["memory", "redis", "amqp", "kafka"] {
            #expect(svg.contains(">\(backend)</text>"), "legend lacks \(backend)")
        }
        #expect(svg.components(separatedBy: "<rect x=").count - 1 >= 28 + 4, "expected a bar per result in each panel")
    }

    @Test("compare --format markdown and csv print the table")
    func markdownAndCSV() async throws {
        let markdown = try await CLI.run(
            [
                "compare", "--broker", "memory://", "--scenario", "replay", "--scenario", "fan-out", "--format",
                "markdown", "--quiet",
            ] + Self.small
        )
        try markdown.expectExit(0)
        #expect(markdown.stdout.contains("| scenario | backend | messages | msg/s |"), "\(markdown.stdout)")
        #expect(markdown.stdout.contains("| fan-out | memory | 600 |"), "\(markdown.stdout)")
        #expect(
            markdown.stdout.contains("| memory | not run | yes | yes | yes | yes |"),
            "semantics row:\n\(markdown.stdout)"
        )
        let csv = try await CLI.run(
            ["compare", "--broker", "memory://", "--scenario", "work-queue", "--format", "csv", "--quiet"] + Self.small
        )
        try csv.expectExit(0)
        let lines = csv.stdout.split(separator: "\n")
        #expect(lines.count == 2 && lines[0].hasPrefix("scenario,backend,status,messages,"), "\(csv.stdout)")
        #expect(lines.last?.hasPrefix("work-queue,memory,ok,200,") == true, "\(csv.stdout)")
    }

    @Test("compare --rounds 3 reports the round with the median throughput and every round's")
    func rounds() async throws {
        let run = try await CLI.run(
            [
                "compare", "--broker", "memory://", "--scenario", "fan-out", "--rounds", "3", "--format", "json",
                "--quiet",
            ] + Self.small
        )
        try run.expectExit(0)
        let (_, results) = try Self.results(run.stdout)
        #expect(results.count == 1)
        let row = try Self.result(results, "memory", "fan-out")
        let rounds = try #require(row["roundThroughputs"] as? [Double], "no rounds in \(row)")
        #expect(rounds.count == 3)
        #expect(
            row["throughput"] as? Double == rounds.sorted()[1],
            "row \(row["throughput"] ?? "-") is not the median of \(rounds)"
        )
        // The tables give the range of the rounds with thousands separators, like every
        // other figure in them (12,345, never 12345).
        let markdown = try await CLI.run(
            [
                "compare", "--broker", "memory://", "--scenario", "fan-out", "--rounds", "3", "--format", "markdown",
                "--quiet",
            ] + Self.small
        )
        try markdown.expectExit(0)
        let range = try NSRegularExpression(pattern: #"; 3 rounds: (\d{1,3}(?:,\d{3})*)–(\d{1,3}(?:,\d{3})*) msg/s \|"#)
        let text = markdown.stdout
        let match = try #require(
            range.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)),
            "no grouped range of rounds in:\n\(text)"
        )
        let bounds = (1...2).map {
            Int(text[Range(match.range(at: $0), in: text)!].replacingOccurrences(of: ",", with: ""))!
        }
        #expect(bounds[0] <= bounds[1], "range \(bounds)")
    }

    @Test("compare rejects bad input with a message naming it")
    func badInput() async throws {
        let scenario = try await CLI.run(["compare", "--scenario", "nope"])
        try scenario.expectExit(2)
        #expect(scenario.stderr.contains("unknown --scenario 'nope'"), "\(scenario.stderr)")
        let chart = try await CLI.run(["compare", "--chart", "out.png"])
        try chart.expectExit(2)
        #expect(chart.stderr.contains("--chart must name an .svg file"), "\(chart.stderr)")
        let rounds = try await CLI.run(["compare", "--rounds", "0"])
        try rounds.expectExit(2)
        #expect(rounds.stderr.contains("--rounds must be 1 to 20, got 0"), "\(rounds.stderr)")
        let messages = try await CLI.run(["compare", "--messages", "3"])
        try messages.expectExit(2)
        #expect(messages.stderr.contains("messages must be at least 20, got 3"), "\(messages.stderr)")
        // An explicit broker that does not answer is an error, not a silent skip.
        let down = try await CLI.run(["compare", "--broker", "redis://127.0.0.1:1", "--quiet"] + Self.small)
        try down.expectExit(1)
        #expect(down.stderr.contains("127.0.0.1:1"), "\(down.stderr)")
    }
}
