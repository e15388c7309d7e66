import BrokerAPI
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The faults of a run.
public struct SoakFaults: Sendable {
    /// Workers killed with SIGKILL (and started again a second later).
    public var kills: Int
    /// Broker restarts, by `restartCommand`.
    public var restarts: Int
    /// Network cuts through the proxy.
    public var cuts: Int
    /// Publishers killed with SIGKILL mid-batch (a replacement finishes their share).
    public var publisherKills: Int
    public var cutLength: Duration
    /// A shell command that restarts the broker (e.g. `scripts/brokers.sh restart-redis`).
    public var restartCommand: String?

    public init(
        kills: Int = 3,
        restarts: Int = 2,
        cuts: Int = 1,
        publisherKills: Int = 1,
        cutLength: Duration = .seconds(5),
        restartCommand: String? = nil
    ) {
        self.kills = kills
        self.restarts = restarts
        self.cuts = cuts
        self.publisherKills = publisherKills
        self.cutLength = cutLength
        self.restartCommand = restartCommand
    }
}

/// Runs one soak: starts the publishers and workers, injects the faults, waits until every
/// confirmed message is accounted for (or the settle time is over), stops the workers, reads
/// the dead letters, and computes the ledger.
public final class SoakRunner: Sendable {
    public enum Mode: Sendable {
        /// Separate OS processes: `executable soak-publisher …` / `executable soak-worker …`.
        case processes(executable: String)
        /// Tasks inside this process, on one broker (memory://, whose state is per process):
        /// a "kill" cancels a worker's task (its deliveries are released unsettled).
        case inProcess(any Broker)
    }

    public struct Settings: Sendable {
        public var plan: SoakPlan
        public var faults: SoakFaults
        public var url: String
        public var options: [String: String]
        public var directory: String
        /// How long to wait, once publishing is over, for the consumers to catch up.
        public var settle: Duration
        /// The proxy's listening port (0: any) and the broker behind it; nil: the URL's own
        /// host and port (TCP).
        public var proxyListen: Int
        public var proxyUpstream: SoakProxy.Upstream?
        /// Keep the run's destinations on the broker afterwards.
        public var keep: Bool
        public var seed: UInt64

        public init(
            plan: SoakPlan,
            faults: SoakFaults,
            url: String,
            options: [String: String] = [:],
            directory: String,
            settle: Duration = .seconds(180),
            proxyListen: Int = 0,
            proxyUpstream: SoakProxy.Upstream? = nil,
            keep: Bool = false,
            seed: UInt64 = UInt64.random(in: 0...UInt64.max)
        ) {
            self.plan = plan
            self.faults = faults
            self.url = url
            self.options = options
            self.directory = directory
            self.settle = settle
            self.proxyListen = proxyListen
            self.proxyUpstream = proxyUpstream
            self.keep = keep
            self.seed = seed
        }
    }

    let settings: Settings
    let mode: Mode
    let logger: Logger

    public init(settings: Settings, mode: Mode, logger: Logger = Logger(label: "brokerkit.soak")) {
        self.settings = settings
        self.mode = mode
        self.logger = logger
    }

    // MARK: - Children

    /// A publisher or worker: an OS process or (in-process mode) a task.
    final class Child: @unchecked Sendable {
        // Safe: `process` and `task` are set once, before the child is shared; the rest is
        // behind `lock`.
        let role: String
        let index: Int
        let incarnation: Int
        let ledgerPath: String
        var process: Process?
        var task: Task<Void, any Error>?
        var worker: SoakWorker?
        let lock = Mutex<(done: Bool, status: Int32, killed: Bool, stopped: Bool)>((false, 0, false, false))

        init(role: String, index: Int, incarnation: Int, ledgerPath: String) {
            self.role = role
            self.index = index
            self.incarnation = incarnation
            self.ledgerPath = ledgerPath
        }

        var isRunning: Bool {
            if let process { return process.isRunning }
            return !lock.withLock { $0.done }
        }

        var pid: Int32? { process?.processIdentifier }

        func kill() {
            lock.withLock { $0.killed = true }
            if let process, process.isRunning { sendSignal(process.processIdentifier, SIGKILL) }
            task?.cancel()
        }

        func terminate() {
            lock.withLock { $0.stopped = true }
            if let process, process.isRunning { sendSignal(process.processIdentifier, SIGTERM) }
            worker?.stop()
        }

        var exitStatus: Int32? {
            if let process { return process.isRunning ? nil : process.terminationStatus }
            let state = lock.withLock { $0 }
            return state.done ? state.status : nil
        }

        var wasKilled: Bool { lock.withLock { $0.killed } }
        var wasStopped: Bool { lock.withLock { $0.stopped } }
    }

    private final class Children: Sendable {
        let all = Mutex<[Child]>([])
        func add(_ child: Child) { all.withLock { $0.append(child) } }
        func current(_ role: String) -> [Child] {
            let list = all.withLock { $0 }.filter { $0.role == role }
            var latest: [Int: Child] = [:]
            for child in list where (latest[child.index]?.incarnation ?? -1) < child.incarnation {
                latest[child.index] = child
            }
            return latest.keys.sorted().compactMap { latest[$0] }
        }
        func paths(_ role: String, index: Int) -> [String] {
            all.withLock { $0 }.filter { $0.role == role && $0.index == index }.map(\.ledgerPath)
        }
        var ledgerPaths: [String] { all.withLock { $0 }.map(\.ledgerPath) }
    }

    private func start(
        role: String,
        index: Int,
        incarnation: Int,
        childURL: String,
        children: Children
    ) throws -> Child {
        let path = "\(settings.directory)/\(role)-\(index).\(incarnation).log"
        let child = Child(role: role, index: index, incarnation: incarnation, ledgerPath: path)
        let ledger = try SoakLedgerWriter(path: path)
        let previous = role == "publisher" ? children.paths(role, index: index) : []
        switch mode {
        case .processes(let executable):
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            var arguments = ["soak-\(role)", "--broker", childURL]
            for (key, value) in settings.options.sorted(by: { $0.key < $1.key }) {
                arguments += ["--option", "\(key)=\(value)"]
            }
            arguments += ["--plan", settings.plan.encoded(), "--index", String(index), "--ledger", path]
            if !previous.isEmpty { arguments += ["--previous", previous.joined(separator: ",")] }
            process.arguments = arguments
            let output = "\(settings.directory)/\(role)-\(index).\(incarnation).out"
            _ = FileManager.default.createFile(atPath: output, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            process.standardOutput = handle
            process.standardError = handle
            process.standardInput = FileHandle.nullDevice
            try process.run()
            child.process = process
        case .inProcess(let broker):
            let plan = settings.plan
            if role == "worker" {
                let worker = SoakWorker(broker: broker, plan: plan, ledger: ledger, logger: logger)
                child.worker = worker
                child.task = Task {
                    defer { child.lock.withLock { $0.done = true } }
                    try await worker.run()
                }
            } else {
                let events = SoakLedgerReader().readNew(from: previous)
                child.task = Task { [logger] in
                    do {
                        try await SoakPublisher.run(
                            broker: broker,
                            plan: plan,
                            index: index,
                            ledger: ledger,
                            previous: events,
                            logger: logger
                        )
                        child.lock.withLock { $0.done = true }
                    } catch {
                        child.lock.withLock {
                            $0.done = true
                            $0.status = 1
                        }
                        throw error
                    }
                }
            }
        }
        children.add(child)
        return child
    }

    // MARK: - Run

    public func run() async throws -> SoakReport {
        let plan = settings.plan
        try FileManager.default.createDirectory(atPath: settings.directory, withIntermediateDirectories: true)
        let coordinator = try SoakLedgerWriter(path: "\(settings.directory)/coordinator.log")
        var generator = SeededGenerator(seed: settings.seed)

        // The broker for set-up and the final reading, and the URL the children use.
        let broker: any Broker
        var childURL = settings.url
        var proxy: SoakProxy?
        switch mode {
        case .inProcess(let shared):
            broker = shared
        case .processes:
            if settings.faults.cuts > 0 {
                let upstream = try settings.proxyUpstream ?? Self.tcpUpstream(of: settings.url)
                let started = try SoakProxy(listenPort: settings.proxyListen, upstream: upstream)
                proxy = started
                if settings.proxyListen == 0 { childURL = try Self.rewrite(settings.url, port: started.port) }
            }
            broker = try await Brokers.connect(url: settings.url, options: settings.options, logger: logger)
        }
        let backend = broker.backendName
        let orderEnforced = Self.keepsOrderAcrossMembers(backend)
        try await broker.createQueue(plan.queue)
        try await broker.createStream(plan.stream, options: DestinationOptions(partitions: plan.partitions))
        try await broker.createQueue(plan.jobQueue)

        let began = SoakLedgerWriter.now()
        coordinator.record("begin", [backend, plan.encoded()])
        let children = Children()
        for index in 0..<plan.workers {
            _ = try start(role: "worker", index: index, incarnation: 1, childURL: childURL, children: children)
        }
        // Workers first: their groups exist (and start at the earliest entry) before the load.
        try await Task.sleep(for: .seconds(2))
        let publishing = SoakLedgerWriter.now()
        for index in 0..<plan.publishers {
            _ = try start(role: "publisher", index: index, incarnation: 1, childURL: childURL, children: children)
        }

        // A supervisor, as systemd or Kubernetes would be: a worker that exits on its own (a
        // consumer that could not start while the broker was away) is logged and started again.
        let supervising = Task { [self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                for worker in children.current("worker")
                where !worker.isRunning && !worker.wasKilled && !worker.wasStopped {
                    let status = worker.exitStatus ?? -1
                    coordinator.record("exit", ["worker", String(worker.index), String(status)])
                    logger.warning(
                        "soak: worker \(worker.index) exited on its own (status \(status)); starting it again"
                    )
                    _ = try? start(
                        role: "worker",
                        index: worker.index,
                        incarnation: worker.incarnation + 1,
                        childURL: childURL,
                        children: children
                    )
                }
            }
        }
        let sampler = ResourceSampler()
        let sampling = Task {
            while !Task.isCancelled {
                sampler.sample(
                    children.all.withLock { $0 },
                    inProcess: { if case .inProcess = mode { return true } else { return false } }()
                )
                try? await Task.sleep(for: .milliseconds(500))
            }
        }

        // Faults, spread over the publishing time (each slot jittered by a third of its width).
        var kinds: [String] = []
        kinds += Array(repeating: "kill-worker", count: settings.faults.kills)
        if case .processes = mode {
            if settings.faults.restartCommand != nil {
                kinds += Array(repeating: "restart-broker", count: settings.faults.restarts)
            }
            kinds += Array(repeating: "cut", count: settings.faults.cuts)
        }
        kinds += Array(repeating: "kill-publisher", count: settings.faults.publisherKills)
        kinds.shuffle(using: &generator)
        let slot = plan.publishSeconds / Double(kinds.count + 1)
        let times = kinds.indices.map { i in
            max(0.5, Double(i + 1) * slot + Double.random(in: -slot / 3...slot / 3, using: &generator))
        }
        let picks = kinds.indices.map { _ in Int.random(in: 0..<1000, using: &generator) }
        for (i, kind) in kinds.enumerated() {
            let due = publishing + Int64(times[i] * 1_000_000)
            let wait = due - SoakLedgerWriter.now()
            if wait > 0 { try await Task.sleep(for: .microseconds(wait)) }
            let faultStart = SoakLedgerWriter.now()
            var detail = ""
            switch kind {
            case "kill-worker":
                let running = children.current("worker").filter(\.isRunning)
                guard !running.isEmpty else { continue }
                let victim = running[picks[i] % running.count]
                victim.kill()
                detail =
                    "worker \(victim.index)\(victim.pid.map { " (pid \($0))" } ?? "") killed, started again after 1 s"
                logger.info("soak: \(detail)")
                try await Task.sleep(for: .seconds(1))
                _ = try start(
                    role: "worker",
                    index: victim.index,
                    incarnation: victim.incarnation + 1,
                    childURL: childURL,
                    children: children
                )
            case "kill-publisher":
                let running = children.current("publisher").filter(\.isRunning)
                guard !running.isEmpty else {
                    coordinator.record("skipped", [kind, "every publisher had finished"])
                    continue
                }
                let victim = running[picks[i] % running.count]
                victim.kill()
                detail = "publisher \(victim.index) killed mid-batch; a replacement finishes its share"
                logger.info("soak: \(detail)")
                try await Task.sleep(for: .milliseconds(500))
                _ = try start(
                    role: "publisher",
                    index: victim.index,
                    incarnation: victim.incarnation + 1,
                    childURL: childURL,
                    children: children
                )
            case "restart-broker":
                let command = settings.faults.restartCommand ?? "true"
                logger.info("soak: restarting the broker: \(command)")
                let status = try await Self.shell(command, output: "\(settings.directory)/restart-\(i).out")
                detail = "broker restarted by `\(command)` (exit \(status))"
                if status != 0 { coordinator.record("error", ["restart command failed with exit status \(status)"]) }
            case "cut":
                proxy?.cut(for: settings.faults.cutLength)
                detail = "network cut for \(settings.faults.cutLength) (every connection reset, new ones refused)"
                logger.info("soak: \(detail)")
                try await Task.sleep(for: settings.faults.cutLength)
            default: break
            }
            coordinator.record("fault", [kind, String(SoakLedgerWriter.now()), detail], at: faultStart)
        }

        // Publishing over: wait for the publishers (replacements included).
        var failures: [String] = []
        while children.current("publisher").contains(where: \.isRunning) {
            try await Task.sleep(for: .milliseconds(200))
        }
        for publisher in children.current("publisher") where publisher.exitStatus != 0 {
            failures.append(
                "publisher \(publisher.index) exited with status \(publisher.exitStatus ?? -1) (see \(settings.directory))"
            )
        }
        coordinator.record("published", [])
        logger.info("soak: publishing done; waiting for the consumers (at most \(settings.settle))")

        // Settle: until the ledgers account for every confirmed message and job.
        let reader = SoakLedgerReader()
        var tracker = CompletionTracker()
        let settleDeadline = ContinuousClock.now + settings.settle
        while ContinuousClock.now < settleDeadline {
            tracker.add(reader.readNew(from: children.ledgerPaths))
            if tracker.isComplete { break }
            try await Task.sleep(for: .seconds(1))
        }
        // Late acks and dead-letter writes still under way.
        try await Task.sleep(for: .seconds(3))
        supervising.cancel()
        for worker in children.current("worker") { worker.terminate() }
        let stopDeadline = ContinuousClock.now + .seconds(30)
        while children.current("worker").contains(where: \.isRunning), ContinuousClock.now < stopDeadline {
            try await Task.sleep(for: .milliseconds(200))
        }
        for worker in children.current("worker") where worker.isRunning {
            failures.append("worker \(worker.index) did not stop within 30 s of SIGTERM; killed")
            worker.kill()
        }
        sampling.cancel()
        sampler.sample(
            children.all.withLock { $0 },
            inProcess: { if case .inProcess = mode { return true } else { return false } }()
        )
        let ended = SoakLedgerWriter.now()

        // The broker's own account: its dead letters.
        var deadLetters: [SoakDeadLetter] = []
        for entry in try await broker.deadLetters(of: plan.queue, limit: plan.messages * 3 + 1000) {
            deadLetters.append(
                SoakDeadLetter(
                    consumer: "queue",
                    seq: entry.envelope.original.text.flatMap { Int($0) },
                    reason: entry.envelope.lastError
                )
            )
        }
        for entry in try await broker.deadLetters(of: plan.stream, limit: plan.messages * 6 + 1000) {
            let group = entry.envelope.original.headers[HeaderName.group] ?? "?"
            deadLetters.append(
                SoakDeadLetter(
                    consumer: group,
                    seq: entry.envelope.original.text.flatMap { Int($0) },
                    reason: entry.envelope.lastError
                )
            )
        }
        // What the broker still holds, so the ledger can tell "not finished" from "lost".
        var backlog: SoakBacklog = [:]
        if let stats = try? await broker.stats(for: plan.queue) {
            backlog["queue"] = stats.depth + stats.delayed + stats.inFlight
        }
        if let stats = try? await broker.stats(for: plan.stream) {
            for group in stats.groups { backlog[group.group] = group.lag + group.pending }
        }
        if let stats = try? await broker.stats(for: plan.jobQueue) {
            backlog["jobs"] = stats.depth + stats.delayed + stats.inFlight
        }
        let events = SoakLedgerReader().readNew(from: children.ledgerPaths + ["\(settings.directory)/coordinator.log"])
        var report = SoakAnalysis.report(
            backend: backend,
            url: BrokerURLRedaction.redact(settings.url),
            plan: plan,
            events: events,
            deadLetters: deadLetters,
            resources: sampler.resources,
            orderEnforced: orderEnforced,
            began: began,
            ended: ended,
            backlog: backlog
        )
        report.failures = failures + report.failures
        if !settings.keep {
            for name in [plan.queue, plan.stream, plan.jobQueue] { try? await broker.deleteDestination(name) }
        }
        if case .processes = mode { await broker.close() }
        // Last: the coordinator may reach the broker through the proxy too (Kafka).
        proxy?.stop()
        return report
    }

    // MARK: - Helpers

    /// Whether a stream group's members keep per-key order between them: Kafka assigns each
    /// partition (so each key) to one member, RabbitMQ lets one member of a group consume at a
    /// time. Redis and memory groups share entries one by one (see docs/redis.md): there the
    /// ledger shows violations without failing the run.
    static func keepsOrderAcrossMembers(_ backend: String) -> Bool { backend == "kafka" || backend == "amqp" }

    static func tcpUpstream(of url: String) throws -> SoakProxy.Upstream {
        guard let components = URLComponents(string: url), let host = components.host, let port = components.port else {
            throw SoakError("--cuts needs a broker URL with a host and a port (got \(BrokerURLRedaction.redact(url)))")
        }
        return .tcp(host: host, port: port)
    }

    static func rewrite(_ url: String, port: Int) throws -> String {
        guard var components = URLComponents(string: url) else { throw SoakError("cannot parse the broker URL") }
        components.host = "127.0.0.1"
        components.port = port
        guard let rewritten = components.string else { throw SoakError("cannot rewrite the broker URL") }
        return rewritten
    }

    static func shell(_ command: String, output: String) async throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        while process.isRunning { try await Task.sleep(for: .milliseconds(100)) }
        return process.terminationStatus
    }
}

/// Tracks, while the run settles, whether every confirmed message has a final outcome in the
/// ledgers (handled, or poison seen by a handler) on every consumer, and every job ran.
struct CompletionTracker {
    var confirmed: [String: Set<Int>] = [:]
    var jobs = Set<Int>()
    var done: [String: Set<Int>] = [:]
    var jobsRan = Set<Int>()

    mutating func add(_ events: [SoakEvent]) {
        for event in events {
            let f = event.fields
            switch event.name {
            case "ok" where f.count >= 2: confirmed[f[0], default: []].formUnion(SeqList.parse(f[1]))
            case "jobok": if let seq = f.first.flatMap({ Int($0) }) { jobs.insert(seq) }
            case "run" where f.count >= 4 && (f[3] == "ok" || f[3] == "poison"):
                if let seq = Int(f[1]) { done[f[0], default: []].insert(seq) }
            case "job": if let seq = f.first.flatMap({ Int($0) }) { jobsRan.insert(seq) }
            default: break
            }
        }
    }

    var isComplete: Bool {
        for consumer in SoakPlan.consumers {
            let expected = confirmed[consumer == "queue" ? "queue" : "stream"] ?? []
            if !expected.isSubset(of: done[consumer] ?? []) { return false }
        }
        return jobs.isSubset(of: jobsRan)
    }
}

/// CPU time and peak RSS of the children, from /proc (in-process mode: this process's own).
final class ResourceSampler: Sendable {
    private let state = Mutex<(cpu: [Int32: Double], rss: [Int32: Int], own: Double, ownStart: Double?)>(
        ([:], [:], 0, nil)
    )

    var resources: SoakResources {
        state.withLock { s in
            var r = SoakResources()
            r.cpuSeconds = s.cpu.values.reduce(0, +) + max(0, s.own - (s.ownStart ?? s.own))
            r.peakWorkerRSSKiB = s.rss.values.max() ?? 0
            return r
        }
    }

    func sample(_ children: [SoakRunner.Child], inProcess: Bool) {
        if inProcess {
            let cpu = Self.cpuSeconds(pid: getpid()) ?? 0
            let rss = Self.peakRSS(pid: getpid()) ?? 0
            state.withLock { s in
                if s.ownStart == nil { s.ownStart = cpu }
                s.own = cpu
                s.rss[getpid()] = max(s.rss[getpid()] ?? 0, rss)
            }
            return
        }
        for child in children {
            guard let pid = child.pid, child.isRunning else { continue }
            let cpu = Self.cpuSeconds(pid: pid)
            let rss = child.role == "worker" ? Self.peakRSS(pid: pid) : nil
            state.withLock { s in
                if let cpu { s.cpu[pid] = cpu }
                if let rss { s.rss[pid] = max(s.rss[pid] ?? 0, rss) }
            }
        }
    }

    static func cpuSeconds(pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: state is field 3; utime and stime are fields 14 and 15.
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func peakRSS(pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "")
        }
        return nil
    }
}

/// A small deterministic generator, so that `--seed` repeats a run's fault schedule.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The broker URL without its password, for reports.
enum BrokerURLRedaction {
    static func redact(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.password != nil else { return url }
        components.password = "***"
        return components.string ?? url
    }
}

private func sendSignal(_ pid: Int32, _ signal: Int32) { _ = kill(pid, signal) }
