import Foundation
import Histogram
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Monotonic nanoseconds, comparable across the tasks and threads of one process: publish
/// stamps travel in a message header and the handler subtracts them from its own reading.
enum Monotonic {
    static func nanos() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    static func seconds(from start: UInt64, to end: UInt64) -> Double {
        end > start ? Double(end - start) / 1e9 : 0
    }
}

/// CPU time (user + system) of this whole process: every thread, the C clients' included.
/// (Public for the benchmarks' CPU rows.)
public enum ProcessCPU {
    public static func seconds() -> Double {
        var usage = rusage()
        #if canImport(Glibc)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }
}

/// Latencies in microseconds, recorded from many tasks into one HdrHistogram (3 significant
/// digits, 1 µs to 1 hour).
final class LatencyRecorder: Sendable {
    private let histogram = Mutex(
        Histogram<UInt64>(
            lowestDiscernibleValue: 1,
            highestTrackableValue: 3_600_000_000,
            numberOfSignificantValueDigits: .three
        )
    )

    func record(micros: UInt64) {
        let value = min(max(micros, 1), 3_600_000_000)
        histogram.withLock { _ = $0.record(value) }
    }

    /// Records the time since a stamp taken with ``Monotonic/nanos()``.
    func record(sinceStamp stamp: UInt64) {
        let now = Monotonic.nanos()
        record(micros: now > stamp ? (now - stamp) / 1_000 : 0)
    }

    var count: UInt64 { histogram.withLock { $0.totalCount } }

    /// p50, p99 and max in milliseconds; nil when nothing was recorded.
    var summary: (p50: Double, p99: Double, max: Double)? {
        histogram.withLock { h in
            guard h.totalCount > 0 else { return nil }
            return (
                Double(h.valueAtPercentile(50)) / 1000, Double(h.valueAtPercentile(99)) / 1000, Double(h.max) / 1000
            )
        }
    }
}

/// Counts of one scenario, updated by many handlers at once.
final class ScenarioTally: Sendable {
    struct State {
        var handledIDs = Set<HandledID>()
        /// Messages handled, each group's copy counted once.
        var handled: Int { handledIDs.count }
        var duplicates = 0
        var retried = 0
        var outOfOrder = 0
        var lastSeqByKey: [String: Int] = [:]
        var lastHandledAt: UInt64 = 0
        var ready = Set<String>()
        var readyAt: UInt64 = 0
        var byGroup: [String: Int] = [:]
        var early = 0
    }

    struct HandledID: Hashable {
        var group: String
        var index: Int
    }

    private let state = Mutex(State())

    func update<R>(_ body: (inout State) -> R) -> R { state.withLock { body(&$0) } }
    var snapshot: State { state.withLock { $0 } }

    /// A first (warm-up) message reached `who`.
    func markReady(_ who: String) {
        state.withLock { s in
            if s.ready.insert(who).inserted { s.readyAt = Monotonic.nanos() }
        }
    }

    /// Message `index` was handled (by `group`); counts duplicates per group.
    func handled(_ index: Int, group: String = "") {
        let now = Monotonic.nanos()
        state.withLock { s in
            if s.handledIDs.insert(HandledID(group: group, index: index)).inserted {
                s.byGroup[group, default: 0] += 1
                s.lastHandledAt = now
            } else {
                s.duplicates += 1
            }
        }
    }
}
