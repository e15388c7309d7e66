import BrokerAPI
import Foundation

extension ChatExample {
    /// What one run of the chat example did. Counts cover this run's messages only.
    public struct Report: Sendable, CustomStringConvertible {
        /// The backend it ran on (`memory`, `kafka`, `amqp`, `redis`).
        public let backend: String
        /// The id that tags this run's messages.
        public let runID: String
        /// `message.sent` events published to ``ChatExample/stream``.
        public let published: Int
        /// Conversations (stream keys) the events were spread over.
        public let conversations: Int
        /// Distinct events handled per consumer group.
        public let handledByGroup: [String: Int]
        /// Events `read-receipts` saw behind a later event of the same conversation (0 when
        /// per-key order holds).
        public let outOfOrder: Int
        /// Lag per consumer group at the end, from `broker.stats(for:)` (-1: group not listed).
        public let lagByGroup: [String: Int]
        /// Notification tasks handled from ``ChatExample/notificationsQueue``.
        public let notificationsHandled: Int
        /// Of those, pushes delivered to online users.
        public let pushesDelivered: Int
        /// Of those, notifications for offline users (answered by e-mail, one per conversation).
        public let offlineNotifications: Int
        /// E-mail jobs dispatched.
        public let emailsDispatched: Int
        /// E-mails the mail server accepted.
        public let emailsSent: Int
        /// Failed e-mail attempts that were retried with backoff.
        public let emailsRetried: Int
        /// E-mail jobs that exhausted their attempts and went to the DLQ.
        public let emailsDeadLettered: Int
        /// This run's entries in `chat.emails`' dead-letter queue, read back from the broker.
        public let deadLetters: [DeadLetterSummary]
        /// Wall-clock time of the run.
        public let elapsed: Duration

        /// Entries of this run in the e-mail DLQ.
        public var dlqEntries: Int { deadLetters.count }
        /// The last error text of the newest DLQ entry.
        public var lastDeadLetterError: String? { deadLetters.last?.lastError }

        public var description: String {
            let read = handledByGroup[ChatExample.readReceiptsGroup] ?? 0
            let push = handledByGroup[ChatExample.pushGroup] ?? 0
            func lag(_ group: String) -> String {
                guard let lag = lagByGroup[group], lag >= 0 else { return "unknown" }
                return String(lag)
            }
            var lines = [
                "Chat example on \(backend) (run \(runID)), finished in \(ExampleSupport.seconds(elapsed))",
                "  stream \(ChatExample.stream): \(published) message.sent events over \(conversations) conversations (key = conversation id)",
                "    group \(ChatExample.readReceiptsGroup):      \(read) handled, \(outOfOrder) out of order, lag \(lag(ChatExample.readReceiptsGroup))",
                "    group \(ChatExample.pushGroup): \(push) handled, lag \(lag(ChatExample.pushGroup))",
                "  queue \(ChatExample.notificationsQueue): \(notificationsHandled) handled (\(pushesDelivered) pushes to online users, \(offlineNotifications) for offline users)",
                "  jobs \(ChatExample.emailQueue): \(emailsDispatched) e-mails dispatched, \(emailsSent) sent, \(emailsRetried) attempts retried with backoff, \(emailsDeadLettered) dead-lettered",
                "  DLQ \(deadLetterName(for: ChatExample.emailQueue)): \(dlqEntries) entr\(dlqEntries == 1 ? "y" : "ies") from this run",
            ]
            for entry in deadLetters {
                lines.append("    - \(entry.messageID): \(entry.attempts) attempts, last error: \(entry.lastError)")
            }
            return lines.joined(separator: "\n")
        }
    }
}
