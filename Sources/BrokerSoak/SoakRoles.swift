@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// A publisher of a soak run: its share of the messages to the queue and to the stream, at its
/// share of the rate, and (publisher 0) the delayed jobs first.
///
/// Ledger: `try <dest> <seqs>` before each publish call, `ok <dest> <seqs>` once the broker
/// confirmed it, `err <dest> <seqs> <error>` when it failed (the call is retried with backoff
/// until it succeeds; a message may then be there twice). Jobs: `jobsbase <seconds>` (the time
/// every job's delay counts from), then `jobok <seq> <due ms>`.
public enum SoakPublisher {
    public static func run(
        broker: any Broker,
        plan: SoakPlan,
        index: Int,
        ledger: SoakLedgerWriter,
        previous: [SoakEvent] = [],
        logger: Logger = Logger(label: "brokerkit.soak.publisher")
    ) async throws {
        // A replacement publisher skips what an earlier incarnation had confirmed.
        var confirmed: [String: Set<Int>] = [:]
        var jobsConfirmed = Set<Int>()
        var jobsBase: Date?
        for event in previous {
            if event.name == "jobsbase", let seconds = event.fields.first.flatMap({ Double($0) }) {
                jobsBase = Date(timeIntervalSince1970: seconds)
            }
            if event.name == "ok", event.fields.count >= 2 {
                confirmed[event.fields[0], default: []].formUnion(SeqList.parse(event.fields[1]))
            }
            if event.name == "jobok", let seq = event.fields.first.flatMap({ Int($0) }) { jobsConfirmed.insert(seq) }
        }
        ledger.record("start", ["publisher", String(index)])
        if index == 0 {
            try await dispatchJobs(broker: broker, plan: plan, skip: jobsConfirmed, base: jobsBase, ledger: ledger)
        }
        let mine = plan.sequence(ofPublisher: index)
        let perSecond = Double(max(1, plan.rate)) / Double(max(1, plan.publishers))
        let started = ContinuousClock.now
        var sent = 0
        var batchNumber = 0
        for chunkStart in stride(from: 0, to: mine.count, by: max(1, plan.batch)) {
            let chunk = Array(mine[chunkStart..<min(mine.count, chunkStart + max(1, plan.batch))])
            batchNumber += 1
            let oneByOne = batchNumber % 5 == 0
            for (destination, label) in [(plan.queue, "queue"), (plan.stream, "stream")] {
                let todo = chunk.filter { !(confirmed[label]?.contains($0) ?? false) }
                if todo.isEmpty { continue }
                let messages = todo.map { Message(id: "m\($0)", key: plan.key(of: $0), payload: Data(String($0).utf8)) }
                try await publishWithRetry(label: label, seqs: todo, ledger: ledger, logger: logger) {
                    if oneByOne {
                        for message in messages { _ = try await broker.publish(message, to: destination) }
                    } else {
                        _ = try await broker.publish(messages, to: destination)
                    }
                }
            }
            sent += chunk.count
            // Steady rate: sleep until this many messages are due.
            let due = started + .milliseconds(Int64(Double(sent) / perSecond * 1000))
            if due > ContinuousClock.now { try await Task.sleep(until: due, clock: .continuous) }
        }
        ledger.record("done", ["publisher", String(index)])
    }

    /// Publishes with retries: a broker restart or a network cut fails calls for a while, and
    /// a real publisher tries again. Gives up after two minutes of failures in a row.
    static func publishWithRetry(
        label: String,
        seqs: [Int],
        ledger: SoakLedgerWriter,
        logger: Logger,
        _ body: () async throws -> Void
    ) async throws {
        let list = SeqList.format(seqs)
        var pause = Duration.milliseconds(100)
        let giveUp = ContinuousClock.now + .seconds(120)
        while true {
            ledger.record("try", [label, list])
            do {
                try await body()
                ledger.record("ok", [label, list])
                return
            } catch {
                ledger.record("err", [label, list, "\(error)"])
                if ContinuousClock.now > giveUp { throw error }
                logger.info("publish to \(label) failed, retrying in \(pause): \(error)")
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(1))
            }
        }
    }

    /// Dispatches the jobs not in `skip`, each due `plan.jobDelay(seq)` after `base`. A
    /// replacement publisher gets the first incarnation's `base`: a job that incarnation sent
    /// before it was killed (but did not record) is sent again with the same due time, so the
    /// copy that runs first is never "early" against the ledger.
    static func dispatchJobs(
        broker: any Broker,
        plan: SoakPlan,
        skip: Set<Int>,
        base given: Date?,
        ledger: SoakLedgerWriter
    ) async throws {
        let jobs = JobQueue(broker: broker, queue: plan.jobQueue)
        let base = given ?? Date()
        // Seconds since 1970 as Swift prints a Double: read back, it is the same Double, so every
        // incarnation computes the same due times.
        if given == nil { ledger.record("jobsbase", [String(base.timeIntervalSince1970)]) }
        let todo = (0..<plan.jobs).filter { !skip.contains($0) }
        for chunkStart in stride(from: 0, to: todo.count, by: 50) {
            let chunk = Array(todo[chunkStart..<min(todo.count, chunkStart + 50)])
            try await withThrowingTaskGroup(of: Void.self) { group in
                for seq in chunk {
                    let due = base.addingTimeInterval(plan.jobDelay(seq).timeInterval)
                    let job = SoakJob(seq: seq, dueMillis: Int64((due.timeIntervalSince1970 * 1000).rounded(.down)))
                    group.addTask {
                        try await publishWithRetry(
                            label: "jobs",
                            seqs: [seq],
                            ledger: ledger,
                            logger: Logger(label: "brokerkit.soak.publisher")
                        ) {
                            _ = try await jobs.dispatch(job, at: due)
                        }
                        ledger.record("jobok", [String(seq), String(job.dueMillis)])
                    }
                }
                try await group.waitForAll()
            }
        }
    }
}

/// A worker of a soak run: the queue, both stream groups and the job queue, each through its
/// own `DeliveryProcessor` (the jobs through `JobWorker`), until ``stop()``.
///
/// Ledger, written before the handler returns (so before the ack): `run <consumer> <seq>
/// <attempt> ok|poison|fail`, and `job <seq> <due ms> <attempt>` for a job that ran.
public final class SoakWorker: Sendable {
    let broker: any Broker
    let plan: SoakPlan
    let ledger: SoakLedgerWriter
    let logger: Logger
    private let processors = Mutex<[DeliveryProcessor]>([])
    private let jobWorker = Mutex<JobWorker?>(nil)
    private let stopped = Atomic<Bool>(false)

    public init(
        broker: any Broker,
        plan: SoakPlan,
        ledger: SoakLedgerWriter,
        logger: Logger = Logger(label: "brokerkit.soak.worker")
    ) {
        self.broker = broker
        self.plan = plan
        self.ledger = ledger
        self.logger = logger
    }

    /// Drains and returns (graceful stop, as on SIGTERM).
    public func stop() {
        stopped.store(true, ordering: .releasing)
        for processor in processors.withLock({ $0 }) { processor.stop() }
        jobWorker.withLock { $0 }?.stop()
    }

    public func run() async throws {
        let plan = plan
        let ledger = ledger
        let visibility = Duration.milliseconds(Int64(plan.visibilityTimeoutMillis))
        var runs: [(DeliveryProcessor, any MessageConsumer)] = []
        let queueConsumer = try await broker.consumeQueue(
            plan.queue,
            options: QueueConsumerOptions(prefetch: 16, retryPolicy: plan.retryPolicy, visibilityTimeout: visibility)
        )
        runs.append(
            (
                Self.processor(
                    consumer: queueConsumer,
                    label: "queue",
                    ordered: false,
                    plan: plan,
                    ledger: ledger,
                    logger: logger
                ), queueConsumer
            )
        )
        for group in SoakPlan.groups {
            let consumer = try await broker.consumeStream(
                plan.stream,
                group: group,
                options: StreamConsumerOptions(start: .earliest, prefetch: 64, retryPolicy: plan.retryPolicy)
            )
            runs.append(
                (
                    Self.processor(
                        consumer: consumer,
                        label: group,
                        ordered: true,
                        plan: plan,
                        ledger: ledger,
                        logger: logger
                    ), consumer
                )
            )
        }
        processors.withLock { $0 = runs.map(\.0) }
        let worker = JobWorker(
            broker: broker,
            queue: plan.jobQueue,
            options: .init(
                concurrency: 4,
                retryPolicy: plan.retryPolicy,
                shutdownTimeout: .seconds(10),
                visibilityTimeout: visibility
            ),
            logger: logger
        )
        worker.register(SoakJob.self) { job, context in
            ledger.record("job", [String(job.seq), String(job.dueMillis), String(context.attempt)])
        }
        jobWorker.withLock { $0 = worker }
        if stopped.load(ordering: .acquiring) { stop() }
        ledger.record("start", ["worker"])
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (processor, _) in runs { group.addTask { try await processor.run() } }
                group.addTask { try await worker.run() }
                try await group.waitForAll()
            }
        } catch {
            // Cancelled (an in-process "kill"): the consumers close as a dead process's
            // connections would, without settling what they hold.
            for (_, consumer) in runs { await consumer.close() }
            throw error
        }
        for (_, consumer) in runs { await consumer.close() }
        ledger.record("stopped", ["worker"])
    }

    static func processor(
        consumer: any MessageConsumer,
        label: String,
        ordered: Bool,
        plan: SoakPlan,
        ledger: SoakLedgerWriter,
        logger: Logger
    ) -> DeliveryProcessor {
        DeliveryProcessor(
            consumer: consumer,
            options: .init(concurrency: plan.concurrency, orderedByKey: ordered, shutdownTimeout: .seconds(10)),
            logger: logger
        ) { delivery in
            guard let seq = delivery.message.text.flatMap({ Int($0) }) else {
                ledger.record("foreign", [label, delivery.message.id])
                throw NonRetryable(SoakError("not a soak message: payload is not a sequence number"))
            }
            let attempt = String(delivery.attempt)
            switch plan.kind(of: seq) {
            case .poison:
                ledger.record("run", [label, String(seq), attempt, "poison"])
                throw NonRetryable(SoakError("poison message \(seq)"))
            case .flaky where delivery.attempt < 3:
                ledger.record("run", [label, String(seq), attempt, "fail"])
                throw SoakError("flaky message \(seq) failed attempt \(delivery.attempt)")
            default:
                ledger.record("run", [label, String(seq), attempt, "ok"])
            }
        }
    }
}
