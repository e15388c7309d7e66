import ArgumentParser
@_spi(BrokerBackend) import BrokerAPI

/// `brokerkit dlq`: list and replay dead letters.
struct DLQCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List or replay a destination's dead-letter queue.",
        subcommands: [DLQListCommand.self, DLQReplayCommand.self]
    )
}

/// `brokerkit dlq list DEST [--limit N]`.
struct DLQListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Print a destination's dead letters as JSON lines, oldest first.",
        discussion: """
            Fields: id, original_destination, attempts, last_error, failed_at, \
            first_failure_at, key, headers, payload, payload_encoding, position.
            """
    )

    @OptionGroup var broker: BrokerOptions

    @Argument(help: ArgumentHelp("The queue or stream whose DLQ to list.", valueName: "destination"))
    var destination: String

    @Option(name: .long, help: "List at most this many entries.")
    var limit: Int = 100

    @Flag(name: .long, help: "Print every payload base64-encoded.")
    var base64 = false

    func validate() throws {
        if limit < 1 { throw ValidationError("--limit must be at least 1, got \(limit)") }
    }

    func run() async throws {
        let entries = try await broker.withBroker { broker in
            try await broker.deadLetters(of: destination, limit: limit)
        }
        for entry in entries { Output.line(Self.json(entry, base64: base64).text) }
    }

    static func json(_ entry: DeadLetterEntry, base64: Bool) -> JSON {
        let envelope = entry.envelope
        var fields: [(String, JSON)] = [
            ("id", .string(envelope.original.id)),
            ("original_destination", .string(envelope.originalDestination)),
            ("attempts", .int(envelope.attempts)),
            ("last_error", .string(envelope.lastError)),
            ("failed_at", .string(ISO8601.format(envelope.failedAt))),
            ("first_failure_at", .optional(envelope.firstFailureAt.map(ISO8601.format))),
            ("key", .optional(envelope.original.key)),
            ("headers", .dictionary(envelope.original.headers)),
        ]
        fields += JSON.payloadFields(envelope.original.payload, forceBase64: base64)
        fields.append(("position", .position(entry.position)))
        return .object(fields)
    }
}

/// `brokerkit dlq replay DEST [--count N]`.
struct DLQReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Move dead letters back to their original destination (attempts reset)."
    )

    @OptionGroup var broker: BrokerOptions

    @Argument(help: ArgumentHelp("The queue or stream whose DLQ to replay.", valueName: "destination"))
    var destination: String

    @Option(name: .long, help: "Replay at most this many entries (default: all).")
    var count: Int?

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1, got \(count)") }
    }

    func run() async throws {
        let replayed = try await broker.withBroker { broker in
            try await broker.replayDeadLetters(of: destination, limit: count ?? Int(Int32.max))
        }
        Output.line("replayed \(replayed) dead letter\(replayed == 1 ? "" : "s") of '\(destination)'")
    }
}
