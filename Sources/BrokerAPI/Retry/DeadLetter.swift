import Foundation

/// A message on its way to (or read back from) a dead-letter queue.
///
/// The original payload, key, id and headers are kept unchanged; the envelope adds the
/// reserved headers ``HeaderName/originalDestination``, ``HeaderName/attempts``,
/// ``HeaderName/lastError``, ``HeaderName/failedAt`` and ``HeaderName/firstFailureAt``.
public struct DeadLetterEnvelope: Sendable, Hashable {
    /// The original message, without envelope headers.
    public var original: Message
    /// Where the message was first published.
    public var originalDestination: String
    /// Delivery attempts made.
    public var attempts: Int
    /// The last error (or the dead-letter reason).
    public var lastError: String
    /// When it was dead-lettered.
    public var failedAt: Date
    /// When it first failed.
    public var firstFailureAt: Date?

    public init(
        original: Message,
        originalDestination: String,
        attempts: Int,
        lastError: String,
        failedAt: Date = Date(),
        firstFailureAt: Date? = nil
    ) {
        var clean = original
        clean.headers = clean.headers.filter { !DeadLetterEnvelope.envelopeHeaders.contains($0.key) }
        self.original = clean
        self.originalDestination = originalDestination
        self.attempts = attempts
        self.lastError = lastError
        self.failedAt = failedAt
        self.firstFailureAt = firstFailureAt
    }

    static let envelopeHeaders: Set<String> = [
        HeaderName.originalDestination, HeaderName.attempts, HeaderName.lastError,
        HeaderName.failedAt, HeaderName.firstFailureAt, HeaderName.attempt, HeaderName.deliverAt,
    ]

    /// The message as stored on the DLQ: the original plus envelope headers.
    public var message: Message {
        var message = original
        message.headers[HeaderName.originalDestination] = originalDestination
        message.headers[HeaderName.attempts] = String(attempts)
        message.headers[HeaderName.lastError] = String(lastError.prefix(4096))
        message.headers[HeaderName.failedAt] = ISO8601.format(failedAt)
        if let firstFailureAt { message.headers[HeaderName.firstFailureAt] = ISO8601.format(firstFailureAt) }
        return message
    }

    /// Where ``BrokerAdmin/replayDeadLetters(of:limit:)`` sends the entry: its original
    /// destination when that is a name an app could use, else `dlqOf` (the destination whose
    /// DLQ holds it). The envelope is read from the broker: another program may have written
    /// any text there, such as a reserved or malformed name.
    public func replayTarget(dlqOf destination: String) -> String {
        (try? DestinationName.validate(originalDestination)) != nil ? originalDestination : destination
    }

    /// Reads an envelope back from a DLQ message; `nil` if the envelope headers are missing.
    public init?(dlqMessage message: Message) {
        guard let origin = message.headers[HeaderName.originalDestination] else { return nil }
        self.init(
            original: message,
            originalDestination: origin,
            // Another program may have written it: a count, bounded like a delivery's attempts.
            attempts: Int(message.headers[HeaderName.attempts] ?? "").map { min(max(0, $0), Delivery.maxAttempt) } ?? 0,
            lastError: message.headers[HeaderName.lastError] ?? "",
            failedAt: message.headers[HeaderName.failedAt].flatMap(ISO8601.parse) ?? message.timestamp,
            firstFailureAt: message.headers[HeaderName.firstFailureAt].flatMap(ISO8601.parse)
        )
    }
}

extension DeadLetterEnvelope {
    /// What a record another producer wrote to a DLQ says instead of an error.
    static let missingEnvelope = "no dead-letter envelope: another program wrote this record to the dead-letter queue"

    /// The envelope of a record read from `destination`'s DLQ: the one BrokerKit wrote, or,
    /// for a record without one, an envelope that says so (origin `destination`, attempts 0),
    /// so that listing shows every record replay would move.
    public init(stored message: Message, dlqOf destination: String) {
        self =
            DeadLetterEnvelope(dlqMessage: message)
            ?? DeadLetterEnvelope(
                original: message,
                originalDestination: destination,
                attempts: 0,
                lastError: Self.missingEnvelope,
                failedAt: message.timestamp
            )
    }

    /// What replaying this entry publishes: the original message as a fresh one (of
    /// BrokerKit's reserved headers only the job name and idempotency key kept, so it starts
    /// at attempt 1, is due at once and reaches every group of a stream), to
    /// ``replayTarget(dlqOf:)``.
    public func replay(dlqOf destination: String) -> DeadLetterReplay {
        var message = original
        message.headers = message.headers.filter { !PublishValidation.isReserved($0.key) }
        return DeadLetterReplay(destination: replayTarget(dlqOf: destination), message: message)
    }
}

/// One record of a dead-letter queue as the broker holds it: what a driver's
/// ``BrokerDriver/readDeadLetters(of:limit:)`` returns.
public struct DeadLetterRecord: Sendable, Hashable {
    /// The stored message: the original with the envelope headers, when BrokerKit wrote it.
    public var message: Message
    /// Where it sits in the DLQ.
    public var position: Position?

    public init(message: Message, position: Position?) {
        self.message = message
        self.position = position
    }
}

/// What replaying one dead letter publishes, and where (see
/// ``DeadLetterEnvelope/replay(dlqOf:)``).
public struct DeadLetterReplay: Sendable, Hashable {
    /// The destination it goes back to.
    public var destination: String
    /// The message to publish.
    public var message: Message

    public init(destination: String, message: Message) {
        self.destination = destination
        self.message = message
    }
}

/// One entry listed from a dead-letter queue.
public struct DeadLetterEntry: Sendable, Hashable {
    /// The envelope (original message and failure details).
    public let envelope: DeadLetterEnvelope
    /// Where the entry sits in the DLQ.
    public let position: Position?

    public init(envelope: DeadLetterEnvelope, position: Position?) {
        self.envelope = envelope
        self.position = position
    }
}

/// The name of the dead-letter queue for a destination: `<destination>.dlq`.
public func deadLetterName(for destination: String) -> String { destination + ".dlq" }

/// ISO 8601 with fractional seconds, the format of every date header.
@_spi(BrokerBackend) public enum ISO8601 {
    public static func format(_ date: Date) -> String {
        date.formatted(
            .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)
        )
    }
    public static func parse(_ text: String) -> Date? {
        if let date = try? Date(
            text,
            strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)
        ) {
            return date
        }
        return try? Date(text, strategy: .iso8601)
    }
}
