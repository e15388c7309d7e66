import Foundation
import Logging

/// A typed job: a `Codable` payload registered under a stable name.
///
/// ```swift
/// struct SendEmail: Job {
///     static let name = "send-email"
///     var to: String
///     var subject: String
/// }
/// try await jobs.dispatch(SendEmail(to: "a@example.com", subject: "Hi"), after: .seconds(30))
/// ```
public protocol Job: Codable, Sendable {
    /// The name jobs are registered and dispatched under. Keep it stable across deploys.
    static var name: String { get }
}

extension Job {
    public static var name: String { String(describing: Self.self) }
}

/// What a job handler knows about the run.
public struct JobContext: Sendable {
    /// The job's message id (stable across retries).
    public let jobID: String
    /// The job name.
    public let name: String
    /// 1-based attempt.
    public let attempt: Int
    /// The queue it came from.
    public let queue: String
    /// The idempotency key, if one was given at dispatch.
    public let idempotencyKey: String?
    /// When it was dispatched.
    public let dispatchedAt: Date
    /// A logger with `job` metadata.
    public let logger: Logger
}

/// Per-job-type settings.
public struct JobOptions: Sendable {
    /// Attempts and backoff for this job type (overrides the worker's default).
    public var retryPolicy: RetryPolicy?
    /// Cancel a run that takes longer; counts as a failure.
    public var timeout: Duration?

    public init(retryPolicy: RetryPolicy? = nil, timeout: Duration? = nil) {
        self.retryPolicy = retryPolicy
        self.timeout = timeout
    }
}

/// Information passed to job hooks.
public struct JobEvent: Sendable {
    public let jobID: String
    public let name: String
    public let attempt: Int
    public let queue: String
    /// The error text for failures and dead letters.
    public let error: String?
    /// For failures: whether it will be retried (and after how long).
    public let retryAfter: Duration?
}

/// Lifecycle callbacks of a ``JobWorker``.
public struct JobHooks: Sendable {
    public var onCompleted: (@Sendable (JobEvent) async -> Void)?
    public var onFailed: (@Sendable (JobEvent) async -> Void)?
    public var onDeadLettered: (@Sendable (JobEvent) async -> Void)?
    public var onDuplicate: (@Sendable (JobEvent) async -> Void)?

    public init(
        onCompleted: (@Sendable (JobEvent) async -> Void)? = nil,
        onFailed: (@Sendable (JobEvent) async -> Void)? = nil,
        onDeadLettered: (@Sendable (JobEvent) async -> Void)? = nil,
        onDuplicate: (@Sendable (JobEvent) async -> Void)? = nil
    ) {
        self.onCompleted = onCompleted
        self.onFailed = onFailed
        self.onDeadLettered = onDeadLettered
        self.onDuplicate = onDuplicate
    }
}
