import BrokerAPI
import Foundation

// Helpers shared by the benchmark executables (BrokerKit against a raw C client, same run).

/// Runs `body` on a thread of its own: raw C clients block, and must not do so on the
/// cooperative pool.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
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

/// The `p` quantile (0...1) of `values`.
public func percentile(_ values: [Duration], _ p: Double) -> Duration {
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

/// Operations per second.
public func rate(_ n: Int, _ d: Duration) -> Double { Double(n) / d.timeInterval }

/// Milliseconds with three decimals.
public func ms(_ d: Duration) -> String { String(format: "%.3f", d.timeInterval * 1000) }
