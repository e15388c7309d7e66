import BrokerAPI
import Foundation

// Runnable example apps built only on the public BrokerAPI, so they run unchanged on every
// backend that claims the capabilities they need:
//
// - ``ChatExample``: a chat backend. `message.sent` events on a partitioned stream read by two
//   consumer groups, push notifications on a work queue, e-mails as retried jobs with a DLQ.
// - ``CommerceExample``: an e-commerce worker with three modules: order-import jobs, a
//   structured-log stream aggregated by a consumer group, and a notifications queue that
//   dead-letters a poison message without blocking the rest.
// - ``JobsExample``: a Laravel-queue-like jobs app on a queue of its own per run: dispatch,
//   dispatch later (checked against the due time), retries, a poison job dead-lettered and
//   reported by a dead-letter monitor, a `maxJobs` worker that stops on its own, and a second
//   worker shut down gracefully; `runWorkerUntilSignal` is a worker process stopped by SIGTERM.
//
// All expose `run(broker:logger:...)`, which creates its destinations (or reuses them when they
// exist), does its work, waits until everything settled, shuts its consumers and workers down
// gracefully and returns a report.

/// Why an example could not complete.
public enum ExampleError: Error, Sendable, CustomStringConvertible {
    /// An argument of `run` is out of range.
    case invalidArgument(String)
    /// The expected work was not done before the deadline; `progress` says what was reached.
    case timedOut(example: String, after: Duration, progress: String)
    /// A consumer or worker stopped before the work was done.
    case servicesStopped(example: String, reason: String)

    public var description: String {
        switch self {
        case .invalidArgument(let text):
            return "invalid argument: \(text)"
        case .timedOut(let example, let after, let progress):
            return "\(example) example did not finish within \(after); progress: \(progress)"
        case .servicesStopped(let example, let reason):
            return "\(example) example: \(reason)"
        }
    }
}

/// One dead-letter-queue entry as shown in an example report.
public struct DeadLetterSummary: Sendable, Hashable, CustomStringConvertible {
    /// The id of the dead-lettered message.
    public let messageID: String
    /// Its key, if it had one.
    public let key: String?
    /// The queue or stream it was first published to.
    public let originalDestination: String
    /// Delivery attempts made before it was dead-lettered.
    public let attempts: Int
    /// The last error text (or the dead-letter reason).
    public let lastError: String
    /// When it was dead-lettered.
    public let failedAt: Date

    public init(_ entry: DeadLetterEntry) {
        let envelope = entry.envelope
        self.messageID = envelope.original.id
        self.key = envelope.original.key
        self.originalDestination = envelope.originalDestination
        self.attempts = envelope.attempts
        self.lastError = envelope.lastError
        self.failedAt = envelope.failedAt
    }

    public var description: String {
        "message \(messageID) from \(originalDestination) after \(attempts) attempt(s): \(lastError)"
    }
}
