import BrokerAPI
import Foundation

extension CommerceExample {
    /// What one run of the commerce example did. Counts cover this run's messages only.
    public struct Report: Sendable, CustomStringConvertible {
        /// The backend it ran on.
        public let backend: String
        /// The id that tags this run's messages.
        public let runID: String

        // Worker-queue module.
        /// Order-import jobs dispatched, including the webhook's duplicate of the first order.
        public let ordersDispatched: Int
        /// Distinct orders imported into the ERP.
        public let ordersImported: Int
        /// Failed import attempts (ERP timeouts) retried with backoff.
        public let importRetries: Int
        /// Jobs dropped because their idempotency key had already run.
        public let duplicatesDropped: Int
        /// Import jobs that exhausted their attempts (0 when all went well).
        public let importsDeadLettered: Int
        /// Most imports observed running at once (at most ``CommerceExample/workerConcurrency``).
        public let peakConcurrentImports: Int
        /// This run's entries in the import queue's DLQ.
        public let importDeadLetters: [DeadLetterSummary]

        // Logs module.
        /// Log events published to ``CommerceExample/logStream``.
        public let logsPublished: Int
        /// Distinct log events the `log-aggregator` group counted.
        public let logsAggregated: Int
        /// Aggregated log events per level (`info`, `warning`, `error`).
        public let logsByLevel: [String: Int]
        /// Lag of the `log-aggregator` group at the end (-1: group not listed).
        public let logLag: Int

        // Notifications module.
        /// Messages queued on ``CommerceExample/notificationsQueue`` (confirmations + the poison one).
        public let notificationsPublished: Int
        /// Confirmations handled (distinct orders).
        public let notificationsHandled: Int
        /// This run's entries in the notifications DLQ (the poison message).
        public let notificationDeadLetters: [DeadLetterSummary]

        /// Wall-clock time of the run.
        public let elapsed: Duration

        public var description: String {
            let levels = logsByLevel.keys.sorted().map { "\($0) \(logsByLevel[$0] ?? 0)" }.joined(separator: ", ")
            var lines = [
                "Commerce example on \(backend) (run \(runID)), finished in \(ExampleSupport.seconds(elapsed))",
                "  worker queue \(CommerceExample.importQueue): \(ordersDispatched) jobs dispatched, \(ordersImported) orders imported, \(importRetries) ERP timeouts retried, \(duplicatesDropped) duplicate dropped, \(importsDeadLettered) dead-lettered",
                "    concurrency \(CommerceExample.workerConcurrency), peak \(peakConcurrentImports) imports at once",
                "  logs \(CommerceExample.logStream): \(logsPublished) events published, \(logsAggregated) aggregated by \(CommerceExample.logGroup) (\(levels)), lag \(logLag < 0 ? "unknown" : String(logLag))",
                "  notifications \(CommerceExample.notificationsQueue): \(notificationsPublished) queued, \(notificationsHandled) confirmations sent, \(notificationDeadLetters.count) poison message(s) dead-lettered",
            ]
            for entry in importDeadLetters + notificationDeadLetters {
                lines.append(
                    "    - DLQ \(deadLetterName(for: entry.originalDestination)): \(entry.messageID) after \(entry.attempts) attempt(s): \(entry.lastError)"
                )
            }
            return lines.joined(separator: "\n")
        }
    }
}
