import ArgumentParser
@_spi(BrokerBackend) import BrokerAPI
import BrokerCompare
import Foundation
import KafkaBackend
import Logging
import RabbitBackend
import RedisStreamsBackend

/// Output formats of `compare`.
enum CompareFormat: String, ExpressibleByArgument, CaseIterable {
    case text, markdown, json, csv
}

/// `brokerkit compare`: the same scenarios on every backend, one table.
struct CompareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Run the same workloads on every backend and print one table of what each did.",
        discussion: """
            Scenarios: work-queue (5 % of jobs fail twice, then succeed), fan-out (one stream, \
            three consumer groups), replay (a new group reads the last N messages of history), \
            ordered-per-key (8 concurrent handlers, order kept per key), low-traffic (100 msg/s \
            for 10 s, then 5 s idle), awaited-publish (2,000 publishes one at a time, each awaited; \
            latency columns are the publish call), delayed-jobs (1,000 jobs due within 10 s; \
            latency columns are lateness).

            Backends: every --broker given; by default memory:// plus Redis, RabbitMQ and Kafka at \
            $BROKERKIT_TEST_REDIS_URL / $BROKERKIT_TEST_AMQP_URL / $BROKERKIT_TEST_KAFKA_URL (else \
            the standard local ports), each only if it answers. A --broker that does not answer \
            is an error.

            Each scenario creates fresh destinations (deleted afterwards), waits until its \
            consumers received a warm-up message, then times the work: throughput, end-to-end \
            latency p50 / p99 / max (HdrHistogram), CPU time of this whole process, and the \
            semantics observed; with --rounds N each row is the round with the median throughput, \
            and the range of all rounds is shown. Backend options go in the URL query \
            (kafka://host:9092?retry.mode=blocking). Progress goes to stderr. Exit code 1 if any scenario failed \
            (the table is printed first).
            """
    )

    @Option(
        name: .customLong("broker"),
        help: ArgumentHelp("A broker URL to compare (repeatable; default: see below).", valueName: "url")
    )
    var brokers: [String] = []

    @Option(
        name: .customLong("scenario"),
        help: ArgumentHelp(
            "Run only these scenarios (repeatable): \(CompareScenario.allCases.map(\.rawValue).joined(separator: ", ")).",
            valueName: "name"
        )
    )
    var scenarios: [String] = []

    @Option(name: .long, help: "Messages per scenario (work-queue, fan-out, replay, ordered-per-key).")
    var messages: Int = 5_000

    @Option(name: .long, help: "Payload bytes of each message.")
    var payloadSize: Int = 256

    @Option(name: .long, help: "Messages per second in low-traffic.")
    var rate: Int = 100

    @Option(name: .long, help: "Seconds of traffic in low-traffic.")
    var lowTrafficSeconds: Double = 10

    @Option(name: .long, help: "Seconds idle after low-traffic (idle CPU cost).")
    var idleSeconds: Double = 5

    @Option(name: .long, help: "Publishes in awaited-publish.")
    var awaitedPublishes: Int = 2_000

    @Option(name: .long, help: "Jobs in delayed-jobs.")
    var delayedJobs: Int = 1_000

    @Option(name: .long, help: "Seconds the delayed jobs' due times spread over.")
    var delayWindowSeconds: Double = 10

    @Option(name: .long, help: "Seconds a scenario may take before it counts as failed.")
    var timeoutSeconds: Double = 300

    @Option(
        name: .long,
        help: "Run each scenario this many times on each backend; a row is the round with the median throughput."
    )
    var rounds: Int = 1

    @Option(name: .long, help: "Output format: text, markdown, json or csv.")
    var format: CompareFormat = .text

    @Option(
        name: .long,
        help: ArgumentHelp("Also write a chart of the table (SVG) to this file.", valueName: "file.svg")
    )
    var chart: String?

    @Flag(name: .long, help: "No progress lines on stderr.")
    var quiet = false

    @Option(
        name: .long,
        help: ArgumentHelp("Log level of the broker clients on stderr (default: error).", valueName: "level")
    )
    var logLevel: String?

    func validate() throws {
        for name in scenarios where CompareScenario(rawValue: name) == nil {
            throw ValidationError(
                "unknown --scenario '\(name)'; use one of \(CompareScenario.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        try BrokerOptions.checkLogLevel(logLevel)
        for (name, seconds) in [
            ("--low-traffic-seconds", lowTrafficSeconds), ("--idle-seconds", idleSeconds),
            ("--delay-window-seconds", delayWindowSeconds), ("--timeout-seconds", timeoutSeconds),
        ]
        where !(seconds.isFinite && seconds >= 0 && seconds <= 86_400) {
            throw ValidationError("\(name) must be a number of seconds from 0 to 86400, got \(seconds)")
        }
        if !(1...20).contains(rounds) { throw ValidationError("--rounds must be 1 to 20, got \(rounds)") }
        if let chart, !chart.hasSuffix(".svg") {
            throw ValidationError("--chart must name an .svg file, got '\(chart)'")
        }
        do { try settings.validate() } catch let error as BrokerError { throw ValidationError(error.message) }
    }

    var settings: CompareSettings {
        CompareSettings(
            messages: messages,
            payloadBytes: payloadSize,
            lowTrafficRate: rate,
            lowTrafficDuration: .milliseconds(Int64(lowTrafficSeconds * 1000)),
            idleDuration: .milliseconds(Int64(idleSeconds * 1000)),
            awaitedPublishes: awaitedPublishes,
            delayedJobs: delayedJobs,
            delayWindow: .milliseconds(Int64(delayWindowSeconds * 1000)),
            scenarioTimeout: .milliseconds(Int64(timeoutSeconds * 1000))
        )
    }

    var selectedScenarios: [CompareScenario] {
        scenarios.isEmpty
            ? CompareScenario.allCases : CompareScenario.allCases.filter { scenarios.contains($0.rawValue) }
    }

    /// The brokers to try when none is given: memory, and each server at its test-set-up URL
    /// or standard local port.
    static var defaultCandidates: [String] {
        let env = ProcessInfo.processInfo.environment
        func url(_ variable: String, _ fallback: String) -> String {
            if let value = env[variable], !value.isEmpty { return value }
            return fallback
        }
        return [
            "memory://",
            url("BROKERKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            url("BROKERKIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            url("BROKERKIT_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"),
        ]
    }

    func run() async throws {
        let logger = BrokerOptions.logger(label: "brokerkit.compare", level: logLevel, defaultLevel: .error)
        let quiet = self.quiet
        let progress: @Sendable (String) -> Void = { line in if !quiet { Output.error("compare: \(line)") } }
        let explicit = !brokers.isEmpty
        let urls = explicit ? brokers : Self.defaultCandidates
        let settings = self.settings
        let runner = CompareRunner(settings: settings, logger: logger, progress: progress)
        let startedAt = Date()
        var backends: [CompareBackend] = []
        var results: [ScenarioResult] = []
        for url in urls {
            let broker: any Broker
            do {
                broker = try await Self.connectAndProbe(url, logger: logger)
            } catch {
                let redacted = BrokerURL.redact(url)
                if explicit { throw error }
                let reason = (error as? BrokerError)?.message ?? "\(error)"
                progress("skipping \(redacted): \(reason)")
                backends.append(
                    CompareBackend(
                        name: Self.scheme(of: url),
                        url: redacted,
                        client: "",
                        capabilities: [],
                        skipped: reason
                    )
                )
                continue
            }
            backends.append(
                CompareBackend(
                    name: broker.backendName,
                    url: broker.configuration.url.redacted,
                    client: Self.client(of: broker.backendName),
                    capabilities: BrokerCapabilities.named.filter { broker.capabilities.contains($0.flag) }.map(\.name)
                )
            )
            for scenario in selectedScenarios {
                var runs: [ScenarioResult] = []
                for round in 1...rounds {
                    if rounds > 1 {
                        progress("[\(broker.backendName)] \(scenario.rawValue): round \(round) of \(rounds)")
                    }
                    let result = await runner.run(scenario, on: broker)
                    runs.append(result)
                    if result.status == .failed { break }
                }
                if let row = ScenarioResult.median(of: runs) { results.append(row) }
            }
            await broker.close()
        }
        let report = CompareReport(
            startedAt: startedAt,
            machine: Self.machine,
            settings: settings,
            backends: backends,
            results: results
        )
        Output.line(try CompareOutput.render(report, format: format, scenarios: selectedScenarios))
        if let chart {
            do {
                try Data(CompareChart.svg(report, scenarios: selectedScenarios).utf8).write(
                    to: URL(fileURLWithPath: chart)
                )
            } catch {
                throw CLIError("cannot write the chart to \(chart): \(error.localizedDescription)")
            }
        }
        if !report.allSucceeded {
            let failed = report.results.filter { $0.status == .failed }.map { "\($0.backend) \($0.scenario.rawValue)" }
            throw CLIError("\(failed.count) scenario(s) failed: \(failed.joined(separator: ", "))")
        }
    }

    /// Connects and lists destinations within 15 s, so a broker that does not answer is
    /// skipped (or reported) before any scenario runs.
    static func connectAndProbe(_ url: String, logger: Logger) async throws -> any Broker {
        let broker = try await Brokers.connect(url: url, logger: logger)
        do {
            _ = try await withBrokerTimeout(
                .seconds(15),
                what: "listing destinations on \(BrokerURL.redact(url))",
                backend: broker.backendName
            ) {
                try await broker.listDestinations()
            }
            return broker
        } catch {
            await broker.close()
            throw error
        }
    }

    static func scheme(of url: String) -> String {
        url.range(of: "://").map { String(url[..<$0.lowerBound]) } ?? url
    }

    static func client(of backend: String) -> String {
        CapabilitiesCommand.linkedModules.first { $0.backend == backend }.map { "\($0.library) \($0.version)" }
            ?? "built in"
    }

    static var machine: String {
        var name = utsname()
        uname(&name)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return
            "\(field(name.sysname)) \(field(name.release)) \(field(name.machine)), \(ProcessInfo.processInfo.activeProcessorCount) cores"
    }
}
