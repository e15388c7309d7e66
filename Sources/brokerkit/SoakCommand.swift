import ArgumentParser
import BrokerAPI
import BrokerSoak
import Foundation
import Logging

extension SoakFormat: ExpressibleByArgument {}

/// `brokerkit soak`: one backend under load and faults, ending with a ledger that says whether
/// anything was lost.
struct SoakCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Put one broker under load and faults; print a ledger that proves nothing was lost.",
        discussion: """
            Starts --workers worker processes and 2 publisher processes (this same executable, \
            `soak-worker` / `soak-publisher`). The publishers send --messages messages, keyed over \
            --keys keys, at --rate msg/s in batches of --batch (every fifth batch one awaited \
            publish at a time), to a queue and to a stream; publisher 0 first dispatches --jobs \
            delayed jobs due over the publishing time. Each worker consumes the queue and both \
            stream groups (g1, g2) through DeliveryProcessor (--concurrency handlers each) and the \
            jobs through JobWorker. --poison percent of the messages throw NonRetryable (they must \
            end in the DLQ), --flaky percent fail on attempts 1 and 2 and then succeed.

            Faults at random points of the publishing time, each logged: --kill workers killed \
            with SIGKILL and started again; --restarts broker restarts by --restart-command; \
            --cuts network cuts of --cut-seconds through a loopback TCP proxy the harness runs \
            between the processes and the broker; --publisher-kills publishers killed mid-batch \
            (a replacement finishes their share).

            Every process appends one line per event to its ledger under --dir. At the end the \
            ledger says: published and confirmed / not confirmed; handled once / more than once; \
            dead-lettered (must equal the poison messages, each with its reason); lost (confirmed \
            but neither handled nor dead-lettered: must be 0); per-key order violations on the \
            stream (fail the run where the backend keeps order across a group's members: Kafka, \
            RabbitMQ); delayed jobs that ran early (must be 0); recovery time after each fault; \
            client CPU and a worker's peak RSS.

            memory:// runs publishers and workers as tasks in this process (its state is per \
            process); there a kill cancels a worker's task, and restarts and cuts do not apply.

            Exit codes: 0 the ledger passed, 1 it failed (or the broker failed), 2 invalid options.
            """
    )

    @OptionGroup var brokerOptions: BrokerOptions

    @Option(help: "Messages published to the queue, and as many to the stream.")
    var messages: Int = 100_000
    @Option(help: "Distinct message keys.")
    var keys: Int = 64
    @Option(help: "Worker processes.")
    var workers: Int = 3
    @Option(help: "Handlers per DeliveryProcessor in each worker.")
    var concurrency: Int = 8
    @Option(help: "Percent of messages whose handler throws NonRetryable.")
    var poison: Double = 5
    @Option(help: "Percent of messages that fail twice, then succeed.")
    var flaky: Double = 5
    @Option(help: "Delayed jobs, due over the publishing time.")
    var jobs: Int = 1_000
    @Option(help: "Messages per second, over both publishers.")
    var rate: Int = 2_000
    @Option(help: "Messages per publish call.")
    var batch: Int = 20
    @Option(help: "Partitions of the stream (where the backend has them).")
    var partitions: Int = 4
    @Option(help: "Workers killed with SIGKILL during the run.")
    var kill: Int = 3
    @Option(help: "Broker restarts during the run (needs --restart-command).")
    var restarts: Int = 2
    @Option(
        help: ArgumentHelp(
            "Shell command that restarts the broker, e.g. 'scripts/brokers.sh restart-redis'.",
            valueName: "command"
        )
    )
    var restartCommand: String?
    @Option(help: "Network cuts through the loopback proxy.")
    var cuts: Int = 1
    @Option(help: "Seconds each cut lasts.")
    var cutSeconds: Double = 5
    @Option(help: "Publishers killed mid-batch.")
    var publisherKills: Int = 1
    @Option(
        help: ArgumentHelp(
            "Port the proxy listens on (0: any free port; the processes get the URL rewritten to it). Give the port the broker advertises when it sits behind the proxy (Kafka).",
            valueName: "port"
        )
    )
    var proxyListen: Int = 0
    @Option(
        help: ArgumentHelp(
            "What the proxy connects to: host:port, or unix:/path (default: the URL's host and port).",
            valueName: "address"
        )
    )
    var proxyUpstream: String?
    @Option(help: "Seconds to wait, after publishing, for the consumers to account for every message.")
    var settle: Double = 180
    @Option(help: "Queue visibility timeout in milliseconds (how soon a killed worker's queue messages come back).")
    var visibilityTimeout: Int = 10_000
    @Option(
        help:
            "First retry backoff in milliseconds (doubling, at most 10×). A nacked stream message holds its partition while it waits."
    )
    var backoffMs: Int = 10
    @Option(help: "Where the ledgers go (default: .run/soak/<run id>).")
    var dir: String?
    @Option(help: "Output format: text, markdown, json.")
    var format: SoakFormat = .text
    @Option(help: ArgumentHelp("Also write the timeline chart (SVG) to this file.", valueName: "file"))
    var svg: String?
    @Option(help: "Seed of the fault schedule (default: random; printed in the JSON plan's run id).")
    var seed: UInt64?
    @Flag(help: "Keep the run's queue, stream and job queue on the broker afterwards.")
    var keep = false

    func validate() throws {
        func positive(_ value: Int, _ name: String) throws {
            if value < 1 { throw ValidationError("--\(name) must be at least 1 (got \(value))") }
        }
        func nonNegative(_ value: Int, _ name: String) throws {
            if value < 0 { throw ValidationError("--\(name) must not be negative (got \(value))") }
        }
        try positive(messages, "messages")
        try positive(keys, "keys")
        try positive(workers, "workers")
        try positive(concurrency, "concurrency")
        try positive(rate, "rate")
        try positive(batch, "batch")
        try positive(partitions, "partitions")
        try positive(visibilityTimeout, "visibility-timeout")
        try positive(backoffMs, "backoff-ms")
        try nonNegative(jobs, "jobs")
        try nonNegative(kill, "kill")
        try nonNegative(restarts, "restarts")
        try nonNegative(cuts, "cuts")
        try nonNegative(publisherKills, "publisher-kills")
        if !(0...100).contains(poison) {
            throw ValidationError("--poison must be a percentage from 0 to 100 (got \(poison))")
        }
        if !(0...100).contains(flaky) {
            throw ValidationError("--flaky must be a percentage from 0 to 100 (got \(flaky))")
        }
        if poison + flaky > 100 {
            throw ValidationError("--poison plus --flaky must not exceed 100 (got \(poison + flaky))")
        }
        if !(cutSeconds > 0 && cutSeconds <= 600) {
            throw ValidationError("--cut-seconds must be above 0 and at most 600 (got \(cutSeconds))")
        }
        if !(settle > 0) { throw ValidationError("--settle must be above 0 (got \(settle))") }
        if !(0...65535).contains(proxyListen) {
            throw ValidationError("--proxy-listen must be a port from 0 to 65535 (got \(proxyListen))")
        }
        if restarts > 0, restartCommand == nil, !brokerOptions.url.hasPrefix("memory:") {
            throw ValidationError("--restarts \(restarts) needs --restart-command (or pass --restarts 0)")
        }
        if let proxyUpstream { _ = try Self.upstream(proxyUpstream) }
        try brokerOptions.validate()
    }

    static func upstream(_ text: String) throws -> SoakProxy.Upstream {
        if text.hasPrefix("unix:") { return .unix(path: String(text.dropFirst(5))) }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else {
            throw ValidationError("--proxy-upstream must be host:port or unix:/path (got '\(text)')")
        }
        return .tcp(host: String(text[..<colon]), port: port)
    }

    func run() async throws {
        let logger = brokerOptions.logger(label: "brokerkit.soak", defaultLevel: .info)
        let configuration = try await brokerOptions.configuration()
        let plan = SoakPlan(
            messages: messages,
            keys: keys,
            workers: workers,
            concurrency: concurrency,
            poisonPercent: poison,
            flakyPercent: flaky,
            jobs: jobs,
            rate: rate,
            batch: batch,
            partitions: partitions,
            visibilityTimeoutMillis: visibilityTimeout,
            backoffMillis: backoffMs
        )
        let directory = dir ?? ".run/soak/\(plan.runID)"
        let faults = SoakFaults(
            kills: kill,
            restarts: restarts,
            cuts: cuts,
            publisherKills: publisherKills,
            cutLength: .milliseconds(Int64(cutSeconds * 1000)),
            restartCommand: restartCommand
        )
        var settings = SoakRunner.Settings(
            plan: plan,
            faults: faults,
            url: brokerOptions.url,
            options: brokerOptions.optionValues,
            directory: directory,
            settle: .milliseconds(Int64(settle * 1000)),
            proxyListen: proxyListen,
            proxyUpstream: try proxyUpstream.map(Self.upstream),
            keep: keep
        )
        if let seed { settings.seed = seed }
        let mode: SoakRunner.Mode
        var shared: (any Broker)?
        if configuration.scheme == "memory" {
            let broker = try await Brokers.connect(configuration, logger: logger)
            shared = broker
            mode = .inProcess(broker)
        } else {
            mode = .processes(executable: try Self.ownExecutable())
        }
        logger.info("soak: run \(plan.runID), ledgers in \(directory)")
        let report = try await SoakRunner(settings: settings, mode: mode, logger: logger).run()
        if let shared { await shared.close() }
        print(SoakOutput.render(report, format: format), terminator: "")
        if let svg { try SoakOutput.svg(report).write(toFile: svg, atomically: true, encoding: .utf8) }
        if !report.passed { throw ExitCode(1) }
    }

    /// This executable, for the child processes.
    static func ownExecutable() throws -> String {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
        let argument = CommandLine.arguments[0]
        guard FileManager.default.isExecutableFile(atPath: argument) else {
            throw CLIError("cannot find this executable to start the soak's processes")
        }
        return argument
    }
}

/// Options shared by the soak's child processes.
struct SoakChildOptions: ParsableArguments {
    @Option(help: "The run's plan (JSON).")
    var plan: String
    @Option(help: "This process's index.")
    var index: Int
    @Option(help: "This process's ledger file.")
    var ledger: String
    @Option(help: "Ledgers of this process's earlier incarnations, comma-separated.")
    var previous: String?

    /// Ends this process when the `brokerkit soak` that started it is gone (killed, or timed
    /// out by a test), so no publisher or worker outlives its run.
    func exitWithParent() {
        let parent = getppid()
        Task.detached {
            while true {
                try? await Task.sleep(for: .milliseconds(500))
                if getppid() != parent { Foundation.exit(3) }
            }
        }
    }
}

/// A soak publisher process (started by `brokerkit soak`).
struct SoakPublisherCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak-publisher",
        abstract: "A publisher process of `brokerkit soak` (started by it).",
        shouldDisplay: false
    )

    @OptionGroup var brokerOptions: BrokerOptions
    @OptionGroup var child: SoakChildOptions

    func run() async throws {
        child.exitWithParent()
        let plan = try SoakPlan.decode(child.plan)
        let ledger = try SoakLedgerWriter(path: child.ledger)
        let previous = SoakLedgerReader().readNew(from: child.previous?.split(separator: ",").map(String.init) ?? [])
        let logger = brokerOptions.logger(label: "brokerkit.soak.publisher", defaultLevel: .info)
        try await brokerOptions.withBroker(logger: logger) { broker in
            try await SoakPublisher.run(
                broker: broker,
                plan: plan,
                index: child.index,
                ledger: ledger,
                previous: previous,
                logger: logger
            )
        }
    }
}

/// A soak worker process (started by `brokerkit soak`); SIGTERM drains it.
struct SoakWorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak-worker",
        abstract: "A worker process of `brokerkit soak` (started by it).",
        shouldDisplay: false
    )

    @OptionGroup var brokerOptions: BrokerOptions
    @OptionGroup var child: SoakChildOptions

    func run() async throws {
        child.exitWithParent()
        let plan = try SoakPlan.decode(child.plan)
        let ledger = try SoakLedgerWriter(path: child.ledger)
        let logger = brokerOptions.logger(label: "brokerkit.soak.worker", defaultLevel: .info)
        try await brokerOptions.withBroker(logger: logger) { broker in
            let worker = SoakWorker(broker: broker, plan: plan, ledger: ledger, logger: logger)
            signal(SIGTERM, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGTERM)
            source.setEventHandler { worker.stop() }
            source.resume()
            defer { source.cancel() }
            try await worker.run()
        }
    }
}
