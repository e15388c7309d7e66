@_spi(BrokerBackend) import BrokerAPI
import BrokerCompare
import Foundation

// Helpers shared by the benchmark executables (BrokerKit against a raw C client, same run).

/// Command-line argument `index` as a positive whole number, `fallback` when it is absent.
/// Anything else ends the run with exit status 2 and an error naming the argument, instead of
/// silently measuring with a default.
public func positiveArgument(_ index: Int, _ name: String, fallback: Int) -> Int {
    let arguments = CommandLine.arguments
    guard arguments.count > index else { return fallback }
    guard let value = Int(arguments[index]), value > 0 else {
        usageError("\(name) must be a positive whole number, not '\(arguments[index])'")
    }
    return value
}

/// Ends the run with exit status 2 and `message` on standard error, after the program's name.
public func usageError(_ message: String) -> Never {
    let program = URL(fileURLWithPath: CommandLine.arguments[0]).lastPathComponent
    FileHandle.standardError.write(Data("\(program): \(message)\n".utf8))
    exit(2)
}

/// Runs `body` on a thread of its own: raw C clients block, and must not do so on the
/// cooperative pool.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await DedicatedThread.run(name: "raw-client", body)
}

/// ``onThread(_:)`` for a body that throws.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await DedicatedThread.run(name: "raw-client", body)
}

/// Wall-clock time of `body`, run off the main actor as a server's request handlers run.
/// (Called from top-level code, a closure would otherwise be main-actor isolated and every
/// `await` into BrokerKit would hop off the main actor and back: two thread wake-ups per
/// call, which is the caller's cost, not the library's.)
public func measure(_ body: @escaping @Sendable () async throws -> Void) async throws -> Duration {
    try await Task.detached {
        let start = ContinuousClock.now
        try await body()
        return ContinuousClock.now - start
    }.value
}

/// CPU time this process has used so far: user + system, every thread (the C client's own
/// threads too; ``ProcessCPU``). The difference across a scenario is the client side's whole
/// CPU cost for it; a broker in another process is not counted.
public func processCPUTime() -> Duration { .interval(ProcessCPU.seconds()) }

/// Microseconds of CPU per message.
public func cpuPerMessage(_ n: Int, _ cpu: Duration) -> Double { cpu.timeInterval * 1e6 / Double(n) }

/// The `p` quantile (0...1) of `values`.
public func percentile(_ values: [Duration], _ p: Double) -> Duration {
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

/// Operations per second.
public func rate(_ n: Int, _ d: Duration) -> Double { Double(n) / d.timeInterval }

/// Milliseconds with three decimals.
public func ms(_ d: Duration) -> String { String(format: "%.3f", d.timeInterval * 1000) }

/// One scenario's figures in one round: throughput in msg/s, latency in ms.
public struct Row: Sendable {
    public let name: String
    public let kit: Double
    public let raw: Double
    /// BrokerKit ÷ raw for throughput, raw ÷ BrokerKit for latency.
    public let ratio: Double

    public init(name: String, kit: Double, raw: Double, ratio: Double) {
        self.name = name
        self.kit = kit
        self.raw = raw
        self.ratio = ratio
    }
}

/// The median of `values` (not empty).
public func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1
        ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

/// Prints the rounds as one markdown table: each scenario's medians and every round's ratio.
/// Every round lists the same scenarios in the same order.
public func printRounds(_ rounds: [[Row]], rawName: String) {
    print("| scenario | BrokerKit | \(rawName) | ratio (BrokerKit / raw speed) | ratio per round |")
    print("|---|---:|---:|---:|---|")
    for index in rounds[0].indices {
        let all = rounds.map { $0[index] }
        let format = all[0].name.contains("latency") ? "%.3f" : all[0].name.contains("CPU") ? "%.2f" : "%.0f"
        let ratios = all.map { String(format: "%.2f", $0.ratio) }.joined(separator: " / ")
        print(
            "| \(all[0].name) | \(String(format: format, median(all.map(\.kit)))) | \(String(format: format, median(all.map(\.raw)))) | \(String(format: "%.2f", median(all.map(\.ratio)))) | \(ratios) |"
        )
    }
    print("")
    let cpu =
        rounds[0].contains { $0.name.contains("CPU") }
        ? ", CPU per message raw ÷ BrokerKit (1.00 = as cheap as raw)" : ""
    print(
        "medians of \(rounds.count) rounds; ratio: throughput BrokerKit ÷ raw, latency raw ÷ BrokerKit (1.00 = as fast as raw; the target is ≥ 0.80)\(cpu)."
    )
}

/// End-to-end latency samples for BrokerKit, off the main actor: `publish(i)` one message,
/// then wait until `consumer` has it (and ack it), `count` times.
///
/// `publishAcknowledgedFirst`: the sample waits for the broker's acknowledgement of the
/// publish before it waits for the consumer (as a raw baseline does that reads the publish
/// reply before the consumer's). With `false`, as a raw baseline does that never waits for
/// the producer's delivery report: each publish call goes on in a task of its own while the
/// sample waits for the consumer, the next sample does not wait for it either, and every
/// publish call is awaited (its error thrown) after the last sample. Awaiting each one
/// before the next sample made the loop take one acknowledgement round trip per sample
/// (≈ 5.5 ms against noida-db, ≈ 2.8 s for 500 samples where the raw loop took ≈ 0.1 s), and
/// so exposed only BrokerKit's samples to whatever else the host did meanwhile.
public func sampleLatencies(
    _ count: Int,
    consumer: any MessageConsumer,
    publishAcknowledgedFirst: Bool = true,
    publish: @escaping @Sendable (Int) async throws -> Void
) async throws -> [Duration] {
    try await Task.detached {
        var samples: [Duration] = []
        if publishAcknowledgedFirst {
            for i in 0..<count {
                let start = ContinuousClock.now
                try await publish(i)
                guard let delivery = try await consumer.next() else { fatalError("consumer ended") }
                samples.append(ContinuousClock.now - start)
                try await delivery.ack()
            }
            return samples
        }
        try await withThrowingTaskGroup(of: Void.self) { publishes in
            for i in 0..<count {
                let start = ContinuousClock.now
                publishes.addTask { try await publish(i) }
                guard let delivery = try await consumer.next() else { fatalError("consumer ended") }
                samples.append(ContinuousClock.now - start)
                try await delivery.ack()
            }
            try await publishes.waitForAll()
        }
        return samples
    }.value
}

/// The p50 and p99 rows for two sets of latency samples.
public func latencyRows(kit: [Duration], raw: [Duration]) -> [Row] {
    [("p50", 0.5), ("p99", 0.99)].map { label, p in
        Row(
            name: "e2e latency \(label) (ms)",
            kit: percentile(kit, p).timeInterval * 1000,
            raw: percentile(raw, p).timeInterval * 1000,
            ratio: percentile(raw, p).timeInterval / percentile(kit, p).timeInterval
        )
    }
}

/// The whole host's CPU time so far, in clock ticks: (busy, total) over every CPU, from the
/// first line of `/proc/stat`; nil where there is no `/proc/stat`.
func hostCPUTicks() -> (busy: UInt64, total: UInt64)? {
    guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
        let line = text.split(separator: "\n").first, line.hasPrefix("cpu ")
    else { return nil }
    // user nice system idle iowait irq softirq steal
    let ticks = line.split(separator: " ").dropFirst().prefix(8).compactMap { UInt64($0) }
    guard ticks.count >= 5 else { return nil }
    let total = ticks.reduce(0, +)
    return (total - ticks[3] - ticks[4], total)
}

/// What ``waitForQuietHost()`` counts as quiet, how long it waits, and what it waited so far.
enum QuietHost {
    /// At most this share of all CPUs busy during one `window`.
    static let maxBusy = 0.15
    static let window = Duration.milliseconds(500)
    /// The longest wait until one gave up, and from then on.
    static let firstTimeout = Duration.seconds(120)
    static let laterTimeout = Duration.seconds(10)
    /// Time spent waiting so far, and how often a wait gave up.
    @MainActor static var waited: (total: Duration, gaveUp: Int) = (.zero, 0)
}

/// Waits until the host's CPUs were at most 15 % busy (over all CPUs) during half a second,
/// for at most two minutes; once a wait gave up (a host that is never that quiet, such as a
/// busy desktop), for at most ten seconds, so the run still ends in reasonable time.
///
/// Call it before each timed scenario, raw and BrokerKit alike: a broker on the same host may
/// still be busy with the previous scenario's data. noida-db, for one, rewrites its whole
/// Kafka state as one JSON file after every change, on a core of its own, for seconds (see
/// docs/benchmarks.md); without this wait a timing caught that work or not by chance. No-op
/// where `/proc/stat` is missing.
@MainActor
public func waitForQuietHost() async {
    let timeout = QuietHost.waited.gaveUp == 0 ? QuietHost.firstTimeout : QuietHost.laterTimeout
    let start = ContinuousClock.now
    guard var last = hostCPUTicks() else { return }
    while ContinuousClock.now - start < timeout {
        try? await Task.sleep(for: QuietHost.window)
        guard let now = hostCPUTicks() else { return }
        defer { last = now }
        let total = now.total - last.total
        if total > 0 && Double(now.busy - last.busy) / Double(total) <= QuietHost.maxBusy {
            QuietHost.waited.total += ContinuousClock.now - start
            return
        }
    }
    QuietHost.waited.total += ContinuousClock.now - start
    QuietHost.waited.gaveUp += 1
}

/// One line on ``waitForQuietHost()``'s waits, for a benchmark's output.
@MainActor
public func quietWaitSummary() -> String {
    func seconds(_ d: Duration) -> String { String(format: "%g s", d.timeInterval) }
    let waited = QuietHost.waited
    let gaveUp =
        waited.gaveUp == 0
        ? ""
        : "; \(waited.gaveUp) time(s) the host stayed busy (first for \(seconds(QuietHost.firstTimeout)), then \(seconds(QuietHost.laterTimeout))) and the scenario ran anyway: these figures include other work on the host"
    return
        "before each timed scenario the benchmark waited for a quiet host (CPUs ≤ \(Int(QuietHost.maxBusy * 100)) % busy for \(seconds(QuietHost.window))): \(String(format: "%.1f", waited.total.timeInterval)) s in all\(gaveUp)."
}

/// The front's own cost: the same publishes through `client` (``BrokerClient``: name, size,
/// header and kind checks, trace context, metrics) and straight to its driver, back to back.
/// `kit` is the front, `raw` the driver. Awaited one at a time and in batches of 100.
public func frontCostRows(
    _ client: BrokerClient,
    label: String,
    destination: String,
    count: Int,
    payload: Data
) async throws -> [Row] {
    let driver = client.driver
    let options = PublishOptions()
    // Each side starts on an empty queue (a queue holding the other side's messages would
    // make the later side slower or faster for reasons of its own).
    func fresh() async throws -> DestinationKind? {
        try? await client.deleteDestination(destination)
        try await client.createQueue(destination)
        return try await driver.kind(of: destination, for: .publish)
    }
    var kind = try await fresh()
    let direct = try await measure { [kind] in
        for i in 0..<count {
            _ = try await driver.publish(
                checked: [Message(id: "d\(i)", payload: payload)],
                to: destination,
                kind: kind,
                options: options
            )
        }
    }
    _ = try await fresh()
    let front = try await measure {
        for i in 0..<count { try await client.publish(Message(id: "f\(i)", payload: payload), to: destination) }
    }
    let batches = stride(from: 0, to: count, by: 100).map { start in
        (start..<min(start + 100, count)).map { Message(id: "b\($0)", payload: payload) }
    }
    kind = try await fresh()
    let directBatched = try await measure { [kind] in
        for batch in batches {
            _ = try await driver.publish(checked: batch, to: destination, kind: kind, options: options)
        }
    }
    _ = try await fresh()
    let frontBatched = try await measure {
        for batch in batches { _ = try await client.publish(batch, to: destination) }
    }
    try await client.deleteDestination(destination)
    return [
        Row(
            name: "\(label) publish-awaited (msg/s)",
            kit: rate(count, front),
            raw: rate(count, direct),
            ratio: rate(count, front) / rate(count, direct)
        ),
        Row(
            name: "\(label) publish-batched (msg/s)",
            kit: rate(count, frontBatched),
            raw: rate(count, directBatched),
            ratio: rate(count, frontBatched) / rate(count, directBatched)
        ),
    ]
}
