import ArgumentParser
import BrokerAPI
import Examples
import Logging

/// The examples `demo` can run.
enum DemoExample: String, ExpressibleByArgument, CaseIterable {
    case chat, commerce, jobs
}

/// `brokerkit demo`: runs one of the bundled example apps against the broker.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a bundled example app (chat, commerce or jobs) and print its report.",
        discussion: """
            The example publishes and consumes inside this one process, so it works on the \
            default memory:// broker. Progress is logged to stderr (--log-level, default info).

            jobs: dispatches --size jobs (default 30, at least 6) to a queue of its own \
            (jobs.<run id>, deleted at the end): invoices with idempotency keys, thumbnails in \
            a batch, two webhooks that fail transiently, one card charge that always fails and \
            is dead-lettered, and reminders dispatched 1-2 s later. A first worker handles a \
            third of them (maxJobs) and stops on its own; a second one finishes the rest and is \
            shut down gracefully; a dead-letter monitor reports the poison job.

            jobs --wait-for-signal: a worker process instead. Dispatches --size slow jobs \
            (default 40, 250 ms each), runs one worker (concurrency 2) until SIGTERM or SIGINT, \
            then stops fetching, lets the running jobs finish, prints what was done and exits 0. \
            Try: brokerkit demo --example jobs --wait-for-signal & sleep 2; kill -TERM $!
            """
    )

    @OptionGroup var broker: BrokerOptions

    @Option(name: .long, help: "The example to run: chat, commerce or jobs.")
    var example: DemoExample = .chat

    @Option(name: .long, help: "Messages (chat), orders (commerce) or jobs (jobs) to run (default: the example's own).")
    var size: Int?

    @Flag(
        name: .long,
        help:
            "jobs only: run one worker over --size slow jobs until SIGTERM or SIGINT, then drain it gracefully and exit 0."
    )
    var waitForSignal = false

    func validate() throws {
        if let size, size < 1 { throw ValidationError("--size must be at least 1, got \(size)") }
        if waitForSignal && example != .jobs {
            throw ValidationError("--wait-for-signal applies to --example jobs only")
        }
        if let size, example == .jobs, !waitForSignal, size < JobsExample.minimumJobs {
            throw ValidationError(
                "--size must be at least \(JobsExample.minimumJobs) for the jobs example, got \(size)"
            )
        }
    }

    func run() async throws {
        let logger = broker.logger(label: "brokerkit.demo", defaultLevel: .info)
        let report: String = try await broker.withBroker(logger: logger) { broker in
            switch example {
            case .chat:
                let report =
                    if let size {
                        try await ChatExample.run(broker: broker, logger: logger, messages: size)
                    } else {
                        try await ChatExample.run(broker: broker, logger: logger)
                    }
                return report.description
            case .commerce:
                let report =
                    if let size {
                        try await CommerceExample.run(broker: broker, logger: logger, orders: size)
                    } else {
                        try await CommerceExample.run(broker: broker, logger: logger)
                    }
                return report.description
            case .jobs where waitForSignal:
                let report =
                    if let size {
                        try await JobsExample.runWorkerUntilSignal(broker: broker, logger: logger, jobs: size)
                    } else {
                        try await JobsExample.runWorkerUntilSignal(broker: broker, logger: logger)
                    }
                return report.description
            case .jobs:
                let report =
                    if let size {
                        try await JobsExample.run(broker: broker, logger: logger, jobs: size)
                    } else {
                        try await JobsExample.run(broker: broker, logger: logger)
                    }
                return report.description
            }
        }
        Output.line(report)
    }
}
