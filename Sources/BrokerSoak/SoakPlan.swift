import BrokerAPI
import Foundation

/// What one soak run does: the load, its names, and which messages misbehave. Every process
/// of a run (the coordinator, publishers, workers) gets the same plan, so each can tell from a
/// message's sequence number alone what the handler must do with it and who published it.
public struct SoakPlan: Codable, Sendable, Equatable {
    /// Names this run's destinations, so runs never see each other's messages.
    public var runID: String
    /// Messages published to the queue, and the same number to the stream.
    public var messages: Int
    /// Distinct message keys.
    public var keys: Int
    /// Publisher processes; each owns the keys `k` with `k % publishers == index`, so the
    /// messages of one key are published by one process in sequence order.
    public var publishers: Int
    /// Worker processes.
    public var workers: Int
    /// Handlers per `DeliveryProcessor` in each worker.
    public var concurrency: Int
    /// Share of messages (percent) whose handler throws a `NonRetryable` error.
    public var poisonPercent: Double
    /// Share of messages (percent) whose handler fails on attempts 1 and 2, then succeeds.
    public var flakyPercent: Double
    /// Delayed jobs, due over the publishing time.
    public var jobs: Int
    /// Messages per second over all publishers (to each destination).
    public var rate: Int
    /// Messages per publish call; every fifth batch goes out one awaited publish at a time.
    public var batch: Int
    /// Partitions of the stream (where the backend has them).
    public var partitions: Int
    /// Queue visibility timeout: how soon a killed worker's queue messages come back.
    public var visibilityTimeoutMillis: Int
    /// First retry backoff; doubling, at most ten times this. Short by default: a nacked
    /// stream message is retried in place and holds its partition meanwhile (on RabbitMQ the
    /// whole group, which has one active member), so the backoff bounds a group's rate.
    public var backoffMillis: Int

    public init(
        runID: String = String(UInt32.random(in: 0...UInt32.max), radix: 16),
        messages: Int = 100_000,
        keys: Int = 64,
        publishers: Int = 2,
        workers: Int = 3,
        concurrency: Int = 8,
        poisonPercent: Double = 5,
        flakyPercent: Double = 5,
        jobs: Int = 1_000,
        rate: Int = 2_000,
        batch: Int = 20,
        partitions: Int = 4,
        visibilityTimeoutMillis: Int = 10_000,
        backoffMillis: Int = 10
    ) {
        self.runID = runID
        self.messages = messages
        self.keys = keys
        self.publishers = publishers
        self.workers = workers
        self.concurrency = concurrency
        self.poisonPercent = poisonPercent
        self.flakyPercent = flakyPercent
        self.jobs = jobs
        self.rate = rate
        self.batch = batch
        self.partitions = partitions
        self.visibilityTimeoutMillis = visibilityTimeoutMillis
        self.backoffMillis = backoffMillis
    }

    public var queue: String { "soak-\(runID)-queue" }
    public var stream: String { "soak-\(runID)-stream" }
    public var jobQueue: String { "soak-\(runID)-jobs" }
    /// The stream's two consumer groups.
    public static let groups = ["g1", "g2"]
    /// Where a handled message was consumed: the queue or one of the stream's groups.
    public static let consumers = ["queue"] + groups

    /// Seconds the publishers take at `rate`.
    public var publishSeconds: Double { Double(messages) / Double(max(1, rate)) }

    public enum Kind: String, Sendable, Codable { case normal, poison, flaky }

    /// What the handler does with message `seq`: a fixed pseudo-random choice, the same in
    /// every process.
    public func kind(of seq: Int) -> Kind {
        var x = UInt64(truncatingIfNeeded: seq) &+ 0x9E37_79B9_7F4A_7C15
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        x ^= x >> 31
        let percent = Double(x % 1_000_000) / 10_000
        if percent < poisonPercent { return .poison }
        if percent < poisonPercent + flakyPercent { return .flaky }
        return .normal
    }

    public func key(of seq: Int) -> String { "k\(seq % max(1, keys))" }
    public func publisher(of seq: Int) -> Int { (seq % max(1, keys)) % max(1, publishers) }
    /// The sequence numbers publisher `index` publishes, in order.
    public func sequence(ofPublisher index: Int) -> [Int] { (0..<messages).filter { publisher(of: $0) == index } }
    /// Jobs are dispatched by publisher 0, each due `jobDelay(j)` after it is dispatched.
    public func jobDelay(_ job: Int) -> Duration {
        .milliseconds(Int64(Double(job + 1) / Double(max(1, jobs)) * publishSeconds * 1000))
    }

    /// The retry policy every consumer of the run uses: five attempts (a message that fails
    /// twice succeeds on its third), exponential backoff from `backoffMillis`.
    public var retryPolicy: RetryPolicy {
        RetryPolicy(
            maxAttempts: 5,
            backoff: .exponential(
                initial: .milliseconds(Int64(backoffMillis)),
                max: .milliseconds(Int64(backoffMillis) * 10),
                jitter: 0.2
            )
        )
    }

    public func encoded() -> String { String(decoding: (try? JSONEncoder().encode(self)) ?? Data(), as: UTF8.self) }
    public static func decode(_ text: String) throws -> SoakPlan {
        try JSONDecoder().decode(SoakPlan.self, from: Data(text.utf8))
    }
}

/// The payload of a soak message and of a soak job: its sequence number.
public struct SoakJob: Job {
    public static let name = "soak"
    public var seq: Int
    /// When the job is due, in milliseconds since 1970 (the dispatcher's clock, read before
    /// dispatching: the broker's due time is never earlier).
    public var dueMillis: Int64
    public init(seq: Int, dueMillis: Int64) {
        self.seq = seq
        self.dueMillis = dueMillis
    }
}
