@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

extension JobsExample {
    /// A worker process as it runs in production: dispatches `jobs` thumbnail jobs (each
    /// taking `jobDuration`) to a queue of its own, then runs a ``JobWorker`` in a
    /// `ServiceGroup` with `gracefulShutdownSignals` SIGTERM and SIGINT, until one of them
    /// arrives (it keeps waiting for more jobs once the queue is empty). On the signal the
    /// worker stops fetching, lets its running jobs finish (at most 30 s) and returns; jobs not
    /// started stay on the queue for the next worker. Returns what was done.
    ///
    /// The process ignores SIGTERM and SIGINT from then on (the service group traps them);
    /// `brokerkit demo --example jobs --wait-for-signal` runs this.
    public static func runWorkerUntilSignal(
        broker: any Broker,
        logger: Logger,
        jobs: Int = 40,
        jobDuration: Duration = .milliseconds(250),
        concurrency: Int = 2,
        keepQueue: Bool = false
    ) async throws -> JobsSignalReport {
        guard jobs >= 1 else { throw ExampleError.invalidArgument("jobs must be at least 1, got \(jobs)") }
        guard concurrency >= 1 else {
            throw ExampleError.invalidArgument("concurrency must be at least 1, got \(concurrency)")
        }
        try broker.require([.queues], for: "the jobs worker")
        let started = ContinuousClock.now
        let (_, queue, logger) = try await prepareRun(broker: broker, logger: logger)
        let milliseconds = Int(jobDuration.timeInterval * 1000)
        let images = (1...jobs).map { number in
            ResizeImage(
                jobKey: "image-\(number)",
                path: "uploads/photo-\(number).jpg",
                width: 640,
                renderMilliseconds: milliseconds
            )
        }
        try await JobQueue(broker: broker, queue: queue).dispatch(batch: images)

        let state = JobsState(JobsCounts())
        let worker = JobWorker(
            broker: broker,
            queue: queue,
            options: JobWorker.Options(
                concurrency: concurrency,
                retryPolicy: retryPolicy,
                shutdownTimeout: .seconds(30)
            ),
            logger: logger
        )
        worker.register(ResizeImage.self) { image, context in
            try await track(image, context, worker: "signal", state: state) {
                try await Task.sleep(for: .milliseconds(image.renderMilliseconds))
            }
            let done = state.update { $0.completed }
            context.logger.info("completed \(ResizeImage.name) \(image.jobKey) (\(done) of \(jobs))")
            if done == jobs { context.logger.info("queue drained; waiting for more jobs until SIGTERM") }
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: SignalledWorker(worker, state: state, logger: logger), serviceName: "jobs-worker")
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        logger.info(
            "worker running on \(queue) with \(jobs) jobs, pid \(ProcessInfo.processInfo.processIdentifier): send SIGTERM (kill -TERM) or SIGINT to stop it gracefully"
        )
        try await group.run()

        let counts = state.snapshot
        let stats = try? await broker.stats(for: queue)
        if !keepQueue {
            do { try await broker.deleteDestination(queue) } catch {
                logger.warning("could not delete \(queue): \(error)")
            }
        }
        return JobsSignalReport(
            backend: broker.backendName,
            queue: queue,
            dispatched: jobs,
            completed: counts.completed,
            stoppedBySignal: counts.signalled,
            completedBeforeSignal: counts.completedAtSignal,
            runningAtSignal: counts.runningAtShutdown,
            cutOff: counts.running,
            runTwice: counts.runTwice,
            notStarted: jobs - counts.completed - counts.running,
            queueKept: keepQueue,
            stats: stats,
            elapsed: ContinuousClock.now - started
        )
    }
}

/// A ``JobWorker`` that records the moment graceful shutdown begins.
final class SignalledWorker: Service, Sendable {
    let worker: JobWorker
    let state: JobsState
    let logger: Logger

    init(_ worker: JobWorker, state: JobsState, logger: Logger) {
        self.worker = worker
        self.state = state
        self.logger = logger
    }

    func run() async throws {
        let (state, logger) = (self.state, self.logger)
        try await withGracefulShutdownHandler {
            try await worker.run()
        } onGracefulShutdown: {
            let running = state.update { counts -> Int in
                counts.signalled = true
                counts.runningAtShutdown = counts.running
                counts.completedAtSignal = counts.completed
                return counts.running
            }
            logger.notice("graceful shutdown: fetching no more jobs, draining \(running) running job(s)")
        }
    }
}

/// What ``JobsExample/runWorkerUntilSignal(broker:logger:jobs:jobDuration:concurrency:keepQueue:)`` did.
public struct JobsSignalReport: Sendable, CustomStringConvertible {
    public let backend: String
    /// The worker's queue.
    public let queue: String
    /// Jobs dispatched before the worker started.
    public let dispatched: Int
    /// Jobs completed, before and after the signal.
    public let completed: Int
    /// Whether a graceful shutdown (the signal) stopped the worker.
    public let stoppedBySignal: Bool
    /// Jobs completed when the signal arrived.
    public let completedBeforeSignal: Int
    /// Jobs running when the signal arrived: each was allowed to finish.
    public let runningAtSignal: Int
    /// Jobs still running when the worker returned (0 when every running job was drained).
    public let cutOff: Int
    /// Jobs that completed twice (empty).
    public let runTwice: [String]
    /// Jobs never started: they stay on the queue for the next worker (when it is kept).
    public let notStarted: Int
    /// Whether the queue was left on the broker (else it was deleted at the end).
    public let queueKept: Bool
    /// `stats(for:)` of the queue after the worker stopped, if it could be read.
    public let stats: DestinationStats?
    /// Wall-clock time of the run.
    public let elapsed: Duration

    /// Jobs that were running at the signal and completed after it.
    public var drained: Int { completed - completedBeforeSignal }

    public var description: String {
        var lines = [
            "Jobs worker on \(backend), queue \(queue), ran \(ExampleSupport.seconds(elapsed))",
            "  \(dispatched) jobs dispatched, \(completed) completed, \(runTwice.count) run twice",
        ]
        if stoppedBySignal {
            lines.append(
                "  stopped gracefully on signal: \(completedBeforeSignal) done before it, \(runningAtSignal) running, \(drained) drained after it, \(cutOff) cut off"
            )
        } else {
            lines.append("  stopped without a signal")
        }
        let depth = stats.map { " (queue depth \($0.depth), in flight \($0.inFlight))" } ?? ""
        lines.append(
            queueKept
                ? "  \(notStarted) job(s) not started, left on the queue for the next worker\(depth)"
                : "  \(notStarted) job(s) not started; the queue was deleted\(depth)"
        )
        return lines.joined(separator: "\n")
    }
}
