@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// The fixed workloads `brokerkit compare` runs on every backend.
public enum CompareScenario: String, CaseIterable, Sendable, Encodable {
    /// A work queue where 5 % of the jobs fail twice before they succeed (retry with backoff).
    case workQueue = "work-queue"
    /// One stream read by three consumer groups: every group gets every message.
    case fanOut = "fan-out"
    /// A new group reads the last N messages of a stream's history.
    case replay
    /// Per-key ordered processing with concurrent handlers.
    case orderedPerKey = "ordered-per-key"
    /// A steady trickle (100 msg/s by default) for a fixed time, then an idle spell.
    case lowTraffic = "low-traffic"
    /// One publish at a time, each awaited (what an HTTP handler does), as fast as they go.
    case awaitedPublish = "awaited-publish"
    /// Jobs dispatched to run at times spread over a window; lateness is measured.
    case delayedJobs = "delayed-jobs"

    /// One line saying what the scenario does, for reports.
    public func summary(_ settings: CompareSettings) -> String {
        switch self {
        case .workQueue:
            return
                "\(settings.messages) messages on a queue, \(settings.handlers) handlers; every 20th fails twice, then succeeds (backoff 20-200 ms)"
        case .fanOut:
            return
                "\(settings.messages) messages on a \(settings.partitions)-partition stream, read by \(settings.groups) consumer groups"
        case .replay:
            return
                "\(settings.historyMessages) messages of history; a new group replays the last \(settings.messages), another reads all from the start"
        case .orderedPerKey:
            return
                "\(settings.messages) messages over \(settings.keys) keys, \(settings.handlers) concurrent handlers of \(Self.format(settings.handlerWork)) each, order kept per key"
        case .lowTraffic:
            return
                "\(settings.lowTrafficRate) msg/s for \(Self.format(settings.lowTrafficDuration)), one awaited publish at a time; then \(Self.format(settings.idleDuration)) idle"
        case .awaitedPublish:
            return
                "\(settings.awaitedPublishes) publishes one at a time, each awaited before the next, to a queue with a consumer; latency columns are the publish call (what a request handler waits)"
        case .delayedJobs:
            return
                "\(settings.delayedJobs) jobs due at times spread over \(Self.format(settings.delayWindow)); latency columns are lateness (run time - due time)"
        }
    }

    static func format(_ duration: Duration) -> String {
        let seconds = duration.timeInterval
        return seconds >= 1 ? String(format: "%g s", seconds) : String(format: "%g ms", seconds * 1000)
    }
}

/// How much work each scenario does. Every backend runs the same settings.
public struct CompareSettings: Sendable, Encodable {
    /// Messages per scenario (work queue, fan-out, replay, ordered per key).
    public var messages: Int
    /// Payload size of each message, in bytes.
    public var payloadBytes: Int
    /// Consumer groups in the fan-out scenario.
    public var groups: Int
    /// Partitions of the streams (fan-out, ordered per key; replay uses one).
    public var partitions: Int
    /// Distinct keys in the ordered scenario.
    public var keys: Int
    /// Concurrent handlers in the work-queue and ordered scenarios.
    public var handlers: Int
    /// Simulated work per message in the ordered scenario.
    public var handlerWork: Duration
    /// Messages per second in the low-traffic scenario.
    public var lowTrafficRate: Int
    /// How long the low-traffic scenario publishes.
    public var lowTrafficDuration: Duration
    /// The idle spell after it, with the consumer attached and nothing to do.
    public var idleDuration: Duration
    /// Publishes in the awaited-publish scenario.
    public var awaitedPublishes: Int
    /// Jobs in the delayed-jobs scenario.
    public var delayedJobs: Int
    /// The window their due times are spread over (the first is due after 1 s, or after a
    /// tenth of the window when that is shorter).
    public var delayWindow: Duration
    /// Longest a scenario may take before it is reported as failed.
    public var scenarioTimeout: Duration

    public init(
        messages: Int = 5_000,
        payloadBytes: Int = 256,
        groups: Int = 3,
        partitions: Int = 4,
        keys: Int = 64,
        handlers: Int = 8,
        handlerWork: Duration = .milliseconds(1),
        lowTrafficRate: Int = 100,
        lowTrafficDuration: Duration = .seconds(10),
        idleDuration: Duration = .seconds(5),
        awaitedPublishes: Int = 2_000,
        delayedJobs: Int = 1_000,
        delayWindow: Duration = .seconds(10),
        scenarioTimeout: Duration = .seconds(300)
    ) {
        self.messages = messages
        self.payloadBytes = payloadBytes
        self.groups = groups
        self.partitions = partitions
        self.keys = keys
        self.handlers = handlers
        self.handlerWork = handlerWork
        self.lowTrafficRate = lowTrafficRate
        self.lowTrafficDuration = lowTrafficDuration
        self.idleDuration = idleDuration
        self.awaitedPublishes = awaitedPublishes
        self.delayedJobs = delayedJobs
        self.delayWindow = delayWindow
        self.scenarioTimeout = scenarioTimeout
    }

    private enum CodingKeys: String, CodingKey {
        case messages, payloadBytes, groups, partitions, keys, handlers, handlerWorkSeconds, lowTrafficRate
        case lowTrafficSeconds, idleSeconds, awaitedPublishes, delayedJobs, delayWindowSeconds, scenarioTimeoutSeconds
    }

    /// Durations as seconds, so that JSON readers in any language understand them.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(messages, forKey: .messages)
        try c.encode(payloadBytes, forKey: .payloadBytes)
        try c.encode(groups, forKey: .groups)
        try c.encode(partitions, forKey: .partitions)
        try c.encode(keys, forKey: .keys)
        try c.encode(handlers, forKey: .handlers)
        try c.encode(handlerWork.timeInterval, forKey: .handlerWorkSeconds)
        try c.encode(lowTrafficRate, forKey: .lowTrafficRate)
        try c.encode(lowTrafficDuration.timeInterval, forKey: .lowTrafficSeconds)
        try c.encode(idleDuration.timeInterval, forKey: .idleSeconds)
        try c.encode(awaitedPublishes, forKey: .awaitedPublishes)
        try c.encode(delayedJobs, forKey: .delayedJobs)
        try c.encode(delayWindow.timeInterval, forKey: .delayWindowSeconds)
        try c.encode(scenarioTimeout.timeInterval, forKey: .scenarioTimeoutSeconds)
    }

    /// Messages of history in the replay scenario: twice `messages`.
    public var historyMessages: Int { messages * 2 }

    /// Throws a ``BrokerError/Code/invalidConfiguration`` naming the first setting out of range.
    public func validate() throws {
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw BrokerError(.invalidConfiguration, "compare: \(what)") }
        }
        try check(messages >= 20, "messages must be at least 20, got \(messages)")
        try check(
            payloadBytes >= 0 && payloadBytes <= 1_000_000,
            "payload size must be 0 to 1000000 bytes, got \(payloadBytes)"
        )
        try check(groups >= 1 && groups <= 16, "groups must be 1 to 16, got \(groups)")
        try check(partitions >= 1 && partitions <= 64, "partitions must be 1 to 64, got \(partitions)")
        try check(keys >= 1, "keys must be at least 1, got \(keys)")
        try check(handlers >= 1 && handlers <= 256, "handlers must be 1 to 256, got \(handlers)")
        try check(
            lowTrafficRate >= 1 && lowTrafficRate <= 10_000,
            "low-traffic rate must be 1 to 10000 msg/s, got \(lowTrafficRate)"
        )
        try check(lowTrafficDuration >= .milliseconds(100), "low-traffic duration must be at least 100 ms")
        try check(awaitedPublishes >= 1, "awaited publishes must be at least 1, got \(awaitedPublishes)")
        try check(delayedJobs >= 1, "delayed jobs must be at least 1, got \(delayedJobs)")
        try check(delayWindow >= .milliseconds(500), "delay window must be at least 500 ms")
    }
}

/// What a scenario observed about the broker's semantics. `nil`: the scenario does not look.
public struct ObservedSemantics: Sendable, Encodable, Hashable {
    /// Every key's messages were handled in publish order (ordered-per-key scenario).
    public var orderKeptPerKey: Bool?
    /// Messages handled out of their key's order.
    public var outOfOrder: Int?
    /// A new group could start at a message's position (replay scenario).
    public var replayByPosition: Bool?
    /// The replaying group got exactly the last N messages, in order.
    public var replayExact: Bool?
    /// How the replaying group found its start: `position` or `timestamp`.
    public var replayStart: String?
    /// A group created after the messages were published read all of them.
    public var newGroupSeesOld: Bool?
    /// The broker routes dead letters itself (capability of the backend).
    public var nativeDLQ: Bool
    /// The broker schedules delayed messages itself (capability of the backend).
    public var nativeDelay: Bool
    /// Failed attempts that were retried (work-queue scenario).
    public var retried: Int?
    /// Deliveries of a message already handled (at-least-once redeliveries).
    public var duplicates: Int?
    /// Messages that ended in the dead-letter queue.
    public var deadLettered: Int?
    /// Client CPU during the idle spell, in percent of one core (low-traffic scenario).
    public var idleCPUPercent: Double?
    /// Delayed jobs that ran before they were due (delayed-jobs scenario).
    public var early: Int?
    /// Publish to handler, median, in milliseconds (awaited-publish scenario).
    public var endToEndP50Ms: Double?

    public init(nativeDLQ: Bool, nativeDelay: Bool) {
        self.nativeDLQ = nativeDLQ
        self.nativeDelay = nativeDelay
    }
}

/// One scenario on one backend.
public struct ScenarioResult: Sendable, Encodable {
    public enum Status: String, Sendable, Encodable {
        case ok, failed
    }

    public var backend: String
    public var scenario: CompareScenario
    public var status: Status
    /// Why it failed.
    public var error: String?
    /// Messages (or jobs) handled, counting each group's copy in fan-out.
    public var messages: Int
    /// From the first publish (or the replaying group's start) to the last message handled.
    public var seconds: Double
    /// `messages / seconds`.
    public var throughput: Double
    /// What the latency columns measure: `end-to-end` (publish to handled), `lateness` (run
    /// time minus due time) or `first-message` (replay: time until the first replayed message).
    public var latencyKind: String
    public var latencyP50Ms: Double?
    public var latencyP99Ms: Double?
    public var latencyMaxMs: Double?
    /// CPU time (user + system) of the whole client process while the scenario ran.
    public var cpuSeconds: Double
    /// Time from creating the consumers until each had received a first (warm-up) message.
    public var readySeconds: Double?
    public var observed: ObservedSemantics
    /// Throughput of every round, when the scenario ran more than once; the row is the round
    /// with the median throughput.
    public var roundThroughputs: [Double]?

    /// The round with the median throughput, carrying every round's throughput; the first
    /// failed round instead, when one failed.
    public static func median(of rounds: [ScenarioResult]) -> ScenarioResult? {
        if let failed = rounds.first(where: { $0.status == .failed }) { return failed }
        guard rounds.count > 1 else { return rounds.first }
        var median = rounds.sorted { $0.throughput < $1.throughput }[rounds.count / 2]
        median.roundThroughputs = rounds.map(\.throughput)
        return median
    }

    /// CPU microseconds per message handled.
    public var cpuMicrosPerMessage: Double? {
        messages > 0 ? cpuSeconds * 1_000_000 / Double(messages) : nil
    }

    /// A short text of what this row observed, for tables.
    public var observedSummary: String {
        if status == .failed { return "FAILED: \(error ?? "unknown error")" }
        var parts: [String] = []
        switch scenario {
        case .workQueue:
            parts.append("retried \(observed.retried ?? 0)")
            parts.append("dead-lettered \(observed.deadLettered ?? 0)")
            parts.append(observed.nativeDLQ ? "native DLQ" : "DLQ by BrokerKit")
        case .fanOut:
            parts.append("every group got every message")
        case .replay:
            if let exact = observed.replayExact {
                parts.append("replay by \(observed.replayStart ?? "?"): \(exact ? "exact" : "NOT exact")")
            }
            if let old = observed.newGroupSeesOld { parts.append("new group sees old: \(old ? "yes" : "no")") }
        case .orderedPerKey:
            parts.append(
                "order per key kept: \(observed.orderKeptPerKey == true ? "yes" : "no (\(observed.outOfOrder ?? 0) out of order)")"
            )
        case .lowTraffic:
            if let idle = observed.idleCPUPercent { parts.append(String(format: "idle CPU %.1f %%", idle)) }
        case .awaitedPublish:
            if let p50 = observed.endToEndP50Ms { parts.append(String(format: "end-to-end p50 %.2f ms", p50)) }
        case .delayedJobs:
            parts.append(observed.nativeDelay ? "native delay" : "delay by BrokerKit")
            parts.append("early \(observed.early ?? 0)")
        }
        if let duplicates = observed.duplicates, duplicates > 0 { parts.append("duplicates \(duplicates)") }
        if let ready = readySeconds { parts.append(String(format: "ready %.2f s", ready)) }
        if let rounds = roundThroughputs, let low = rounds.min(), let high = rounds.max() {
            parts.append(
                "\(rounds.count) rounds: \(CompareText.grouped(Int(low.rounded())))–\(CompareText.grouped(Int(high.rounded()))) msg/s"
            )
        }
        return parts.joined(separator: "; ")
    }
}

/// A backend that took part, or was left out.
public struct CompareBackend: Sendable, Encodable {
    public var name: String
    /// The URL, password redacted.
    public var url: String
    /// The client library and version (`librdkafka 2.0.2`), or `built in`.
    public var client: String
    /// Capability flags the backend claims, by display name.
    public var capabilities: [String]
    /// Why it was left out (did not answer), or nil.
    public var skipped: String?

    public init(name: String, url: String, client: String, capabilities: [String], skipped: String? = nil) {
        self.name = name
        self.url = url
        self.client = client
        self.capabilities = capabilities
        self.skipped = skipped
    }
}

/// Everything `brokerkit compare` measured.
public struct CompareReport: Sendable, Encodable {
    public var startedAt: Date
    /// `uname` of the machine, and its core count.
    public var machine: String
    public var settings: CompareSettings
    public var backends: [CompareBackend]
    public var results: [ScenarioResult]

    public init(
        startedAt: Date,
        machine: String,
        settings: CompareSettings,
        backends: [CompareBackend],
        results: [ScenarioResult]
    ) {
        self.startedAt = startedAt
        self.machine = machine
        self.settings = settings
        self.backends = backends
        self.results = results
    }

    /// Whether every scenario on every backend that took part succeeded.
    public var allSucceeded: Bool { results.allSatisfy { $0.status == .ok } }
}

/// Number formatting shared by the report's texts and `brokerkit compare`'s tables.
public enum CompareText {
    /// 12345 → "12,345".
    public static func grouped(_ value: Int) -> String {
        let digits = String(value.magnitude)
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return (value < 0 ? "-" : "") + out
    }
}
