@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging

/// Runs ``CompareScenario``s on a broker and measures them.
///
/// Every scenario creates fresh destinations (deleted afterwards), attaches its consumers,
/// waits until each received a warm-up message (so group joins and connection set-up are not
/// timed; the time they took is reported as `readySeconds`), then times the work itself.
public struct CompareRunner: Sendable {
    public let settings: CompareSettings
    let logger: Logger
    let progress: @Sendable (String) -> Void

    public init(settings: CompareSettings, logger: Logger, progress: @escaping @Sendable (String) -> Void = { _ in }) {
        self.settings = settings
        self.logger = logger
        self.progress = progress
    }

    /// What a scenario body measured.
    struct Measured {
        var messages: Int
        var start: UInt64
        var end: UInt64
        var cpuSeconds: Double
        var latency: LatencyRecorder
        var latencyKind = "end-to-end"
        var readySeconds: Double?
        var observed: ObservedSemantics
    }

    /// Runs `scenario` on `broker`; a failure is reported in the result, never thrown.
    public func run(_ scenario: CompareScenario, on broker: any Broker) async -> ScenarioResult {
        let context = ScenarioContext(
            broker: broker,
            settings: settings,
            scenario: scenario,
            logger: logger,
            progress: progress
        )
        context.report("starting")
        let base = ObservedSemantics(
            nativeDLQ: broker.capabilities.contains(.nativeDLQ),
            nativeDelay: broker.capabilities.contains(.nativeDelay)
        )
        var result: ScenarioResult
        do {
            let measured: Measured
            switch scenario {
            case .workQueue: measured = try await workQueue(context, base)
            case .fanOut: measured = try await fanOut(context, base)
            case .replay: measured = try await replay(context, base)
            case .orderedPerKey: measured = try await orderedPerKey(context, base)
            case .lowTraffic: measured = try await lowTraffic(context, base)
            case .awaitedPublish: measured = try await awaitedPublish(context, base)
            case .delayedJobs: measured = try await delayedJobs(context, base)
            }
            let seconds = Monotonic.seconds(from: measured.start, to: measured.end)
            let latency = measured.latency.summary
            result = ScenarioResult(
                backend: broker.backendName,
                scenario: scenario,
                status: .ok,
                error: nil,
                messages: measured.messages,
                seconds: seconds,
                throughput: seconds > 0 ? Double(measured.messages) / seconds : 0,
                latencyKind: measured.latencyKind,
                latencyP50Ms: latency?.p50,
                latencyP99Ms: latency?.p99,
                latencyMaxMs: latency?.max,
                cpuSeconds: measured.cpuSeconds,
                readySeconds: measured.readySeconds,
                observed: measured.observed,
                roundThroughputs: nil
            )
            context.report(String(format: "done: %d in %.2f s", measured.messages, seconds))
        } catch {
            context.report("FAILED: \(error)")
            result = ScenarioResult(
                backend: broker.backendName,
                scenario: scenario,
                status: .failed,
                error: "\(error)",
                messages: 0,
                seconds: 0,
                throughput: 0,
                latencyKind: "end-to-end",
                latencyP50Ms: nil,
                latencyP99Ms: nil,
                latencyMaxMs: nil,
                cpuSeconds: 0,
                readySeconds: nil,
                observed: base,
                roundThroughputs: nil
            )
        }
        await context.cleanUp()
        return result
    }

    // MARK: 1. work queue with retries

    func workQueue(_ c: ScenarioContext, _ base: ObservedSemantics) async throws -> Measured {
        let count = settings.messages
        let queue = try await c.create("work", kind: .queue)
        let tally = ScenarioTally()
        let latency = LatencyRecorder()
        let policy = RetryPolicy(
            maxAttempts: 5,
            backoff: .exponential(initial: .milliseconds(20), max: .milliseconds(200), jitter: 0.2)
        )
        let attached = Monotonic.nanos()
        let consumer = try await c.broker.consumeQueue(
            queue,
            options: .init(prefetch: settings.handlers * 8, retryPolicy: policy)
        )
        let run = c.startProcessor(consumer, concurrency: settings.handlers, orderedByKey: false) { delivery in
            guard let index = ScenarioContext.index(of: delivery) else { return tally.markReady("queue") }
            if Self.failsTwice(index), delivery.attempt <= 2 {
                tally.update { $0.retried += 1 }
                throw InjectedFailure(index: index, attempt: delivery.attempt)
            }
            if let stamp = ScenarioContext.stamp(of: delivery) { latency.record(sinceStamp: stamp) }
            tally.handled(index)
        }
        try await c.publishWarmup(to: queue)
        try await c.waitUntil("waiting for the consumer") { tally.snapshot.ready.count == 1 }
        let ready = Monotonic.seconds(from: attached, to: tally.snapshot.readyAt)
        let cpu = ProcessCPU.seconds()
        let start = Monotonic.nanos()
        try await c.publishBatches(0..<count, to: queue) { i, stamp in
            c.message(i, key: "k\(i % settings.keys)", stamp: stamp)
        }
        try await c.waitUntil("\(tally.snapshot.handled) of \(count) handled, \(tally.snapshot.retried) retried") {
            tally.snapshot.handled >= count
        }
        let cpuSeconds = ProcessCPU.seconds() - cpu
        await c.stop([run])
        let state = tally.snapshot
        let expectedRetries = 2 * (0..<count).filter(Self.failsTwice).count
        guard state.retried == expectedRetries else {
            throw CompareFailure("expected \(expectedRetries) retried attempts, saw \(state.retried)")
        }
        var observed = base
        observed.retried = state.retried
        observed.duplicates = state.duplicates
        observed.deadLettered = try await c.broker.stats(for: queue).deadLettered
        return Measured(
            messages: count,
            start: start,
            end: state.lastHandledAt,
            cpuSeconds: cpuSeconds,
            latency: latency,
            readySeconds: ready,
            observed: observed
        )
    }

    /// Every 20th message (5 %) fails its first two attempts.
    static func failsTwice(_ index: Int) -> Bool { index % 20 == 7 }

    // MARK: 2. fan-out to consumer groups

    func fanOut(_ c: ScenarioContext, _ base: ObservedSemantics) async throws -> Measured {
        let count = settings.messages
        let stream = try await c.create("fanout", kind: .stream, partitions: settings.partitions)
        let tally = ScenarioTally()
        let latency = LatencyRecorder()
        let attached = Monotonic.nanos()
        var runs: [ProcessorRun] = []
        for g in 1...settings.groups {
            let group = "group\(g)"
            let consumer = try await c.broker.consumeStream(stream, group: group, options: .init(start: .earliest))
            runs.append(
                c.startProcessor(consumer, concurrency: settings.handlers, orderedByKey: true) { delivery in
                    guard let index = ScenarioContext.index(of: delivery) else { return tally.markReady(group) }
                    if let stamp = ScenarioContext.stamp(of: delivery) { latency.record(sinceStamp: stamp) }
                    tally.handled(index, group: group)
                }
            )
        }
        try await c.publishWarmup(to: stream)
        try await c.waitUntil("\(tally.snapshot.ready.count) of \(settings.groups) groups attached") {
            tally.snapshot.ready.count == settings.groups
        }
        let ready = Monotonic.seconds(from: attached, to: tally.snapshot.readyAt)
        let cpu = ProcessCPU.seconds()
        let start = Monotonic.nanos()
        try await c.publishBatches(0..<count, to: stream) { i, stamp in
            c.message(i, key: "k\(i % settings.keys)", stamp: stamp)
        }
        let total = count * settings.groups
        try await c.waitUntil("\(tally.snapshot.handled) of \(total) handled (\(tally.snapshot.byGroup))") {
            tally.snapshot.handled >= total
        }
        let cpuSeconds = ProcessCPU.seconds() - cpu
        await c.stop(runs)
        let state = tally.snapshot
        var observed = base
        observed.duplicates = state.duplicates
        return Measured(
            messages: total,
            start: start,
            end: state.lastHandledAt,
            cpuSeconds: cpuSeconds,
            latency: latency,
            readySeconds: ready,
            observed: observed
        )
    }

    // MARK: 3. replay

    func replay(_ c: ScenarioContext, _ base: ObservedSemantics) async throws -> Measured {
        let count = settings.messages
        let history = settings.historyMessages
        let stream = try await c.create("replay", kind: .stream, partitions: 1)
        c.report("publishing \(history) messages of history")
        try await c.publishBatches(0..<(history - count), to: stream) { i, stamp in c.message(i, key: "k", stamp: stamp)
        }
        // A gap around the cut, for brokers that can only seek by time.
        try await Task.sleep(for: .milliseconds(100))
        let cut = Date()
        try await Task.sleep(for: .milliseconds(100))
        let tail = try await c.publishBatches((history - count)..<history, to: stream) { i, stamp in
            c.message(i, key: "k", stamp: stamp)
        }
        let position = c.broker.capabilities.contains(.replay) ? tail.first?.position : nil
        let start: StartPosition = position.map { .position($0) } ?? .timestamp(cut)

        // Timed: a new group replays the last `count` messages.
        let latency = LatencyRecorder()
        let cpu = ProcessCPU.seconds()
        let begin = Monotonic.nanos()
        let replayer = try await c.broker.consumeStream(
            stream,
            group: "replayer",
            options: .init(start: start, prefetch: 256)
        )
        let indices = try await c.read(count, from: replayer, what: "replayed") { latency.record(sinceStamp: begin) }
        let end = Monotonic.nanos()
        let cpuSeconds = ProcessCPU.seconds() - cpu
        let extra = try await replayer.next(timeout: .milliseconds(300))
        await replayer.close()

        // Untimed: a group created now, from the earliest message, sees the whole history.
        c.report("a new group reads all \(history) from the start")
        let newcomer = try await c.broker.consumeStream(
            stream,
            group: "newcomer",
            options: .init(start: .earliest, prefetch: 256)
        )
        let seen = try await c.read(history, from: newcomer, what: "new group read")
        await newcomer.close()

        var observed = base
        observed.replayByPosition = position != nil
        observed.replayStart = position != nil ? "position" : "timestamp"
        observed.replayExact = indices == Array((history - count)..<history) && extra == nil
        observed.newGroupSeesOld = seen.first == 0
        return Measured(
            messages: count,
            start: begin,
            end: end,
            cpuSeconds: cpuSeconds,
            latency: latency,
            latencyKind: "first-message",
            readySeconds: nil,
            observed: observed
        )
    }

    // MARK: 4. ordered per key, concurrent handlers

    func orderedPerKey(_ c: ScenarioContext, _ base: ObservedSemantics) async throws -> Measured {
        let count = settings.messages
        let keys = settings.keys
        let work = settings.handlerWork
        let stream = try await c.create("ordered", kind: .stream, partitions: settings.partitions)
        let tally = ScenarioTally()
        let latency = LatencyRecorder()
        let attached = Monotonic.nanos()
        let consumer = try await c.broker.consumeStream(stream, group: "ordered", options: .init(start: .earliest))
        let run = c.startProcessor(consumer, concurrency: settings.handlers, orderedByKey: true) { delivery in
            guard let index = ScenarioContext.index(of: delivery) else { return tally.markReady("ordered") }
            let key = delivery.message.key ?? ""
            let sequence = delivery.message.headers[CompareHeader.sequence].flatMap { Int($0) } ?? -1
            tally.update { s in
                let last = s.lastSeqByKey[key] ?? -1
                if sequence > last + 1 { s.outOfOrder += 1 }
                if sequence > last { s.lastSeqByKey[key] = sequence }
            }
            if work > .zero { try await Task.sleep(for: work) }
            if let stamp = ScenarioContext.stamp(of: delivery) { latency.record(sinceStamp: stamp) }
            tally.handled(index)
        }
        try await c.publishWarmup(to: stream)
        try await c.waitUntil("waiting for the consumer") { tally.snapshot.ready.count == 1 }
        let ready = Monotonic.seconds(from: attached, to: tally.snapshot.readyAt)
        let cpu = ProcessCPU.seconds()
        let start = Monotonic.nanos()
        try await c.publishBatches(0..<count, to: stream) { i, stamp in
            c.message(i, key: "key\(i % keys)", stamp: stamp, headers: [CompareHeader.sequence: String(i / keys)])
        }
        try await c.waitUntil("\(tally.snapshot.handled) of \(count) handled") { tally.snapshot.handled >= count }
        let cpuSeconds = ProcessCPU.seconds() - cpu
        await c.stop([run])
        let state = tally.snapshot
        var observed = base
        observed.outOfOrder = state.outOfOrder
        observed.orderKeptPerKey = state.outOfOrder == 0
        observed.duplicates = state.duplicates
        return Measured(
            messages: count,
            start: start,
            end: state.lastHandledAt,
            cpuSeconds: cpuSeconds,
            latency: latency,
            readySeconds: ready,
            observed: observed
        )
    }

    /// A fresh queue with one handler (prefetch 16) that records each message's end-to-end
    /// latency, attached and warmed up: what low-traffic and awaited-publish publish into.
    func singleHandlerQueue(
        _ c: ScenarioContext,
        _ label: String
    ) async throws -> (queue: String, tally: ScenarioTally, latency: LatencyRecorder, run: ProcessorRun, ready: Double)
    {
        let queue = try await c.create(label, kind: .queue)
        let tally = ScenarioTally()
        let latency = LatencyRecorder()
        let attached = Monotonic.nanos()
        let consumer = try await c.broker.consumeQueue(queue, options: .init(prefetch: 16))
        let run = c.startProcessor(consumer, concurrency: 1, orderedByKey: false) { delivery in
            guard let index = ScenarioContext.index(of: delivery) else { return tally.markReady("queue") }
            if let stamp = ScenarioContext.stamp(of: delivery) { latency.record(sinceStamp: stamp) }
            tally.handled(index)
        }
        try await c.publishWarmup(to: queue)
        try await c.waitUntil("waiting for the consumer") { tally.snapshot.ready.count == 1 }
        return (queue, tally, latency, run, Monotonic.seconds(from: attached, to: tally.snapshot.readyAt))
    }

    // MARK: 5. low traffic, then idle

    func lowTraffic(_ c: ScenarioContext, _ base: ObservedSemantics) async throws -> Measured {
        let rate = settings.lowTrafficRate
        let count = max(1, Int((Double(rate) * settings.lowTrafficDuration.timeInterval).rounded()))
        let (queue, tally, latency, run, ready) = try await singleHandlerQueue(c, "trickle")
        let clock = ContinuousClock()
        let interval = Duration.seconds(1) / rate
        let cpu = ProcessCPU.seconds()
        let start = Monotonic.nanos()
        let first = clock.now
        for i in 0..<count {
            try await Task.sleep(until: first + interval * i, clock: clock)
            _ = try await c.broker.publish(c.message(i, key: nil, stamp: Monotonic.nanos()), to: queue)
            if i % rate == 0 { c.report("\(i) of \(count) published, \(tally.snapshot.handled) handled") }
            try c.checkDeadline("\(i) of \(count) published")
        }
        try await c.waitUntil("\(tally.snapshot.handled) of \(count) handled") { tally.snapshot.handled >= count }
        let cpuSeconds = ProcessCPU.seconds() - cpu
        let end = tally.snapshot.lastHandledAt
        // Idle: the consumer stays attached with nothing to do.
        c.report("idle for \(settings.idleDuration)")
        let idleCPU = ProcessCPU.seconds()
        let idleStart = Monotonic.nanos()
        try await Task.sleep(for: settings.idleDuration)
        let idleSeconds = Monotonic.seconds(from: idleStart, to: Monotonic.nanos())
        let idleUsed = ProcessCPU.seconds() - idleCPU
        await c.stop([run])
        var observed = base
        observed.idleCPUPercent = idleSeconds > 0 ? idleUsed / idleSeconds * 100 : nil
        observed.duplicates = tally.snapshot.duplicates
        return Measured(
            messages: count,
            start: start,
            end: end,
            cpuSeconds: cpuSeconds,
            latency: latency,
            readySeconds: ready,
            observed: observed
        )
    }

    // MARK: 6. awaited publishes

    /// What a request handler that publishes one message and awaits the broker's
    /// confirmation waits for: the publish call's duration, one at a time, as fast as they
    /// go (throughput: publishes per second). A consumer takes them meanwhile; its
    /// publish-to-handler median is in the notes.
    func awaitedPublish(_ c: ScenarioContext, _ base: ObservedSemantics) async throws -> Measured {
        let count = settings.awaitedPublishes
        let (queue, tally, endToEnd, run, ready) = try await singleHandlerQueue(c, "awaited")
        let calls = LatencyRecorder()
        let cpu = ProcessCPU.seconds()
        let start = Monotonic.nanos()
        for i in 0..<count {
            let stamp = Monotonic.nanos()
            _ = try await c.broker.publish(c.message(i, key: nil, stamp: stamp), to: queue)
            calls.record(sinceStamp: stamp)
            if i % 1_000 == 0 { c.report("\(i) of \(count) published") }
            try c.checkDeadline("\(i) of \(count) published")
        }
        let end = Monotonic.nanos()
        let cpuSeconds = ProcessCPU.seconds() - cpu
        try await c.waitUntil("\(tally.snapshot.handled) of \(count) handled") { tally.snapshot.handled >= count }
        await c.stop([run])
        var observed = base
        observed.endToEndP50Ms = endToEnd.summary?.p50
        observed.duplicates = tally.snapshot.duplicates
        return Measured(
            messages: count,
            start: start,
            end: end,
            cpuSeconds: cpuSeconds,
            latency: calls,
            latencyKind: "publish call",
            readySeconds: ready,
            observed: observed
        )
    }

    // MARK: 7. delayed jobs

    struct DelayedJob: Job {
        static let name = "compare-delayed"
        var index: Int
        /// Due time, milliseconds since 1970.
        var dueMillis: Int64
    }

    struct WarmupJob: Job {
        static let name = "compare-warmup"
    }

    func delayedJobs(_ c: ScenarioContext, _ base: ObservedSemantics) async throws -> Measured {
        let count = settings.delayedJobs
        let queue = try await c.create("delayed", kind: .queue)
        let tally = ScenarioTally()
        let lateness = LatencyRecorder()
        let worker = JobWorker(
            broker: c.broker,
            queue: queue,
            options: .init(
                concurrency: settings.handlers,
                retryPolicy: RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(50))),
                shutdownTimeout: .seconds(10)
            ),
            logger: logger
        )
        worker.register(WarmupJob.self) { _, _ in tally.markReady("worker") }
        worker.register(DelayedJob.self) { job, _ in
            let late = Int64((Date().timeIntervalSince1970 * 1000).rounded()) - job.dueMillis
            if late < -1 { tally.update { $0.early += 1 } }  // 1 ms: rounding of the due time
            lateness.record(micros: UInt64(max(0, late)) * 1000)
            tally.handled(job.index)
        }
        let attached = Monotonic.nanos()
        let running = Task { try await worker.run() }
        do {
            let jobs = JobQueue(broker: c.broker, queue: queue)
            try await jobs.dispatch(WarmupJob())
            try await c.waitUntil("waiting for the worker") { tally.snapshot.ready.count == 1 }
            let ready = Monotonic.seconds(from: attached, to: tally.snapshot.readyAt)
            let window = settings.delayWindow.timeInterval
            let firstDue = min(1.0, window / 10)
            let base0 = Date()
            // Due times evenly spread over the window, dispatched in random order, 16 at a time.
            let dues = (0..<count).map { i in
                base0.addingTimeInterval(firstDue + (window - firstDue) * (Double(i) + 0.5) / Double(count))
            }
            let order = Array(0..<count).shuffled()
            let cpu = ProcessCPU.seconds()
            let start = Monotonic.nanos()
            try await withThrowingTaskGroup(of: Void.self) { group in
                var next = 0
                func add() {
                    let i = order[next]
                    next += 1
                    let job = DelayedJob(index: i, dueMillis: Int64((dues[i].timeIntervalSince1970 * 1000).rounded()))
                    group.addTask { _ = try await jobs.dispatch(job, at: dues[i]) }
                }
                while next < min(16, count) { add() }
                while try await group.next() != nil {
                    if next < count { add() }
                }
            }
            c.report(
                String(
                    format: "%d jobs dispatched in %.2f s",
                    count,
                    Monotonic.seconds(from: start, to: Monotonic.nanos())
                )
            )
            try await c.waitUntil("\(tally.snapshot.handled) of \(count) run") { tally.snapshot.handled >= count }
            let cpuSeconds = ProcessCPU.seconds() - cpu
            worker.stop()
            try await running.value
            let state = tally.snapshot
            var observed = base
            observed.early = state.early
            observed.duplicates = state.duplicates
            return Measured(
                messages: count,
                start: start,
                end: state.lastHandledAt,
                cpuSeconds: cpuSeconds,
                latency: lateness,
                latencyKind: "lateness",
                readySeconds: ready,
                observed: observed
            )
        } catch {
            worker.stop()
            _ = try? await running.value
            throw error
        }
    }
}
