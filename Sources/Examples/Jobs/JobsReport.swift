import BrokerAPI
import Foundation

/// What one run of ``JobsExample`` did.
public struct JobsReport: Sendable, CustomStringConvertible {
    /// The backend it ran on (`memory`, `kafka`, `amqp`, `redis`).
    public let backend: String
    /// The id of this run.
    public let runID: String
    /// The run's queue (`jobs.<run id>`).
    public let queue: String
    /// Whether the queue was left on the broker (else it was deleted at the end).
    public let queueKept: Bool

    /// Distinct jobs.
    public let jobs: Int
    /// Messages dispatched: every job, plus the invoice submitted twice.
    public let dispatched: Int
    /// Messages dispatched per job name.
    public let dispatchedByName: [String: Int]
    /// Successful runs per job name.
    public let completedByName: [String: Int]
    /// Distinct jobs that completed (every job but the poison one).
    public let completed: Int
    /// Keys of jobs that completed more than once (empty when no job ran twice).
    public let runTwice: [String]
    /// Handler runs in all, retries included.
    public let attempts: Int
    /// Failed attempts retried with backoff.
    public let retried: Int
    /// Jobs that used up their attempts and went to the dead-letter queue.
    public let deadLettered: Int
    /// Messages dropped because their idempotency key had already run.
    public let duplicatesDropped: Int
    /// When each delayed job first started, against its due time.
    public let delayed: [DelayedJobTiming]

    /// `maxJobs` of the first worker.
    public let firstWorkerMaxJobs: Int
    /// Jobs the first worker handled before it stopped on its own (its `handledCount`).
    public let firstWorkerHandled: Int
    /// Handler runs on the first worker (`firstWorkerHandled` minus the duplicates it dropped).
    public let firstWorkerRuns: Int
    /// How long the first worker ran.
    public let firstWorkerElapsed: Duration
    /// Jobs the second worker handled.
    public let secondWorkerHandled: Int
    /// Handler runs on the second worker.
    public let secondWorkerRuns: Int
    /// Most jobs seen running at once.
    public let peakRunning: Int
    /// Jobs running when the second worker was asked to stop.
    public let runningAtShutdown: Int
    /// Of those, delayed reminders (the only jobs allowed to be running then).
    public let remindersRunningAtShutdown: Int
    /// Jobs still running after the graceful shutdown returned (0: all drained).
    public let runningAfterShutdown: Int
    /// From the shutdown request until the service group returned.
    public let shutdownTook: Duration

    /// Dead-lettered jobs as the monitor reported them while the second worker ran.
    public let monitorSaw: [DeadLetteredJob]
    /// The dead-letter queue read back at the end.
    public let deadLetters: [DeadLetteredJob]
    /// `stats(for:)` of the queue after both workers stopped.
    public let finalStats: DestinationStats
    /// Wall-clock time of the run.
    public let elapsed: Duration

    /// Delayed jobs that started more than ``JobsExample/earlinessTolerance`` before they were due.
    public var startedEarly: [DelayedJobTiming] {
        delayed.filter { $0.lateness < .zero - JobsExample.earlinessTolerance }
    }

    /// Dispatched jobs neither completed nor dead-lettered.
    public var lost: Int { jobs - completed - deadLettered }

    public var description: String {
        func names(_ counts: [String: Int]) -> String {
            counts.keys.sorted().map { "\($0) \(counts[$0] ?? 0)" }.joined(separator: ", ")
        }
        let latest = delayed.map(\.lateness).max() ?? .zero
        let earliest = delayed.map(\.lateness).min() ?? .zero
        var lines = [
            "Jobs example on \(backend) (run \(runID)), finished in \(ExampleSupport.seconds(elapsed))",
            "  queue \(queue): \(dispatched) jobs dispatched (\(names(dispatchedByName)))",
            "    completed \(completed) of \(jobs) distinct jobs (\(names(completedByName))), \(runTwice.isEmpty ? "none" : runTwice.joined(separator: ", ")) run twice, \(lost) lost",
            "    \(attempts) attempts, \(retried) failed attempts retried with backoff, \(deadLettered) dead-lettered, \(duplicatesDropped) duplicate dropped by idempotency key",
            "  delayed: \(delayed.count) reminders dispatched with dispatch(after:), \(startedEarly.count) started before due; lateness \(DelayedJobTiming.milliseconds(earliest)) to \(DelayedJobTiming.milliseconds(latest))",
        ]
        for timing in delayed { lines.append("    - \(timing)") }
        lines += [
            "  first worker (concurrency 1, maxJobs \(firstWorkerMaxJobs)): handled \(firstWorkerHandled) jobs in \(ExampleSupport.seconds(firstWorkerElapsed)), then stopped on its own",
            "  second worker (concurrency \(JobsExample.secondWorkerConcurrency)): handled \(secondWorkerHandled) jobs, peak \(peakRunning) running at once",
            "    graceful shutdown: \(runningAtShutdown) job(s) running when asked to stop, drained in \(ExampleSupport.seconds(shutdownTook)), \(runningAfterShutdown) cut off",
            "  dead-letter monitor: \(monitorSaw.count) dead-lettered job(s) reported",
        ]
        for job in monitorSaw { lines.append("    - \(job)") }
        lines.append(
            "  broker stats at the end: depth \(finalStats.depth), in flight \(finalStats.inFlight), delayed \(finalStats.delayed), dead-lettered \(finalStats.deadLettered)"
        )
        lines.append(
            queueKept
                ? "  queue kept: `brokerkit dlq list \(queue) --broker <url>` shows the dead letter"
                : "  queue \(queue) and its dead-letter queue deleted"
        )
        return lines.joined(separator: "\n")
    }
}
