import ArgumentParser
import BrokerAPI
import Examples
import Logging

/// The examples `demo` can run.
enum DemoExample: String, ExpressibleByArgument, CaseIterable {
    case chat, commerce
}

/// `brokerkit demo`: runs one of the bundled example apps against the broker.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a bundled example app (chat or commerce) and print its report.",
        discussion: """
            The example publishes and consumes inside this one process, so it works on the \
            default memory:// broker. Progress is logged to stderr (--log-level, default info).
            """
    )

    @OptionGroup var broker: BrokerOptions

    @Option(name: .long, help: "The example to run: chat or commerce.")
    var example: DemoExample = .chat

    @Option(name: .long, help: "Messages (chat) or orders (commerce) to run (default: the example's own).")
    var size: Int?

    func validate() throws {
        if let size, size < 1 { throw ValidationError("--size must be at least 1, got \(size)") }
    }

    func run() async throws {
        let logger = broker.logger(label: "brokerkit.demo", defaultLevel: .info)
        let report: String = try await broker.withBroker(logger: logger) { broker in
            switch example {
            case .chat:
                let report = if let size {
                    try await ChatExample.run(broker: broker, logger: logger, messages: size)
                } else {
                    try await ChatExample.run(broker: broker, logger: logger)
                }
                return report.description
            case .commerce:
                let report = if let size {
                    try await CommerceExample.run(broker: broker, logger: logger, orders: size)
                } else {
                    try await CommerceExample.run(broker: broker, logger: logger)
                }
                return report.description
            }
        }
        Output.line(report)
    }
}
