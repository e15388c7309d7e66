import ArgumentParser
import BrokerAPI
import Foundation
import KafkaBackend
import Logging
import RabbitBackend
import RedisStreamsBackend

/// The `brokerkit` command-line tool: publish, consume, inspect and demo BrokerKit brokers.
@main
struct BrokerKitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brokerkit",
        abstract: "Publish, consume and inspect queues and streams on any BrokerKit broker.",
        discussion: """
            Every command takes --broker URL (default: the BROKER_URL environment variable, \
            else memory://) and repeatable --option key=value backend options.

            Note: memory:// state lives inside one process. Running `brokerkit publish` and then \
            `brokerkit consume` as two separate processes does NOT share messages on memory:// \
            (each process starts with an empty in-memory broker). Use a real broker URL for \
            that, e.g. redis://127.0.0.1:6379, amqp://guest:guest@127.0.0.1:5672/ or \
            kafka://127.0.0.1:9092. `brokerkit demo` runs a whole example inside one process, \
            so it works on memory://.

            Exit codes: 0 success, 1 broker error (bad URL, unknown option, unreachable broker, \
            ...), 2 invalid command-line arguments.
            """,
        subcommands: [
            PublishCommand.self, ConsumeCommand.self, StatsCommand.self, DLQCommand.self,
            CapabilitiesCommand.self, DemoCommand.self, CompareCommand.self, SoakCommand.self,
            SoakPublisherCommand.self, SoakWorkerCommand.self,
        ]
    )

    /// Plugs the linked backends into the registry, so their URL schemes work.
    static func registerBackends() {
        RedisStreamsBackend.register()
        RabbitBackend.register()
        KafkaBackend.register()
    }

    /// Exit code for invalid arguments (ArgumentParser's own default is 64, EX_USAGE).
    static let usageExitCode: Int32 = 2
    /// Exit code for broker and runtime errors.
    static let failureExitCode: Int32 = 1

    static func main() async {
        LoggingSystem.bootstrap { label in StreamLogHandler.standardError(label: label) }
        registerBackends()
        var command: any ParsableCommand
        do {
            command = try await asyncParseAsRoot()
        } catch {
            exitForParse(error)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exitForRun(error)
        }
    }

    /// Parse errors (missing or unknown options, failed validation) exit with 2; help and
    /// `--version` requests exit cleanly.
    private static func exitForParse(_ error: any Error) -> Never {
        if exitCode(for: error) == .success { exit(withError: error) }
        Output.error(fullMessage(for: error))
        Foundation.exit(usageExitCode)
    }

    /// Broker errors and other runtime failures exit with 1 and `error: ...` on stderr.
    private static func exitForRun(_ error: any Error) -> Never {
        switch error {
        case let error as BrokerError:
            // BrokerError texts never contain passwords.
            Output.error("error: \(error.message) [\(error.code)\(error.backend.map { ", \($0)" } ?? "")]")
            Foundation.exit(failureExitCode)
        case let error as CLIError:
            Output.error("error: \(error.message)")
            Foundation.exit(failureExitCode)
        case let code as ExitCode:
            Foundation.exit(code.rawValue)
        default:
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            if code == .validationFailure {
                Output.error(fullMessage(for: error))
                Foundation.exit(usageExitCode)
            }
            Output.error("error: \(error)")
            Foundation.exit(failureExitCode)
        }
    }
}

/// A runtime failure of the CLI itself (unreadable file, ...): exit code 1.
struct CLIError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}
