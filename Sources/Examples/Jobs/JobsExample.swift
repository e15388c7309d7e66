@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle

/// A Laravel-queue-like jobs app on one broker, on a queue of its own per run
/// (`jobs.<run id>`, with its dead-letter queue `jobs.<run id>.dlq`):
///
/// - **dispatch**: invoices one by one with an idempotency key each (one of them is submitted
///   twice, and the key drops the second copy), thumbnails in one `dispatch(batch:)`, two
///   partner webhooks that answer 503 once and twice before they succeed, and one card charge
///   the provider always declines (the poison job);
/// - **dispatch later**: a tenth of the jobs (at least one) are reminders dispatched with
///   `dispatch(after:)` 1, 1.5 or 2 s; each records how long after its due time it started;
/// - **a worker that stops on its own**: the first ``JobWorker`` (concurrency 1,
///   `maxJobs` N) handles exactly N jobs and returns;
/// - **graceful stop**: a second worker (concurrency 4) runs in a `ServiceGroup` with a
///   dead-letter monitor and finishes the rest; once everything else has settled (a reminder
///   may still be running) the group is shut down gracefully, as SIGTERM would do: the worker
///   stops fetching and lets its running jobs finish. One idempotency store is shared by both
///   workers, so no job runs twice;
/// - **dead-letter monitor**: a service polling `stats(for:).deadLettered` and reading
///   `deadLetters(of:limit:)`, which reports the poison job with its attempts and last error.
///
/// Retries back off 20–100 ms, so a run takes a few seconds (most of it the reminders'
/// delays). The queue is deleted at the end unless `keepQueue` is set.
///
/// ```swift
/// let report = try await JobsExample.run(broker: broker, logger: Logger(label: "jobs"))
/// print(report)
/// ```
public enum JobsExample {
    /// The prefix of each run's queue: `jobs.<run id>`.
    public static let queuePrefix = "jobs"
    /// Attempts and backoff of every job: the poison job is dead-lettered after 3 attempts.
    public static let retryPolicy = RetryPolicy(
        maxAttempts: 3,
        backoff: .exponential(initial: .milliseconds(20), multiplier: 2, max: .milliseconds(100), jitter: 0.1)
    )
    /// Jobs the second worker runs at once.
    public static let secondWorkerConcurrency = 4
    /// The smallest `jobs` accepted: one of each kind plus one invoice.
    public static let minimumJobs = JobsPlan.minimumJobs
    /// Delayed jobs starting up to this much before their due time still count as on time
    /// (due times travel as ISO 8601 with milliseconds).
    public static let earlinessTolerance: Duration = .milliseconds(10)
    /// What the example needs from a backend.
    public static let requiredCapabilities: BrokerCapabilities = [.queues, .delayedDelivery]

    /// A run of its own: a fresh id, the queue `jobs.<id>` (created), and a logger naming both.
    static func prepareRun(
        broker: any Broker,
        logger: Logger
    ) async throws -> (runID: String, queue: String, logger: Logger) {
        let runID = ExampleSupport.newRunID()
        let queue = "\(queuePrefix).\(runID)"
        var logger = logger
        logger[metadataKey: "example"] = "jobs"
        logger[metadataKey: "run"] = "\(runID)"
        try await ExampleSupport.ensureDestination(queue, kind: .queue, on: broker)
        return (runID, queue, logger)
    }

    /// Delayed reminders among `jobs` jobs (a tenth, at least one).
    public static func delayedJobs(of jobs: Int) -> Int { max(1, jobs / 10) }

    /// Runs the scenario over `jobs` distinct jobs (at least ``minimumJobs``); the first
    /// worker handles `firstWorkerJobs` of them (default a third; at most the jobs that are
    /// not delayed) and stops. Waits at most `timeout` for the work to settle.
    public static func run(
        broker: any Broker,
        logger: Logger,
        jobs: Int = 30,
        firstWorkerJobs: Int? = nil,
        keepQueue: Bool = false,
        timeout: Duration = .seconds(60)
    ) async throws -> JobsReport {
        guard jobs >= minimumJobs else {
            throw ExampleError.invalidArgument("jobs must be at least \(minimumJobs), got \(jobs)")
        }
        let firstJobs = firstWorkerJobs ?? max(1, jobs / 3)
        let undelayed = jobs - delayedJobs(of: jobs)
        guard (1...undelayed).contains(firstJobs) else {
            throw ExampleError.invalidArgument(
                "firstWorkerJobs must be in 1...\(undelayed) for \(jobs) jobs, got \(firstJobs)"
            )
        }
        try broker.require(requiredCapabilities, for: "the jobs example")
        let started = ContinuousClock.now
        let (runID, queue, logger) = try await prepareRun(broker: broker, logger: logger)

        let state = JobsState(JobsCounts())
        let plan = try await dispatch(
            JobsPlan.make(jobs: jobs),
            to: JobQueue(broker: broker, queue: queue),
            runID: runID
        )
        logger.info("dispatched \(plan.count) jobs (+1 duplicate) to \(queue), \(plan.reminders.count) of them delayed")
        // One store for both workers: a job one of them completed is a duplicate for the other.
        let store = InMemoryIdempotencyStore()

        // 1. A worker that handles exactly `firstJobs` jobs, then stops on its own.
        let first = makeWorker(
            "first",
            broker: broker,
            queue: queue,
            options: JobWorker.Options(
                concurrency: 1,
                retryPolicy: retryPolicy,
                shutdownTimeout: .seconds(5),
                maxJobs: firstJobs,
                idempotencyStore: store,
                runningDuplicateDelay: .milliseconds(300)
            ),
            state: state,
            logger: logger
        )
        let firstStarted = ContinuousClock.now
        try await runUntilItStops(first, timeout: timeout)
        let firstElapsed = ContinuousClock.now - firstStarted
        logger.info("first worker stopped on its own after \(first.handledCount) jobs")

        // 2. A second worker and the dead-letter monitor finish the rest, then shut down gracefully.
        let second = makeWorker(
            "second",
            broker: broker,
            queue: queue,
            options: JobWorker.Options(
                concurrency: secondWorkerConcurrency,
                retryPolicy: retryPolicy,
                shutdownTimeout: .seconds(10),
                idempotencyStore: store,
                runningDuplicateDelay: .milliseconds(300)
            ),
            state: state,
            logger: logger
        )
        let monitor = DeadLetterMonitor(broker: broker, queue: queue, state: state, logger: logger)
        // Shut down in reverse order: the worker first, the monitor last.
        let services: [(name: String, service: any Service)] = [
            ("dead-letter-monitor", monitor), ("second-worker", second),
        ]
        let shutdownStarted = try await ExampleSupport.withServices(services, example: "jobs", logger: logger) {
            try await ExampleSupport.waitUntilDone(example: "jobs", timeout: timeout) {
                progress(state.snapshot, plan: plan)
            }
            state.update { counts in
                counts.runningAtShutdown = counts.running
                counts.remindersRunningAtShutdown = counts.remindersRunning
            }
            logger.info("all jobs settled or running; stopping the second worker gracefully")
            return ContinuousClock.now
        }
        let shutdownTook = ContinuousClock.now - shutdownStarted

        // 3. What the broker says once the workers are gone (stats may trail the last commit).
        var stats = try await broker.stats(for: queue)
        let settleDeadline = ContinuousClock.now + .seconds(10)
        while !(stats.depth == 0 && stats.inFlight == 0 && stats.delayed == 0 && stats.deadLettered >= 1),
            ContinuousClock.now < settleDeadline
        {
            try await Task.sleep(for: .milliseconds(50))
            stats = try await broker.stats(for: queue)
        }
        let deadLetters = try await broker.deadLetters(of: queue, limit: 100).map(DeadLetteredJob.init)
        if !keepQueue {
            do { try await broker.deleteDestination(queue) } catch {
                logger.warning("could not delete \(queue): \(error)")
            }
        }

        let counts = state.snapshot
        let report = JobsReport(
            backend: broker.backendName,
            runID: runID,
            queue: queue,
            queueKept: keepQueue,
            jobs: plan.count,
            dispatched: plan.count + 1,
            dispatchedByName: [
                SendInvoice.name: plan.invoices.count + 1, ResizeImage.name: plan.images.count,
                DeliverWebhook.name: plan.webhooks.count, SendReminder.name: plan.reminders.count, ChargeCard.name: 1,
            ],
            completedByName: counts.completedByName,
            completed: counts.completed,
            runTwice: counts.runTwice,
            attempts: counts.attemptsByKey.values.reduce(0, +),
            retried: counts.retried,
            deadLettered: counts.deadLetteredIDs.count,
            duplicatesDropped: counts.duplicatesByWorker.values.reduce(0, +),
            delayed: plan.reminders.map { counts.delayedTimings[$0.jobKey] }.compactMap { $0 },
            firstWorkerMaxJobs: firstJobs,
            firstWorkerHandled: first.handledCount,
            firstWorkerRuns: counts.runsByWorker["first"] ?? 0,
            firstWorkerElapsed: firstElapsed,
            secondWorkerHandled: second.handledCount,
            secondWorkerRuns: counts.runsByWorker["second"] ?? 0,
            peakRunning: counts.peakRunning,
            runningAtShutdown: counts.runningAtShutdown,
            remindersRunningAtShutdown: counts.remindersRunningAtShutdown,
            runningAfterShutdown: counts.running,
            shutdownTook: shutdownTook,
            monitorSaw: counts.monitorSawDeadLetters,
            deadLetters: deadLetters,
            finalStats: stats,
            elapsed: ContinuousClock.now - started
        )
        logger.info("jobs example finished", metadata: ["elapsed": "\(ExampleSupport.seconds(report.elapsed))"])
        return report
    }

    // MARK: - Dispatch

    /// Dispatches the plan; returns it with the reminders' due times filled in.
    static func dispatch(_ plan: JobsPlan, to jobs: JobQueue, runID: String) async throws -> JobsPlan {
        var plan = plan
        func key(_ job: some ExampleJob) -> String { "\(runID):\(job.jobKey)" }
        for invoice in plan.invoices {
            try await jobs.dispatch(invoice, idempotencyKey: key(invoice))
        }
        try await jobs.dispatch(batch: plan.images)
        for webhook in plan.webhooks {
            try await jobs.dispatch(webhook, idempotencyKey: key(webhook))
        }
        try await jobs.dispatch(plan.poison, idempotencyKey: key(plan.poison))
        if let invoice = plan.invoices.first {
            // The customer pressed "send invoice" twice: same idempotency key, so it is sent once.
            try await jobs.dispatch(invoice, idempotencyKey: key(invoice))
        }
        for index in plan.reminders.indices {
            let delay = JobsPlan.reminderDelays[index % JobsPlan.reminderDelays.count]
            plan.reminders[index].dueAt = Date().addingTimeInterval(delay.timeInterval)
            plan.reminders[index].delayMilliseconds = Int(delay.timeInterval * 1000)
            try await jobs.dispatch(plan.reminders[index], after: delay, idempotencyKey: key(plan.reminders[index]))
        }
        return plan
    }

    // MARK: - Workers

    /// A worker with a handler for every job type; `label` tells the workers apart in the counts.
    static func makeWorker(
        _ label: String,
        broker: any Broker,
        queue: String,
        options: JobWorker.Options,
        state: JobsState,
        logger: Logger
    ) -> JobWorker {
        let hooks = JobHooks(
            onFailed: { event in
                if event.retryAfter != nil { state.update { $0.retried += 1 } }
            },
            onDeadLettered: { event in
                state.update { $0.deadLetteredIDs.append(event.jobID) }
            },
            onDuplicate: { _ in
                state.update { $0.duplicatesByWorker[label, default: 0] += 1 }
            }
        )
        var logger = logger
        logger[metadataKey: "worker"] = "\(label)"
        let worker = JobWorker(broker: broker, queue: queue, options: options, hooks: hooks, logger: logger)
        worker.register(SendInvoice.self) { invoice, context in
            try await track(invoice, context, worker: label, state: state) {
                try await Task.sleep(for: .milliseconds(2))  // the mail API
                context.logger.debug("sent invoice to \(invoice.customer): \(invoice.amountCents) cents")
            }
        }
        worker.register(ResizeImage.self) { image, context in
            try await track(image, context, worker: label, state: state) {
                try await Task.sleep(for: .milliseconds(image.renderMilliseconds))
                context.logger.debug("resized \(image.path) to \(image.width) px")
            }
        }
        worker.register(DeliverWebhook.self) { webhook, context in
            try await track(webhook, context, worker: label, state: state) {
                try await Task.sleep(for: .milliseconds(2))
                if context.attempt <= webhook.failures {
                    throw WebhookUnavailable(url: webhook.url, attempt: context.attempt)
                }
            }
        }
        worker.register(SendReminder.self) { reminder, context in
            let lateness = Duration.seconds(Date().timeIntervalSince(reminder.dueAt))
            state.update { counts in
                if counts.delayedTimings[reminder.jobKey] == nil {
                    counts.delayedTimings[reminder.jobKey] = DelayedJobTiming(
                        jobKey: reminder.jobKey,
                        delay: .milliseconds(reminder.delayMilliseconds),
                        lateness: lateness
                    )
                }
                counts.remindersRunning += 1
            }
            defer { state.update { $0.remindersRunning -= 1 } }
            try await track(reminder, context, worker: label, state: state) {
                try await Task.sleep(for: .milliseconds(reminder.sendMilliseconds))
            }
        }
        worker.register(ChargeCard.self) { charge, context in
            try await track(charge, context, worker: label, state: state) {
                try await Task.sleep(for: .milliseconds(2))
                throw CardDeclined(card: charge.card)
            }
        }
        return worker
    }

    /// Counts one run of `job`: its attempt, the worker, running jobs, and success.
    static func track<J: ExampleJob>(
        _ job: J,
        _ context: JobContext,
        worker: String,
        state: JobsState,
        body: () async throws -> Void
    ) async throws {
        state.update { counts in
            counts.attemptsByKey[job.jobKey, default: 0] += 1
            counts.runsByWorker[worker, default: 0] += 1
            counts.running += 1
            counts.peakRunning = max(counts.peakRunning, counts.running)
        }
        defer { state.update { $0.running -= 1 } }
        try await body()
        state.update { counts in
            counts.completedByKey[job.jobKey, default: 0] += 1
            counts.completedByName[J.name, default: 0] += 1
        }
    }

    /// Runs `worker` until it stops on its own (`maxJobs`); stops it and throws after `timeout`.
    static func runUntilItStops(_ worker: JobWorker, timeout: Duration) async throws {
        let stoppedInTime = try await withThrowingTaskGroup(of: Bool?.self) { group in
            group.addTask {
                try await worker.run()
                return true
            }
            group.addTask {
                do { try await Task.sleep(for: timeout) } catch { return nil }  // cancelled: the worker stopped
                return false
            }
            let first = try await group.next() ?? false
            if first == false { worker.stop() }
            group.cancelAll()
            while try await group.next() != nil {}
            return first == true
        }
        guard stoppedInTime else {
            let maxJobs = worker.options.maxJobs.map(String.init) ?? "?"
            throw ExampleError.timedOut(
                example: "jobs",
                after: timeout,
                progress: "first worker handled \(worker.handledCount) of \(maxJobs) jobs"
            )
        }
    }

    // MARK: - Completion

    /// Done when every job but the reminders has completed or been dead-lettered (and the
    /// monitor saw the dead letter), every reminder has completed or is running, and the
    /// duplicate invoice was dropped (if it came while the first copy ran, it was postponed by
    /// `runningDuplicateDelay` and is dropped once that copy completed).
    static func progress(_ counts: JobsCounts, plan: JobsPlan) -> ExampleSupport.Progress {
        let reminders = plan.reminders.count
        let remindersDone = counts.completedByName[SendReminder.name] ?? 0
        let others = plan.count - reminders
        let othersSettled = counts.completed - remindersDone + counts.deadLetteredIDs.count
        let duplicates = counts.duplicatesByWorker.values.reduce(0, +)
        let done =
            othersSettled == others && remindersDone + counts.remindersRunning == reminders
            && counts.monitorSawDeadLetters.count == 1 && duplicates == 1
        let status = """
            jobs settled \(othersSettled)/\(others) (\(counts.deadLetteredIDs.count) dead-lettered), \
            reminders \(remindersDone)/\(reminders) (+\(counts.remindersRunning) running), \
            dead letters seen by the monitor \(counts.monitorSawDeadLetters.count)/1, duplicates dropped \(duplicates)/1
            """
        return ExampleSupport.Progress(done: done, status: status)
    }
}

/// A dead-lettered job as the monitor reports it: the DLQ entry plus the job's name and key.
public struct DeadLetteredJob: Sendable, Hashable, CustomStringConvertible {
    public let entry: DeadLetterSummary
    /// The job name header (`jobs.charge-card`).
    public let jobName: String?
    /// The example's own key of the job (`charge-1`).
    public let jobKey: String?

    init(_ entry: DeadLetterEntry) {
        self.entry = DeadLetterSummary(entry)
        self.jobName = entry.envelope.original.headers[HeaderName.jobName]
        self.jobKey = (try? JobCoding.decoder().decode(KeyOnly.self, from: entry.envelope.original.payload))?.jobKey
    }

    private struct KeyOnly: Decodable { var jobKey: String }

    public var description: String {
        "\(jobName ?? "?") \(jobKey ?? entry.messageID) after \(entry.attempts) attempt(s), last error: \(entry.lastError)"
    }
}

/// Watches the queue's dead-letter count and lists new entries when it grows; runs until
/// graceful shutdown.
final class DeadLetterMonitor: Service, Sendable {
    let broker: any Broker
    let queue: String
    let state: JobsState
    let logger: Logger
    let interval: Duration

    init(broker: any Broker, queue: String, state: JobsState, logger: Logger, interval: Duration = .milliseconds(50)) {
        self.broker = broker
        self.queue = queue
        self.state = state
        self.logger = logger
        self.interval = interval
    }

    func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                await poll()
                try? await Task.sleep(for: interval)
            }
        }
    }

    private func poll() async {
        do {
            let stats = try await broker.stats(for: queue)
            let known = state.update { counts -> Int in
                counts.monitorPolls += 1
                return counts.monitorSawDeadLetters.count
            }
            guard stats.deadLettered > known else { return }
            let entries = try await broker.deadLetters(of: queue, limit: 100)
            let fresh = entries.dropFirst(known).map(DeadLetteredJob.init)
            for job in fresh {
                logger.warning("dead-letter monitor: \(deadLetterName(for: queue)) has \(job)")
            }
            state.update { counts in
                counts.monitorSawDeadLetters.append(contentsOf: fresh)
            }
        } catch {
            logger.debug("dead-letter monitor: \(error)")
        }
    }
}
