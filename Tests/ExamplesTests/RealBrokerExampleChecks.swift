import BrokerAPI
import Examples
import Logging
import Testing

/// What the example apps must report on any real broker (Redis, Kafka, ...): the same
/// checks, whichever backend the broker is.
enum RealBrokerExampleChecks {
    static func quietLogger(_ backend: String) -> Logger {
        var logger = Logger(label: "examples-\(backend)")
        logger.logLevel = .error
        return logger
    }

    /// Runs the chat example on `broker` (closing it) and checks its report.
    static func chat(on broker: any Broker, backend: String) async throws {
        let report = try await ChatExample.run(broker: broker, logger: quietLogger(backend))
        await broker.close()
        #expect(report.backend == backend)
        #expect(report.handledByGroup == [ChatExample.readReceiptsGroup: 20, ChatExample.pushGroup: 20])
        #expect(report.outOfOrder == 0)
        #expect(report.lagByGroup == [ChatExample.readReceiptsGroup: 0, ChatExample.pushGroup: 0])
        #expect(report.notificationsHandled == 20)
        #expect(report.emailsSent == 2 && report.emailsRetried == 6 && report.emailsDeadLettered == 1)
        #expect(report.deadLetters.first?.lastError.contains("bounce@chat.example") == true)
    }

    /// Runs the commerce example on `broker` (closing it) and checks its report.
    static func commerce(on broker: any Broker, backend: String) async throws {
        let report = try await CommerceExample.run(broker: broker, logger: quietLogger(backend))
        await broker.close()
        #expect(report.backend == backend)
        #expect(report.ordersImported == 25 && report.duplicatesDropped == 1 && report.importRetries == 3)
        #expect(report.logsAggregated == report.logsPublished && report.logLag == 0)
        #expect(report.notificationsHandled == 25 && report.notificationDeadLetters.count == 1)
    }

    /// Runs the jobs example on `broker` (closing it) over `jobs` jobs and checks its report;
    /// returns it for backend-specific checks.
    ///
    /// The plan of 30 jobs: 3 delayed reminders (a tenth), 1 poison charge, 2 webhooks failing
    /// once and twice, and 24 invoices and thumbnails taking turns; the first invoice is
    /// dispatched twice with one idempotency key.
    @discardableResult
    static func jobs(on broker: any Broker, backend: String) async throws -> JobsReport {
        let report: JobsReport
        do {
            report = try await JobsExample.run(broker: broker, logger: quietLogger(backend), jobs: 30)
        } catch {
            await broker.close()
            throw error
        }
        await broker.close()
        #expect(report.backend == backend)
        #expect(report.queue == "jobs.\(report.runID)")

        // Every job ran to completion exactly once, except the poison one.
        #expect(report.jobs == 30 && report.dispatched == 31)
        #expect(
            report.dispatchedByName == [
                "jobs.send-invoice": 13, "jobs.resize-image": 12, "jobs.deliver-webhook": 2, "jobs.send-reminder": 3,
                "jobs.charge-card": 1,
            ]
        )
        #expect(
            report.completedByName == [
                "jobs.send-invoice": 12, "jobs.resize-image": 12, "jobs.deliver-webhook": 2, "jobs.send-reminder": 3,
            ]
        )
        #expect(report.completed == 29)
        #expect(report.runTwice.isEmpty, "run twice: \(report.runTwice)")
        #expect(report.lost == 0)

        // Retries: webhook-1 once, webhook-2 twice, the charge twice before its third and last
        // attempt; the second copy of invoice-1 dropped by its idempotency key.
        #expect(report.retried == 1 + 2 + 2)
        #expect(report.deadLettered == 1)
        #expect(report.duplicatesDropped == 1)
        #expect(report.attempts == 24 + 3 + (2 + 3) + 3)

        // Delayed reminders: 1, 1.5 and 2 s, none started before it was due.
        #expect(report.delayed.map(\.jobKey).sorted() == ["reminder-1", "reminder-2", "reminder-3"])
        #expect(report.delayed.map(\.delay) == [.milliseconds(1000), .milliseconds(1500), .milliseconds(2000)])
        #expect(report.startedEarly.isEmpty, "started early: \(report.startedEarly)")
        #expect(report.delayed.allSatisfy { $0.lateness >= .zero - JobsExample.earlinessTolerance })

        // The first worker stopped at exactly maxJobs; the second handled every other event.
        #expect(report.firstWorkerMaxJobs == 10)
        #expect(report.firstWorkerHandled == 10)
        #expect((9...10).contains(report.firstWorkerRuns))  // 9 if it dropped the duplicate
        #expect(report.firstWorkerHandled + report.secondWorkerHandled == report.attempts + report.duplicatesDropped)
        #expect(report.firstWorkerRuns + report.secondWorkerRuns == report.attempts)
        #expect((1...JobsExample.secondWorkerConcurrency).contains(report.peakRunning))

        // Graceful shutdown drained whatever was running; nothing was cut off.
        #expect(report.runningAtShutdown == report.remindersRunningAtShutdown)
        #expect(report.runningAfterShutdown == 0)

        // The dead-letter monitor reported the poison job, and the DLQ holds just it.
        #expect(report.monitorSaw.count == 1)
        let poison = try #require(report.monitorSaw.first)
        #expect(poison.jobName == "jobs.charge-card")
        #expect(poison.jobKey == "charge-1")
        #expect(poison.entry.attempts == JobsExample.retryPolicy.maxAttempts)
        #expect(poison.entry.lastError.contains("4000-0000-0000-0002 declined"))
        #expect(poison.entry.originalDestination == report.queue)
        #expect(report.deadLetters == report.monitorSaw)

        // Nothing left on the queue once both workers stopped.
        #expect(report.finalStats.depth == 0)
        #expect(report.finalStats.inFlight == 0)
        #expect(report.finalStats.delayed == 0)
        #expect(report.finalStats.deadLettered == 1)

        let text = report.description
        #expect(text.contains("completed 29 of 30 distinct jobs"))
        #expect(text.contains("none run twice, 0 lost"))
        #expect(text.contains("5 failed attempts retried with backoff, 1 dead-lettered, 1 duplicate dropped"))
        #expect(text.contains("0 started before due"))
        #expect(text.contains("handled 10 jobs"))
        #expect(text.contains("0 cut off"))
        #expect(text.contains("jobs.charge-card charge-1 after 3 attempt(s)"))
        return report
    }
}
