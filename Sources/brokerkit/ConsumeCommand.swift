import ArgumentParser
@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// `brokerkit consume`: reads messages from a queue (or a stream with `--stream`) and prints
/// them as JSON lines, acking (or nacking) each one.
struct ConsumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consume",
        abstract: "Consume messages from a queue (or a stream with --stream) and print them as JSON lines.",
        discussion: """
            Prints one JSON object per message: id, key, headers, payload, payload_encoding \
            ("utf-8", or "base64" with --base64 or when the payload is not valid UTF-8), attempt, \
            position, destination (and group for streams). Each message is acked after it is \
            printed, or nacked with --nack (the retry policy then redelivers it later or \
            dead-letters it).

            Stops after --count messages, or when --timeout seconds pass without a message.

            --start (streams only: earliest, latest, an offset, PARTITION:OFFSET or an ISO 8601 \
            date) applies only when the group has no committed position yet; to read again from \
            a position, use a new --group.
            """
    )

    static let defaultGroup = "brokerkit-cli"
    static let nackText = "nacked by brokerkit consume"

    @OptionGroup var broker: BrokerOptions

    @Option(name: .long, help: ArgumentHelp("The queue or stream to consume.", valueName: "destination"))
    var from: String

    @Option(name: .long, help: "Consumer group for --stream (default: \(ConsumeCommand.defaultGroup)).")
    var group: String?

    @Flag(name: .long, help: "Consume a stream as a member of a consumer group instead of a queue.")
    var stream = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Where a stream consumer starts: earliest (default), latest, OFFSET, PARTITION:OFFSET or an ISO 8601 date.",
            valueName: "position"
        )
    )
    var start: String?

    @Option(name: .long, help: "Stop after this many messages.")
    var count: Int?

    @Option(
        name: .long,
        help: ArgumentHelp("Stop when no message arrives for this many seconds.", valueName: "seconds")
    )
    var timeout: Double = 5

    @Flag(name: .long, help: "Nack each message instead of acking it.")
    var nack = false

    @Flag(name: .long, help: "Print every payload base64-encoded.")
    var base64 = false

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1, got \(count)") }
        if !(timeout > 0 && timeout.isFinite) {
            throw ValidationError("--timeout must be a number of seconds > 0, got \(timeout)")
        }
        if !stream && group != nil { throw ValidationError("--group applies only to stream consumers (add --stream)") }
        if !stream && start != nil { throw ValidationError("--start applies only to stream consumers (add --stream)") }
        if let group, group.isEmpty { throw ValidationError("--group must not be empty") }
        if from.isEmpty { throw ValidationError("--from must not be empty") }
        if let start { _ = try Self.parseStart(start) }
    }

    static func parseStart(_ text: String) throws -> StartPosition {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        switch trimmed.lowercased() {
        case "earliest", "beginning", "first": return .earliest
        case "latest", "end", "last": return .latest
        default: break
        }
        if let date = parseDate(trimmed) { return .timestamp(date) }
        guard let position = Position(parsing: trimmed), position.partition >= 0, isOffset(position.offset),
            !trimmed.hasPrefix(":")
        else {
            throw ValidationError(
                "invalid --start '\(text)': use earliest, latest, OFFSET, PARTITION:OFFSET or an ISO 8601 date such as 2025-01-31T12:00:00Z"
            )
        }
        return .position(position)
    }

    /// A numeric offset (Kafka, memory) or a stream entry id `MILLISECONDS-SEQUENCE` (Redis).
    static func isOffset(_ text: String) -> Bool {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        return (1...2).contains(parts.count)
            && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }
    }

    /// An ISO 8601 date-time (with or without fractional seconds) or a bare date (midnight UTC).
    static func parseDate(_ text: String) -> Date? {
        // Offsets such as `42`, `0:42` or Redis ids such as `1700000000000-0` are not dates.
        guard text.filter({ $0 == "-" }).count >= 2 else { return nil }
        if let date = ISO8601.parse(text) { return date }
        return try? Date(text, strategy: Date.ISO8601FormatStyle().year().month().day())
    }

    func run() async throws {
        let limit = count
        let wait = Duration.interval(timeout)
        let prefetch = min(limit ?? 16, 16)
        try await broker.withBroker { broker in
            let consumer: any MessageConsumer
            if stream {
                let start = try self.start.map(Self.parseStart) ?? .earliest
                consumer = try await broker.consumeStream(
                    from,
                    group: group ?? Self.defaultGroup,
                    options: StreamConsumerOptions(start: start, prefetch: prefetch, consumerName: "brokerkit-cli")
                )
            } else {
                consumer = try await broker.consumeQueue(
                    from,
                    options: QueueConsumerOptions(prefetch: prefetch, consumerName: "brokerkit-cli")
                )
            }
            do {
                var received = 0
                while limit.map({ received < $0 }) ?? true {
                    guard let delivery = try await consumer.next(timeout: wait) else { break }
                    received += 1
                    Output.line(Self.json(delivery, base64: base64).text)
                    if nack {
                        try await delivery.nack(error: Self.nackText)
                    } else {
                        try await delivery.ack()
                    }
                }
                await consumer.close()
            } catch {
                await consumer.close()
                throw error
            }
        }
    }

    static func json(_ delivery: Delivery, base64: Bool) -> JSON {
        let message = delivery.message
        var fields: [(String, JSON)] = [
            ("id", .string(message.id)),
            ("key", .optional(message.key)),
            ("headers", .dictionary(message.headers)),
        ]
        fields += JSON.payloadFields(message.payload, forceBase64: base64)
        fields += [
            ("attempt", .int(delivery.attempt)),
            ("position", .position(delivery.position)),
            ("destination", .string(delivery.destination)),
        ]
        if let group = delivery.group { fields.append(("group", .string(group))) }
        fields.append(("timestamp", .string(ISO8601.format(message.timestamp))))
        return .object(fields)
    }
}
