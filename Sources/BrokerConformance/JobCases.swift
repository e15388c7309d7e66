@_spi(BrokerBackend) import BrokerAPI
import Foundation

struct ConformanceEmail: Job {
    static let name = "conformance.email"
    var to: String
    var subject: String
    var sentAt: Date
}

struct ConformanceWork: Job {
    static let name = "conformance.work"
    var n: Int
    var sleepMillis: Int
}

struct ValidationFailed: NonRetryableError, CustomStringConvertible {
    var description: String { "invalid address" }
}

enum JobCases {
    static let all: [ConformanceCase] = [
        runsOnce, retriedThenDLQ, nonRetryable, delayedNotEarly, timeoutCancels, concurrencyHolds, gracefulShutdown,
        idempotency, runningDuplicate, poisonInput,
    ]

    /// Runs `worker` in the background until `condition` holds, then stops it and waits.
    /// `meanwhile` runs once the worker started, before the wait.
    static func run(
        _ worker: JobWorker,
        in c: ConformanceContext,
        until what: String,
        timeout: Duration = .seconds(20),
        meanwhile: @Sendable () async throws -> Void = {},
        _ condition: @escaping @Sendable () async throws -> Bool
    ) async throws {
        let task = Task { try await worker.run() }
        do {
            try await meanwhile()
            try await c.eventually(what, timeout: timeout, condition)
        } catch {
            worker.stop()
            _ = try? await task.value
            throw error
        }
        worker.stop()
        try await task.value
    }

    static let runsOnce = ConformanceCase("jobs.typedJob.runsOnceWithDecodedPayload", area: .jobs, requires: .queues) {
        c in
        let queue = c.name("jobs-once")
        let jobs = JobQueue(broker: c.broker, queue: queue)
        let sentAt = Date(timeIntervalSince1970: 1_700_000_000.5)
        let id = try await jobs.dispatch(ConformanceEmail(to: "ada@example.com", subject: "Hello ✉️", sentAt: sentAt))
        let runs = Collector<(ConformanceEmail, JobContext)>()
        let worker = JobWorker(broker: c.broker, queue: queue, options: .init(concurrency: 2))
        worker.register(ConformanceEmail.self) { job, context in runs.append((job, context)) }
        try await run(worker, in: c, until: "the job ran") { runs.count >= 1 }
        try await Task.sleep(for: .milliseconds(200))
        try c.expect(runs.count == 1, "job ran \(runs.count) times")
        let (job, context) = runs.values[0]
        try c.expect(job.to == "ada@example.com" && job.subject == "Hello ✉️", "decoded payload \(job)")
        try c.expect(abs(job.sentAt.timeIntervalSince(sentAt)) < 0.001, "date changed: \(job.sentAt)")
        try c.expect(
            context.jobID == id && context.attempt == 1 && context.name == ConformanceEmail.name,
            "context \(context)"
        )
    }

    static let retriedThenDLQ = ConformanceCase(
        "jobs.failingJob.retriedThenDeadLettered",
        area: .jobs,
        requires: .queues
    ) { c in
        let queue = c.name("jobs-retry")
        let jobs = JobQueue(broker: c.broker, queue: queue)
        try await jobs.dispatch(ConformanceWork(n: 1, sleepMillis: 0))
        let attempts = Collector<Int>()
        let deadLettered = Collector<JobEvent>()
        let worker = JobWorker(
            broker: c.broker,
            queue: queue,
            options: .init(concurrency: 1),
            hooks: JobHooks(onDeadLettered: { deadLettered.append($0) })
        )
        worker.register(
            ConformanceWork.self,
            options: JobOptions(retryPolicy: RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(50))))
        ) { _, context in
            attempts.append(context.attempt)
            struct SMTPDown: Error, CustomStringConvertible { var description: String { "smtp 421 try later" } }
            throw SMTPDown()
        }
        try await run(worker, in: c, until: "the job was dead-lettered") { deadLettered.count >= 1 }
        try c.expect(attempts.values == [1, 2, 3], "attempts \(attempts.values), expected [1, 2, 3]")
        let entries = try await c.broker.deadLetters(of: queue, limit: 10)
        try c.expect(entries.count == 1, "DLQ has \(entries.count) entries")
        try c.expect(
            entries.first?.envelope.lastError.contains("smtp 421 try later") == true,
            "DLQ error text '\(entries.first?.envelope.lastError ?? "")'"
        )
        try c.expect(
            entries.first?.envelope.attempts == 3,
            "DLQ attempts \(String(describing: entries.first?.envelope.attempts))"
        )
        try c.expect(
            entries.first?.envelope.original.headers[HeaderName.jobName] == ConformanceWork.name,
            "DLQ entry lost the job name"
        )
    }

    static let nonRetryable = ConformanceCase(
        "jobs.nonRetryableError.deadLettersAtOnce",
        area: .jobs,
        requires: .queues
    ) { c in
        let queue = c.name("jobs-nonretry")
        try await JobQueue(broker: c.broker, queue: queue).dispatch(
            ConformanceEmail(to: "not-an-address", subject: "x", sentAt: Date())
        )
        let attempts = Collector<Int>()
        let worker = JobWorker(
            broker: c.broker,
            queue: queue,
            options: .init(retryPolicy: RetryPolicy(maxAttempts: 5, backoff: .fixed(.milliseconds(20))))
        )
        worker.register(ConformanceEmail.self) { _, context in
            attempts.append(context.attempt)
            throw ValidationFailed()
        }
        try await run(worker, in: c, until: "the DLQ entry") {
            try await c.broker.deadLetters(of: queue, limit: 5).count == 1
        }
        try c.expect(attempts.values == [1], "a non-retryable error was retried: attempts \(attempts.values)")
        let entry = try await c.broker.deadLetters(of: queue, limit: 5)[0]
        try c.expect(entry.envelope.lastError.contains("invalid address"), "DLQ error '\(entry.envelope.lastError)'")
    }

    static let delayedNotEarly = ConformanceCase(
        "jobs.delayedJob.doesNotRunEarly",
        area: .jobs,
        requires: [.queues, .delayedDelivery]
    ) { c in
        let queue = c.name("jobs-delay")
        let jobs = JobQueue(broker: c.broker, queue: queue)
        let ranAt = Collector<(Int, Date)>()
        let worker = JobWorker(broker: c.broker, queue: queue)
        worker.register(ConformanceWork.self) { job, _ in ranAt.append((job.n, Date())) }
        let due1 = Date().addingTimeInterval(0.8)
        try await jobs.dispatch(ConformanceWork(n: 1, sleepMillis: 0), after: .milliseconds(800))
        let due2 = Date().addingTimeInterval(0.4)
        try await jobs.dispatch(ConformanceWork(n: 2, sleepMillis: 0), at: due2)
        try await jobs.dispatch(ConformanceWork(n: 3, sleepMillis: 0))
        try await run(worker, in: c, until: "all three jobs ran") { ranAt.count >= 3 }
        let times = Dictionary(uniqueKeysWithValues: ranAt.values)
        try c.expect(
            times[1]! >= due1.addingTimeInterval(-0.02),
            "job due in 800 ms ran \(due1.timeIntervalSince(times[1]!)) s early"
        )
        try c.expect(
            times[2]! >= due2.addingTimeInterval(-0.02),
            "job due in 400 ms ran \(due2.timeIntervalSince(times[2]!)) s early"
        )
        try c.expect(times[3] != nil, "the immediate job did not run")
    }

    static let timeoutCancels = ConformanceCase(
        "jobs.timeout.cancelsHandlerAndCountsAsFailure",
        area: .jobs,
        requires: .queues
    ) { c in
        let queue = c.name("jobs-timeout")
        try await JobQueue(broker: c.broker, queue: queue).dispatch(ConformanceWork(n: 1, sleepMillis: 10_000))
        let cancelled = Collector<Bool>()
        let worker = JobWorker(broker: c.broker, queue: queue, options: .init(retryPolicy: .noRetry))
        worker.register(ConformanceWork.self, options: JobOptions(timeout: .milliseconds(200))) { job, _ in
            do { try await Task.sleep(for: .milliseconds(job.sleepMillis)) } catch {
                cancelled.append(true)
                throw error
            }
        }
        let started = ContinuousClock.now
        try await run(worker, in: c, until: "the timed-out job in the DLQ") {
            try await c.broker.deadLetters(of: queue, limit: 5).count == 1
        }
        try c.expect(ContinuousClock.now - started < .seconds(8), "the timeout did not cut the 10 s job short")
        try c.expect(cancelled.count == 1, "the handler was not cancelled")
        let entry = try await c.broker.deadLetters(of: queue, limit: 5)[0]
        try c.expect(
            entry.envelope.lastError.contains("timeout"),
            "DLQ error '\(entry.envelope.lastError)' does not mention the timeout"
        )
    }

    static let concurrencyHolds = ConformanceCase("jobs.concurrency.holdsAtN", area: .jobs, requires: .queues) { c in
        let queue = c.name("jobs-conc")
        let jobs = JobQueue(broker: c.broker, queue: queue)
        try await jobs.dispatch(batch: (0..<12).map { ConformanceWork(n: $0, sleepMillis: 120) })
        let gauge = ConcurrencyGauge()
        let done = Collector<Int>()
        let worker = JobWorker(broker: c.broker, queue: queue, options: .init(concurrency: 3))
        worker.register(ConformanceWork.self) { job, _ in
            _ = gauge.enter()
            try await Task.sleep(for: .milliseconds(job.sleepMillis))
            gauge.leave()
            done.append(job.n)
        }
        try await run(worker, in: c, until: "12 jobs done") { done.count >= 12 }
        try c.expect(gauge.maximum == 3, "max concurrent jobs \(gauge.maximum), expected exactly 3")
    }

    static let gracefulShutdown = ConformanceCase(
        "jobs.gracefulShutdown.finishesInFlightLeavesRestQueued",
        area: .jobs,
        requires: .queues
    ) { c in
        let queue = c.name("jobs-drain")
        let jobs = JobQueue(broker: c.broker, queue: queue)
        try await jobs.dispatch(batch: (0..<6).map { ConformanceWork(n: $0, sleepMillis: 400) })
        let started = Collector<Int>()
        let finished = Collector<Int>()
        // In-flight jobs cannot finish before stop() is requested, however late this task
        // gets to run: a third start can only come from a worker that ignores the stop.
        let stopRequested = Latch()
        let worker = JobWorker(
            broker: c.broker,
            queue: queue,
            options: .init(concurrency: 2, shutdownTimeout: .seconds(10))
        )
        worker.register(ConformanceWork.self) { job, _ in
            started.append(job.n)
            try await stopRequested.wait()
            try await Task.sleep(for: .milliseconds(job.sleepMillis))
            finished.append(job.n)
        }
        let task = Task { try await worker.run() }
        try await c.eventually("two jobs started") { started.count >= 2 }
        worker.stop()
        stopRequested.open()
        try await task.value
        try c.expect(
            started.count == 2,
            "\(started.count) jobs started (\(started.values)); expected only the 2 in flight"
        )
        try c.expect(
            Set(finished.values) == Set(started.values),
            "in-flight jobs \(started.values) did not all finish: \(finished.values)"
        )
        // The 4 unstarted jobs are still queued: a new worker runs exactly them, each at attempt 1.
        let later = Collector<(Int, Int)>()
        let second = JobWorker(broker: c.broker, queue: queue, options: .init(concurrency: 4))
        second.register(ConformanceWork.self) { job, context in later.append((job.n, context.attempt)) }
        try await run(second, in: c, until: "the 4 remaining jobs") { later.count >= 4 }
        try await Task.sleep(for: .milliseconds(200))
        try c.expect(later.count == 4, "second worker ran \(later.count) jobs")
        try c.expect(Set(later.values.map(\.0)).isDisjoint(with: Set(finished.values)), "finished jobs ran again")
        try c.expect(
            later.values.allSatisfy { $0.1 == 1 },
            "unstarted jobs had attempts counted: \(later.values.map(\.1))"
        )
    }

    static let idempotency = ConformanceCase("jobs.idempotencyKey.dropsDuplicates", area: .jobs, requires: .queues) {
        c in
        let queue = c.name("jobs-idem")
        let jobs = JobQueue(broker: c.broker, queue: queue)
        for _ in 0..<3 { try await jobs.dispatch(ConformanceWork(n: 42, sleepMillis: 0), idempotencyKey: "charge-42") }
        try await jobs.dispatch(ConformanceWork(n: 7, sleepMillis: 0), idempotencyKey: "charge-7")
        let runs = Collector<Int>()
        let duplicates = Collector<String>()
        let worker = JobWorker(
            broker: c.broker,
            queue: queue,
            hooks: JobHooks(onDuplicate: { duplicates.append($0.jobID) })
        )
        worker.register(ConformanceWork.self) { job, _ in runs.append(job.n) }
        try await run(worker, in: c, until: "2 runs and 2 duplicates dropped") {
            runs.count >= 2 && duplicates.count >= 2
        }
        try c.expect(runs.values.sorted() == [7, 42], "runs \(runs.values.sorted()), expected [7, 42]")
    }

    /// A job whose idempotency key is held by a run that has not finished is postponed, not
    /// dropped: that run may still fail (acking the redelivery as a duplicate would lose the job
    /// for good when the first run fails).
    static let runningDuplicate = ConformanceCase(
        "jobs.idempotencyKeyStillRunning.postponedNotDropped",
        area: .jobs,
        requires: .queues
    ) { c in
        let queue = c.name("jobs-running-dup")
        let store = InMemoryIdempotencyStore()
        // Another run (another worker, or this job's first delivery) holds the key.
        try c.expect(try await store.claim("order-9") == .claimed, "fresh key not claimed")
        try await JobQueue(broker: c.broker, queue: queue).dispatch(
            ConformanceWork(n: 9, sleepMillis: 0),
            idempotencyKey: "order-9"
        )
        let runs = Collector<Int>()
        let duplicates = Collector<String>()
        let worker = JobWorker(
            broker: c.broker,
            queue: queue,
            options: .init(concurrency: 1, idempotencyStore: store, runningDuplicateDelay: .milliseconds(300)),
            hooks: JobHooks(onDuplicate: { duplicates.append($0.jobID) })
        )
        worker.register(ConformanceWork.self) { job, _ in runs.append(job.n) }
        let whileHeld = Collector<(runs: Int, dropped: Int)>()
        try await run(
            worker,
            in: c,
            until: "the postponed job ran after the key was freed",
            meanwhile: {
                // While the other run holds the key, the job must neither run nor be dropped.
                try await Task.sleep(for: .milliseconds(800))
                whileHeld.append((runs.count, duplicates.count))
                // The other run fails: its key is free, and this job must now run.
                await store.abandon("order-9")
            }
        ) { runs.count >= 1 }
        try c.expect(whileHeld.values.first?.runs == 0, "the job ran while its key was held")
        try c.expect(
            whileHeld.values.first?.dropped == 0 && duplicates.count == 0,
            "the job was dropped as a duplicate while its key was only running"
        )
        try c.expect(runs.values == [9], "runs \(runs.values)")
        let dead = try await c.broker.deadLetters(of: queue, limit: 10)
        try c.expect(dead.isEmpty, "postponing dead-lettered it: \(dead.map(\.envelope.lastError))")
    }

    static let poisonInput = ConformanceCase(
        "jobs.poisonInput.deadLetteredQueueKeepsFlowing",
        area: .jobs,
        requires: .queues
    ) { c in
        let queue = c.name("jobs-poison")
        try await c.broker.createQueue(queue)
        try await c.broker.publish(
            Message(payload: Data("{not json".utf8), headers: [HeaderName.jobName: ConformanceWork.name]),
            to: queue
        )
        try await c.broker.publish(
            Message(payload: Data("{}".utf8), headers: [HeaderName.jobName: "no.such.job"]),
            to: queue
        )
        try await c.broker.publish(Message(text: "no job header"), to: queue)
        try await JobQueue(broker: c.broker, queue: queue).dispatch(ConformanceWork(n: 1, sleepMillis: 0))
        let runs = Collector<Int>()
        let worker = JobWorker(broker: c.broker, queue: queue, options: .init(concurrency: 1))
        worker.register(ConformanceWork.self) { job, _ in runs.append(job.n) }
        try await run(worker, in: c, until: "the good job ran and 3 poison messages were dead-lettered") {
            let dead = try await c.broker.deadLetters(of: queue, limit: 10).count
            return runs.count == 1 && dead == 3
        }
        let reasons = try await c.broker.deadLetters(of: queue, limit: 10).map(\.envelope.lastError)
        try c.expect(reasons.contains { $0.contains("cannot decode") }, "no decode reason in \(reasons)")
        try c.expect(
            reasons.contains { $0.contains("unknown job name 'no.such.job'") },
            "no unknown-job reason in \(reasons)"
        )
        try c.expect(reasons.contains { $0.contains("not a job") }, "no not-a-job reason in \(reasons)")
        let attempts = try await c.broker.deadLetters(of: queue, limit: 10).map(\.envelope.attempts)
        try c.expect(attempts.allSatisfy { $0 == 1 }, "poison input was retried: attempts \(attempts)")
    }
}
