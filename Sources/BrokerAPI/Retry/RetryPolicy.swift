/// When and how often a failed message is redelivered before it goes to the dead-letter queue.
///
/// ```swift
/// let policy = RetryPolicy(maxAttempts: 5, backoff: .exponential(initial: .milliseconds(100), max: .seconds(10)))
/// ```
public struct RetryPolicy: Sendable, CustomStringConvertible {
    /// Total deliveries allowed, including the first one. After that the message is dead-lettered.
    public var maxAttempts: Int
    /// The delay before each redelivery.
    public var backoff: Backoff
    /// Decides whether an error is worth retrying; non-retryable errors dead-letter at once.
    public var isRetryable: @Sendable (any Error) -> Bool

    public init(
        maxAttempts: Int = 5,
        backoff: Backoff = .exponential(initial: .milliseconds(100), max: .seconds(30), jitter: 0.2),
        isRetryable: @escaping @Sendable (any Error) -> Bool = RetryPolicy.defaultIsRetryable
    ) {
        self.maxAttempts = max(1, maxAttempts)
        self.backoff = backoff
        self.isRetryable = isRetryable
    }

    /// Five attempts, exponential backoff from 100 ms to 30 s with 20 % jitter.
    public static let `default` = RetryPolicy()

    /// Deliver once; any failure dead-letters.
    public static let noRetry = RetryPolicy(maxAttempts: 1, backoff: .none)

    /// Everything is retryable except errors conforming to ``NonRetryableError`` and
    /// ``BrokerError``s with code ``BrokerError/Code/decodingFailed``.
    public static let defaultIsRetryable: @Sendable (any Error) -> Bool = { error in
        if error is any NonRetryableError { return false }
        if let brokerError = error as? BrokerError, brokerError.code == .decodingFailed { return false }
        return true
    }

    /// What to do after delivery attempt `attempt` (1-based) failed with `error`.
    public func decision(afterAttempt attempt: Int, error: (any Error)?) -> RetryDecision {
        if let error, !isRetryable(error) { return .deadLetter(reason: "non-retryable error") }
        if attempt >= maxAttempts { return .deadLetter(reason: "retries exhausted after \(attempt) attempts") }
        return .retry(after: backoff.delay(afterAttempt: attempt))
    }

    public var description: String { "RetryPolicy(maxAttempts: \(maxAttempts), backoff: \(backoff))" }
}

/// The outcome of ``RetryPolicy/decision(afterAttempt:error:)``.
public enum RetryDecision: Sendable, Equatable {
    case retry(after: Duration)
    case deadLetter(reason: String)
}

/// Mark an error type as not worth retrying: the message goes to the DLQ at once.
public protocol NonRetryableError: Error {}

/// Wraps any error to make it non-retryable.
///
/// ```swift
/// throw NonRetryable(ValidationError.badEmail)
/// ```
public struct NonRetryable: NonRetryableError, CustomStringConvertible {
    public let underlying: any Error
    public init(_ underlying: any Error) { self.underlying = underlying }
    public var description: String { String(describing: underlying) }
}
