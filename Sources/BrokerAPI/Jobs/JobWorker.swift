import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// A worker pool that runs registered jobs from a queue: concurrency N, retry with backoff,
/// max attempts, DLQ, per-job timeout, idempotency keys and graceful shutdown. It is a
/// swift-service-lifecycle `Service`: on graceful shutdown (SIGTERM in a `ServiceGroup`) it
/// stops fetching, lets running jobs finish within `shutdownTimeout`, and leaves unstarted
/// jobs on the queue.
///
/// ```swift
/// let worker = JobWorker(broker: broker, queue: "jobs", options: .init(concurrency: 4))
/// worker.register(SendEmail.self, options: .init(retryPolicy: .init(maxAttempts: 3))) { job, context in
///     try await mailer.send(job)
/// }
/// try await ServiceGroup(services: [worker], gracefulShutdownSignals: [.sigterm], logger: logger).run()
/// ```
public final class JobWorker: Service, Sendable {
    public struct Options: Sendable {
        /// Jobs running at once.
        public var concurrency: Int
        /// Default retry policy for job types without their own.
        public var retryPolicy: RetryPolicy
        /// Default per-job timeout.
        public var jobTimeout: Duration?
        /// How long graceful shutdown waits for running jobs.
        public var shutdownTimeout: Duration
        /// Stop after this many jobs were handled (completed, failed or dead-lettered).
        public var maxJobs: Int?
        /// Where idempotency keys are remembered.
        public var idempotencyStore: any IdempotencyStore
        /// Lease before another worker may take over an unacknowledged job. Leases are renewed
        /// while the worker lives (Redis, memory), so this bounds how long a dead worker's
        /// jobs wait, not how long a job may run.
        public var visibilityTimeout: Duration
        /// How long a job waits before it is tried again when its idempotency key is held by
        /// a run that has not finished (a redelivery of a running job, or a second job with
        /// the same key): it is postponed, not dropped, since that run may still fail.
        public var runningDuplicateDelay: Duration

        public init(
            concurrency: Int = 4,
            retryPolicy: RetryPolicy = .default,
            jobTimeout: Duration? = nil,
            shutdownTimeout: Duration = .seconds(30),
            maxJobs: Int? = nil,
            idempotencyStore: any IdempotencyStore = InMemoryIdempotencyStore(),
            visibilityTimeout: Duration = .seconds(30),
            runningDuplicateDelay: Duration = .seconds(5)
        ) {
            self.concurrency = max(1, concurrency)
            self.retryPolicy = retryPolicy
            self.jobTimeout = jobTimeout
            self.shutdownTimeout = shutdownTimeout
            self.maxJobs = maxJobs
            self.idempotencyStore = idempotencyStore
            self.visibilityTimeout = visibilityTimeout
            self.runningDuplicateDelay = runningDuplicateDelay
        }
    }

    struct Registration: Sendable {
        let options: JobOptions
        let run: @Sendable (Data, JobContext) async throws -> Void
    }

    public let broker: any Broker
    public let queue: String
    public let options: Options
    public let hooks: JobHooks
    let logger: Logger
    private let registrations = Mutex<[String: Registration]>([:])
    private let processor = Mutex<DeliveryProcessor?>(nil)
    private let stopRequested = Atomic<Bool>(false)
    private let handled = Atomic<Int>(0)

    public init(
        broker: any Broker,
        queue: String = "jobs",
        options: Options = Options(),
        hooks: JobHooks = JobHooks(),
        logger: Logger = Logger(label: "brokerkit.jobs")
    ) {
        self.broker = broker
        self.queue = queue
        self.options = options
        self.hooks = hooks
        var logger = logger
        logger[metadataKey: "queue"] = "\(queue)"
        self.logger = logger
    }

    /// Registers the handler for job type `J`.
    public func register<J: Job>(
        _ type: J.Type,
        options: JobOptions = JobOptions(),
        handler: @escaping @Sendable (J, JobContext) async throws -> Void
    ) {
        let registration = Registration(options: options) { data, context in
            let decoder = JobCoding.decoder()
            let job: J
            do { job = try decoder.decode(J.self, from: data) } catch {
                throw UndecodableJob(reason: "cannot decode payload of job '\(J.name)' (\(context.jobID)): \(error)")
            }
            try await handler(job, context)
        }
        registrations.withLock { $0[J.name] = registration }
    }

    /// Registered job names.
    public var registeredJobs: [String] { registrations.withLock { $0.keys.sorted() } }

    /// Jobs handled so far (completed, failed or dead-lettered, duplicates dropped).
    public var handledCount: Int { handled.load(ordering: .relaxed) }

    /// Runs until graceful shutdown, ``stop()``, cancellation, or `maxJobs`.
    public func run() async throws {
        let consumer = try await broker.consumeQueue(
            queue,
            options: QueueConsumerOptions(
                prefetch: options.concurrency,
                retryPolicy: options.retryPolicy,
                visibilityTimeout: options.visibilityTimeout
            )
        )
        let processor = DeliveryProcessor(
            consumer: consumer,
            options: .init(
                concurrency: options.concurrency,
                orderedByKey: false,
                shutdownTimeout: options.shutdownTimeout
            ),
            logger: logger
        ) { [self] delivery in
            try await self.handle(delivery)
        }
        self.processor.withLock { $0 = processor }
        if stopRequested.load(ordering: .acquiring) { processor.stop() }
        try await withGracefulShutdownHandler {
            try await processor.run()
        } onGracefulShutdown: {
            processor.stop()
        }
    }

    /// Stops fetching and drains, as on graceful shutdown.
    public func stop() {
        stopRequested.store(true, ordering: .releasing)
        processor.withLock { $0 }?.stop()
    }

    private func countHandled() {
        let count = handled.wrappingAdd(1, ordering: .relaxed).newValue
        if let maxJobs = options.maxJobs, count >= maxJobs { stop() }
    }

    private func handle(_ delivery: Delivery) async throws {
        let message = delivery.message
        let name = message.headers[HeaderName.jobName]
        func event(_ error: String?, retryAfter: Duration? = nil) -> JobEvent {
            JobEvent(
                jobID: message.id,
                name: name ?? "?",
                attempt: delivery.attempt,
                queue: queue,
                error: error,
                retryAfter: retryAfter
            )
        }
        guard let name else {
            try await delivery.deadLetter(
                reason: "message '\(message.id)' has no \(HeaderName.jobName) header: not a job"
            )
            await hooks.onDeadLettered?(event("not a job"))
            countHandled()
            return
        }
        guard let registration = registrations.withLock({ $0[name] }) else {
            let reason = "unknown job name '\(name)'; registered: \(registeredJobs.joined(separator: ", "))"
            logger.error("\(reason)")
            try await delivery.deadLetter(reason: reason)
            await hooks.onDeadLettered?(event(reason))
            countHandled()
            return
        }
        let idempotencyKey = message.headers[HeaderName.idempotencyKey]
        if let idempotencyKey {
            switch try await options.idempotencyStore.claim(idempotencyKey) {
            case .claimed:
                break
            case .completed:
                logger.info("dropping duplicate job \(name) with idempotency key \(idempotencyKey)")
                try await delivery.ack()
                await hooks.onDuplicate?(event(nil))
                countHandled()
                return
            case .running:
                // Acking it would lose the job if the running one then fails.
                logger.info(
                    "job \(name) with idempotency key \(idempotencyKey) is still running elsewhere; postponed by \(options.runningDuplicateDelay)"
                )
                try await delivery.postpone(
                    by: options.runningDuplicateDelay,
                    reason: "idempotency key '\(idempotencyKey)' held by a running job"
                )
                return
            }
        }
        var jobLogger = logger
        jobLogger[metadataKey: "job"] = "\(name)"
        jobLogger[metadataKey: "job_id"] = "\(message.id)"
        jobLogger[metadataKey: "attempt"] = "\(delivery.attempt)"
        let context = JobContext(
            jobID: message.id,
            name: name,
            attempt: delivery.attempt,
            queue: queue,
            idempotencyKey: idempotencyKey,
            dispatchedAt: message.timestamp,
            logger: jobLogger
        )
        let policyDelivery = delivery.withRetryPolicy(registration.options.retryPolicy ?? options.retryPolicy)
        do {
            let payload = message.payload
            if let timeout = registration.options.timeout ?? options.jobTimeout {
                try await withBrokerTimeout(
                    timeout,
                    what: "job '\(name)' (\(message.id))",
                    backend: broker.backendName,
                    destination: queue
                ) {
                    try await registration.run(payload, context)
                }
            } else {
                try await registration.run(payload, context)
            }
        } catch let error as UndecodableJob {
            // Poison input: straight to the DLQ, never retried, the queue keeps flowing.
            if let idempotencyKey { try? await options.idempotencyStore.abandon(idempotencyKey) }
            jobLogger.error("\(error.reason)")
            try await delivery.deadLetter(reason: error.reason)
            await hooks.onDeadLettered?(event(error.reason))
            countHandled()
            return
        } catch {
            if let idempotencyKey { try? await options.idempotencyStore.abandon(idempotencyKey) }
            if error is CancellationError, stopRequested.load(ordering: .acquiring) {
                throw error  // shutdown cut it off: the processor releases it for redelivery
            }
            let text = String(describing: error)
            jobLogger.warning("job failed: \(text)")
            switch try await policyDelivery.nack(error: error) {
            case .retried(let after, _):
                await hooks.onFailed?(event(text, retryAfter: after))
            case .deadLettered:
                await hooks.onFailed?(event(text))
                await hooks.onDeadLettered?(event(text))
            }
            countHandled()
            return
        }
        // The job ran: its key is complete even if the ack then fails (the redelivery that
        // follows is dropped as a duplicate instead of finding the key running forever).
        if let idempotencyKey { try? await options.idempotencyStore.complete(idempotencyKey) }
        try await delivery.ack()
        await hooks.onCompleted?(event(nil))
        countHandled()
    }
}

struct UndecodableJob: Error {
    let reason: String
}
