@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// What a soak run proved, computed from every process's ledger and from the broker's own
/// dead-letter queues at the end.
public struct SoakReport: Codable, Sendable {
    public struct Publishing: Codable, Sendable {
        /// `queue`, `stream` or `jobs`.
        public var destination: String
        public var attempted: Int
        public var confirmed: Int
        /// Published but never confirmed (the publisher died, or its call failed and a retry
        /// was confirmed instead — then it is confirmed too and not counted here).
        public var notConfirmed: Int
        /// Of those, how many reached a consumer or the DLQ anyway.
        public var notConfirmedArrived: Int
    }

    public struct Consumption: Codable, Sendable {
        /// `queue`, `g1` or `g2`.
        public var consumer: String
        /// Confirmed messages this consumer had to handle or dead-letter.
        public var expected: Int
        public var handledOnce: Int
        public var handledMoreThanOnce: Int
        public var maxHandledCount: Int
        public var poisonExpected: Int
        /// Distinct messages in the DLQ for this consumer, and extra copies of them.
        public var deadLettered: Int
        public var deadLetterCopies: Int
        /// Poison messages (confirmed) that are not in the DLQ.
        public var poisonMissingFromDLQ: [Int]
        /// DLQ entries for messages that are not poison.
        public var unexpectedInDLQ: [Int]
        /// DLQ entries whose reason does not name the handler's error.
        public var wrongReason: Int
        /// Confirmed, neither handled nor dead-lettered, and more than the broker still holds
        /// for this consumer at the end: lost.
        public var lost: [Int]
        /// Confirmed and not accounted for, but the broker still holds at least as many for this
        /// consumer at the end (queue depth + delayed, or the group's lag + pending): not lost,
        /// not finished within the settle time.
        public var unfinished: Int
        /// What the broker still held for this consumer at the end.
        public var brokerBacklog: Int
        /// Messages first delivered after a later message of the same key (stream groups).
        public var orderViolations: Int
        /// Whether the backend keeps per-key order across a group's members (then a violation fails the run).
        public var orderEnforced: Bool
    }

    public struct Jobs: Codable, Sendable {
        public var confirmed: Int
        public var ran: Int
        public var ranMoreThanOnce: Int
        public var early: [Int]
        /// Confirmed jobs that never ran, more than the job queue still holds at the end.
        public var lost: [Int]
        /// Confirmed jobs that never ran while the job queue still holds at least as many.
        public var unfinished: Int
        /// The latest job's lateness (first run − due), in milliseconds.
        public var maxLatenessMillis: Int
        public var medianLatenessMillis: Int
    }

    public struct Fault: Codable, Sendable {
        public var kind: String
        public var detail: String
        public var atSeconds: Double
        public var endSeconds: Double
        /// From the fault's start until, at or after its end, a second's throughput was back to
        /// half the rate of the five seconds before it (nil: no load before it, or none after).
        public var recoverySeconds: Double?
    }

    public var backend: String
    public var url: String
    public var plan: SoakPlan
    public var date: String
    public var durationSeconds: Double
    public var publishing: [Publishing]
    public var consumers: [Consumption]
    public var jobs: Jobs
    public var faults: [Fault]
    /// Handled messages per second (all consumers), before the first fault and from the first
    /// fault's start to the last one's end.
    public var throughputBefore: Double
    public var throughputDuring: Double
    /// Handled messages (successful handler runs, every consumer) per second of the run.
    public var timeline: [Int]
    public var clientCPUSeconds: Double
    public var cpuMicrosPerHandled: Double
    public var peakWorkerRSSMiB: Double
    /// Workers that exited on their own (not killed by the harness) and were started again.
    public var workerExits: [String]
    public var failures: [String]
    public var passed: Bool { failures.isEmpty }
}

/// Dead letters read back from the broker: which consumer, which message, why.
public struct SoakDeadLetter: Sendable {
    public var consumer: String
    public var seq: Int?
    public var reason: String
    public init(consumer: String, seq: Int?, reason: String) {
        self.consumer = consumer
        self.seq = seq
        self.reason = reason
    }
}

/// Resource use of the client processes, sampled by the coordinator.
/// What the broker still holds at the end, per consumer (`queue`, `g1`, `g2`, `jobs`).
public typealias SoakBacklog = [String: Int]

public struct SoakResources: Sendable {
    public var cpuSeconds: Double = 0
    public var peakWorkerRSSKiB: Int = 0
    public init() {}
}

public enum SoakAnalysis {
    public static func report(
        backend: String,
        url: String,
        plan: SoakPlan,
        events: [SoakEvent],
        deadLetters: [SoakDeadLetter],
        resources: SoakResources,
        orderEnforced: Bool,
        began: Int64,
        ended: Int64,
        backlog: SoakBacklog = [:]
    ) -> SoakReport {
        // Publishing.
        var attempted: [String: Set<Int>] = [:]
        var confirmed: [String: Set<Int>] = [:]
        var jobDue: [Int: Int64] = [:]
        var runs: [String: [Int: Int]] = [:]  // consumer → seq → successful runs
        var touched: [String: Set<Int>] = [:]  // consumer → seqs any handler saw
        var firstSeen: [String: [Int: Int64]] = [:]
        var jobRuns: [Int: [(micros: Int64, due: Int64)]] = [:]
        var faultEvents: [SoakEvent] = []
        var exits: [String] = []
        var okMicros: [Int64] = []
        for event in events {
            let f = event.fields
            switch event.name {
            case "try" where f.count >= 2: attempted[f[0], default: []].formUnion(SeqList.parse(f[1]))
            case "ok" where f.count >= 2: confirmed[f[0], default: []].formUnion(SeqList.parse(f[1]))
            case "jobok" where f.count >= 2:
                if let seq = Int(f[0]), let due = Int64(f[1]) { jobDue[seq] = due }
            case "run" where f.count >= 4:
                guard let seq = Int(f[1]) else { continue }
                touched[f[0], default: []].insert(seq)
                if let seen = firstSeen[f[0]]?[seq], seen <= event.micros {
                } else {
                    firstSeen[f[0], default: [:]][seq] = event.micros
                }
                if f[3] == "ok" {
                    runs[f[0], default: [:]][seq, default: 0] += 1
                    okMicros.append(event.micros)
                }
            case "job" where f.count >= 2:
                if let seq = Int(f[0]), let due = Int64(f[1]) { jobRuns[seq, default: []].append((event.micros, due)) }
            case "fault": faultEvents.append(event)
            case "exit" where f.count >= 3:
                exits.append(
                    "worker \(f[1]) exited with status \(f[2]) at \(String(format: "%.1f", Double(event.micros - began) / 1_000_000)) s"
                )
            default: break
            }
        }
        for (seq, _) in jobDue { attempted["jobs", default: []].insert(seq) }
        confirmed["jobs"] = Set(jobDue.keys)

        var dlq: [String: [Int: Int]] = [:]
        var wrongReason: [String: Int] = [:]
        for letter in deadLetters {
            guard let seq = letter.seq else {
                wrongReason[letter.consumer, default: 0] += 1
                continue
            }
            dlq[letter.consumer, default: [:]][seq, default: 0] += 1
            if !letter.reason.contains("poison message \(seq)") { wrongReason[letter.consumer, default: 0] += 1 }
        }

        var failures: [String] = []
        var publishing: [SoakReport.Publishing] = []
        for destination in ["queue", "stream", "jobs"] {
            let tried = attempted[destination] ?? []
            let done = confirmed[destination] ?? []
            let missing = tried.subtracting(done)
            let consumersOf = destination == "queue" ? ["queue"] : destination == "stream" ? SoakPlan.groups : []
            let arrived: Int
            if destination == "jobs" {
                arrived = missing.filter { jobRuns[$0] != nil }.count
            } else {
                arrived =
                    missing.filter { seq in
                        consumersOf.contains { (touched[$0]?.contains(seq) ?? false) || dlq[$0]?[seq] != nil }
                    }.count
            }
            publishing.append(
                .init(
                    destination: destination,
                    attempted: tried.count,
                    confirmed: done.count,
                    notConfirmed: missing.count,
                    notConfirmedArrived: arrived
                )
            )
        }

        var consumers: [SoakReport.Consumption] = []
        for consumer in SoakPlan.consumers {
            let expected = confirmed[consumer == "queue" ? "queue" : "stream"] ?? []
            let handled = runs[consumer] ?? [:]
            let dead = dlq[consumer] ?? [:]
            let poison = Set(expected.filter { plan.kind(of: $0) == .poison })
            let unaccounted = expected.filter { handled[$0] == nil && dead[$0] == nil }.sorted()
            // Which of them the broker still holds is not known message by message: count the
            // backlog against them, and call only the rest lost.
            let held = backlog[consumer] ?? 0
            let unfinished = min(unaccounted.count, held)
            let lost = unfinished == 0 ? unaccounted : (unaccounted.count > held ? unaccounted : [])
            let missing = poison.filter { dead[$0] == nil }.sorted()
            let unexpected = dead.keys.filter { plan.kind(of: $0) != .poison }.sorted()
            var violations = 0
            if consumer != "queue", let seen = firstSeen[consumer] {
                var latest: [String: Int64] = [:]
                for seq in seen.keys.sorted() {
                    guard let at = seen[seq] else { continue }
                    let key = plan.key(of: seq)
                    if let before = latest[key], at < before { violations += 1 } else { latest[key] = at }
                }
            }
            let enforced = consumer != "queue" && orderEnforced
            let row = SoakReport.Consumption(
                consumer: consumer,
                expected: expected.count,
                handledOnce: handled.values.filter { $0 == 1 }.count,
                handledMoreThanOnce: handled.values.filter { $0 > 1 }.count,
                maxHandledCount: handled.values.max() ?? 0,
                poisonExpected: poison.count,
                deadLettered: dead.count,
                deadLetterCopies: dead.values.reduce(0) { $0 + $1 - 1 },
                poisonMissingFromDLQ: missing,
                unexpectedInDLQ: unexpected,
                wrongReason: wrongReason[consumer] ?? 0,
                lost: lost,
                unfinished: lost.isEmpty ? unfinished : 0,
                brokerBacklog: held,
                orderViolations: violations,
                orderEnforced: enforced
            )
            if !lost.isEmpty {
                failures.append(
                    "\(consumer): \(lost.count) confirmed messages neither handled nor dead-lettered, more than the broker still holds (\(held)): lost (first: \(lost.prefix(10).map(String.init).joined(separator: ", ")))"
                )
            } else if unfinished > 0 {
                failures.append(
                    "\(consumer): \(unfinished) confirmed messages not handled within the settle time (the broker still holds \(held) for it)"
                )
            }
            if !missing.isEmpty {
                failures.append(
                    "\(consumer): \(missing.count) poison messages missing from the DLQ (first: \(missing.prefix(10).map(String.init).joined(separator: ", ")))"
                )
            }
            if !unexpected.isEmpty {
                failures.append(
                    "\(consumer): \(unexpected.count) messages in the DLQ that are not poison (first: \(unexpected.prefix(10).map(String.init).joined(separator: ", ")))"
                )
            }
            if row.wrongReason > 0 {
                failures.append(
                    "\(consumer): \(row.wrongReason) DLQ entries whose reason does not name the handler's error"
                )
            }
            if enforced, violations > 0 { failures.append("\(consumer): \(violations) per-key order violations") }
            consumers.append(row)
        }

        // Jobs.
        var early: [Int] = []
        var jobLost: [Int] = []
        var lateness: [Int64] = []
        var ranTwice = 0
        for (seq, due) in jobDue {
            guard let ran = jobRuns[seq], let first = ran.min(by: { $0.micros < $1.micros }) else {
                jobLost.append(seq)
                continue
            }
            if ran.count > 1 { ranTwice += 1 }
            _ = due
            if ran.contains(where: { $0.micros / 1000 < $0.due }) { early.append(seq) }
            lateness.append(first.micros / 1000 - first.due)
        }
        lateness.sort()
        let jobsHeld = backlog["jobs"] ?? 0
        let jobsUnfinished = jobLost.count <= jobsHeld ? jobLost.count : 0
        if jobsUnfinished > 0 { jobLost = [] }
        let jobs = SoakReport.Jobs(
            confirmed: jobDue.count,
            ran: jobRuns.keys.count,
            ranMoreThanOnce: ranTwice,
            early: early.sorted(),
            lost: jobLost.sorted(),
            unfinished: jobsUnfinished,
            maxLatenessMillis: Int(lateness.last ?? 0),
            medianLatenessMillis: Int(lateness.isEmpty ? 0 : lateness[lateness.count / 2])
        )
        if !early.isEmpty { failures.append("jobs: \(early.count) delayed jobs ran before they were due") }
        if !jobLost.isEmpty {
            failures.append(
                "jobs: \(jobLost.count) confirmed jobs never ran, more than the job queue still holds (\(jobsHeld)): lost"
            )
        }
        if jobsUnfinished > 0 {
            failures.append(
                "jobs: \(jobsUnfinished) confirmed jobs did not run within the settle time (the job queue still holds \(jobsHeld))"
            )
        }

        // Timeline and faults.
        let seconds = max(1, Int((ended - began) / 1_000_000) + 1)
        var timeline = [Int](repeating: 0, count: seconds)
        for micros in okMicros {
            let second = Int((micros - began) / 1_000_000)
            if second >= 0, second < seconds { timeline[second] += 1 }
        }
        func at(_ micros: Int64) -> Double { Double(micros - began) / 1_000_000 }
        var faults: [SoakReport.Fault] = []
        for event in faultEvents.sorted(by: { $0.micros < $1.micros }) {
            let kind = event.fields.first ?? "?"
            let end = event.fields.count > 1 ? Int64(event.fields[1]) ?? event.micros : event.micros
            let detail = event.fields.count > 2 ? event.fields[2] : ""
            let startSecond = Int(at(event.micros))
            let endSecond = max(startSecond, Int(at(end)))
            let window = timeline[max(0, startSecond - 5)..<min(timeline.count, max(0, startSecond))]
            let before = window.isEmpty ? 0 : Double(window.reduce(0, +)) / Double(window.count)
            var recovery: Double?
            if before > 0 {
                for second in endSecond..<timeline.count where Double(timeline[second]) >= before / 2 {
                    recovery = max(0, Double(second + 1) - at(event.micros))
                    break
                }
            }
            faults.append(
                .init(
                    kind: kind,
                    detail: detail,
                    atSeconds: at(event.micros),
                    endSeconds: at(end),
                    recoverySeconds: recovery
                )
            )
        }
        let firstFault = faults.map(\.atSeconds).min()
        let lastFaultEnd = faults.map(\.endSeconds).max()
        func rate(_ from: Double, _ to: Double) -> Double {
            guard to > from else { return 0 }
            let count = okMicros.filter { at($0) >= from && at($0) < to }.count
            return Double(count) / (to - from)
        }
        let firstHandled = okMicros.min().map(at) ?? 0
        let lastHandled = okMicros.max().map(at) ?? 0
        let before = firstFault.map { rate(firstHandled, $0) } ?? rate(firstHandled, lastHandled)
        let during = firstFault.flatMap { start in lastFaultEnd.map { rate(start, max($0, start + 1)) } } ?? 0
        let handledTotal = okMicros.count
        return SoakReport(
            backend: backend,
            url: url,
            plan: plan,
            date: ISO8601.format(Date()),
            durationSeconds: at(ended),
            publishing: publishing,
            consumers: consumers,
            jobs: jobs,
            faults: faults,
            throughputBefore: before,
            throughputDuring: during,
            timeline: timeline,
            clientCPUSeconds: resources.cpuSeconds,
            cpuMicrosPerHandled: handledTotal == 0 ? 0 : resources.cpuSeconds * 1_000_000 / Double(handledTotal),
            peakWorkerRSSMiB: Double(resources.peakWorkerRSSKiB) / 1024,
            workerExits: exits,
            failures: failures
        )
    }
}
