import ArgumentParser
@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// `brokerkit publish`: publishes one message, or N numbered copies in one batch.
struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish a message to a queue or stream.",
        discussion: """
            Prints one JSON line per broker receipt: {"id", "destination", "position"}.

            With --count N > 1 the N copies go out in one batch publish. Each copy is numbered \
            n = 1...N: every "{n}" in the payload text, key and header values is replaced by n; \
            a UTF-8 payload without "{n}" gets " #n" appended (binary payloads are sent as is).

            Without --payload or --file the payload is empty; --file - reads standard input.
            """
    )

    @OptionGroup var broker: BrokerOptions

    @Option(name: .long, help: ArgumentHelp("The queue or stream to publish to.", valueName: "destination"))
    var to: String

    @Option(name: .long, help: "Routing / partitioning key.")
    var key: String?

    @Option(
        name: .long,
        help: ArgumentHelp("A message header (repeatable).", valueName: "key=value"),
        transform: KeyValue.parse
    )
    var header: [KeyValue] = []

    @Option(name: .long, help: "The payload as UTF-8 text.")
    var payload: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Read the payload from a file ('-' for standard input).", valueName: "path")
    )
    var file: String?

    @Option(name: .long, help: "Publish this many numbered copies in one batch.")
    var count: Int = 1

    @Flag(
        name: .long,
        help: "Create the destination as a stream if it does not exist (auto-created destinations are queues)."
    )
    var stream = false

    @Option(
        name: .long,
        help: ArgumentHelp("Deliver no earlier than this many seconds from now (queues).", valueName: "seconds")
    )
    var delay: Double?

    func validate() throws {
        if payload != nil && file != nil { throw ValidationError("use either --payload or --file, not both") }
        if count < 1 { throw ValidationError("--count must be at least 1, got \(count)") }
        if let delay, !(delay >= 0 && delay.isFinite) {
            throw ValidationError("--delay must be a number of seconds >= 0, got \(delay)")
        }
        if to.isEmpty { throw ValidationError("--to must not be empty") }
        if stream && delay != nil { throw ValidationError("--delay applies only to queues, not with --stream") }
    }

    func readPayload() throws -> Data {
        if let payload { return Data(payload.utf8) }
        guard let file else { return Data() }
        if file == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
        do {
            return try Data(contentsOf: URL(fileURLWithPath: file))
        } catch {
            throw CLIError("cannot read --file '\(file)': \(error.localizedDescription)")
        }
    }

    func messages(payload: Data) -> [Message] {
        let headers = Dictionary(header.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
        guard count > 1 else { return [Message(key: key, payload: payload, headers: headers)] }
        let text = String(data: payload, encoding: .utf8)
        return (1...count).map { n in
            func number(_ s: String) -> String { s.replacingOccurrences(of: "{n}", with: String(n)) }
            var body = payload
            if let text {
                body = Data((text.contains("{n}") ? number(text) : "\(text) #\(n)").utf8)
            }
            return Message(key: key.map(number), payload: body, headers: headers.mapValues(number))
        }
    }

    func run() async throws {
        let batch = messages(payload: try readPayload())
        let options = delay.map { PublishOptions.delayed(by: .interval($0)) } ?? PublishOptions()
        let receipts = try await broker.withBroker { broker in
            if stream { try await broker.createStream(to) }
            return batch.count == 1
                ? [try await broker.publish(batch[0], to: to, options: options)]
                : try await broker.publish(batch, to: to, options: options)
        }
        for receipt in receipts {
            Output.line(
                JSON.object([
                    ("id", .string(receipt.messageID)),
                    ("destination", .string(receipt.destination)),
                    ("position", .position(receipt.position)),
                ]).text
            )
        }
    }
}
