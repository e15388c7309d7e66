import ArgumentParser
import BrokerAPI
import Foundation
import Logging

/// `--broker`, `--option` and `--log-level`, shared by every command.
struct BrokerOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Broker URL (default: $BROKER_URL, else memory://).",
            discussion: "memory:// lives inside this one process: it is not shared with other brokerkit processes.",
            valueName: "url"
        )
    )
    var broker: String?

    @Option(
        name: .customLong("option"),
        help: ArgumentHelp("A backend option, e.g. max.message.bytes=1048576 (repeatable).", valueName: "key=value")
    )
    var options: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Log level on stderr: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")).",
            valueName: "level"
        )
    )
    var logLevel: String?

    func validate() throws {
        for option in options { _ = try Self.parseOption(option) }
        try Self.checkLogLevel(logLevel)
        if let broker, broker.trimmingCharacters(in: .whitespaces).isEmpty {
            throw ValidationError("--broker must not be empty")
        }
    }

    /// Whether the user chose a broker or options explicitly on the command line.
    var isExplicit: Bool { broker != nil || !options.isEmpty }

    /// The URL to use: `--broker`, else `BROKER_URL`, else `memory://`.
    var url: String {
        if let broker { return broker }
        if let env = ProcessInfo.processInfo.environment["BROKER_URL"], !env.isEmpty { return env }
        return Brokers.defaultURL
    }

    /// `--option` values by key (the last one wins).
    var optionValues: [String: String] {
        var values: [String: String] = [:]
        for option in options {
            if let (key, value) = try? Self.parseOption(option) { values[key] = value }
        }
        return values
    }

    static func parseOption(_ text: String) throws -> (String, String) {
        guard let eq = text.firstIndex(of: "=") else {
            throw ValidationError("invalid --option '\(text)': expected key=value")
        }
        let key = text[..<eq].trimmingCharacters(in: .whitespaces)
        guard !key.isEmpty else { throw ValidationError("invalid --option '\(text)': empty key") }
        return (key, String(text[text.index(after: eq)...]))
    }

    /// A logger writing to stderr at `--log-level` (or `defaultLevel`).
    func logger(label: String = "brokerkit", defaultLevel: Logger.Level = .warning) -> Logger {
        Self.logger(label: label, level: logLevel, defaultLevel: defaultLevel)
    }

    /// Rejects a `--log-level` that names no level.
    static func checkLogLevel(_ text: String?) throws {
        if let text, Logger.Level(rawValue: text.lowercased()) == nil {
            throw ValidationError(
                "invalid --log-level '\(text)'; use one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
    }

    /// A logger at the level `text` names (any case), else at `defaultLevel`.
    static func logger(label: String, level text: String?, defaultLevel: Logger.Level) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = text.flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? defaultLevel
        return logger
    }

    /// The configuration: `BROKER_URL`, backend options from the environment (`KAFKA_…`) and
    /// `BROKER_CONFIG_FILE`, with `--broker` and `--option` on top; all validated.
    func configuration() async throws -> BrokerConfiguration {
        try await Brokers.configurationFromEnvironment(url: broker, options: optionValues)
    }

    /// Connects, runs `body`, and closes the broker whether `body` succeeded or not.
    func withBroker<T>(
        logger: Logger? = nil,
        _ body: (any Broker) async throws -> T
    ) async throws -> T {
        let configuration = try await configuration()
        let broker = try await Brokers.connect(configuration, logger: logger ?? self.logger())
        do {
            let result = try await body(broker)
            await broker.close()
            return result
        } catch {
            await broker.close()
            throw error
        }
    }
}

/// `key=value` parsing for `--header`.
struct KeyValue {
    let key: String
    let value: String

    static func parse(_ argument: String) throws -> KeyValue {
        guard let eq = argument.firstIndex(of: "=") else {
            throw ValidationError("expected key=value, got '\(argument)'")
        }
        guard eq != argument.startIndex else { throw ValidationError("empty key in '\(argument)'") }
        return KeyValue(key: String(argument[..<eq]), value: String(argument[argument.index(after: eq)...]))
    }
}
