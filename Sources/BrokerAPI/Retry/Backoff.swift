/// How long to wait before the next delivery attempt.
///
/// ```swift
/// let backoff = Backoff.exponential(initial: .milliseconds(200), multiplier: 2, max: .seconds(30), jitter: 0.2)
/// backoff.delay(afterAttempt: 3)   // about 800 ms, ±20 %
/// ```
public struct Backoff: Sendable, CustomStringConvertible {
    enum Kind: Sendable {
        case none
        case fixed(Duration)
        case exponential(initial: Duration, multiplier: Double, max: Duration, jitter: Double)
        case custom(@Sendable (Int) -> Duration)
    }
    let kind: Kind

    /// Redeliver at once (still counted as an attempt).
    public static let none = Backoff(kind: .none)

    /// The same delay after every failure.
    public static func fixed(_ delay: Duration) -> Backoff { Backoff(kind: .fixed(delay)) }

    /// `initial * multiplier^(attempt-1)`, capped at `max`, then spread by ±`jitter` (0...1).
    public static func exponential(
        initial: Duration,
        multiplier: Double = 2,
        max: Duration,
        jitter: Double = 0
    ) -> Backoff {
        Backoff(
            kind: .exponential(
                initial: initial,
                multiplier: Swift.max(1, multiplier),
                max: max,
                jitter: Swift.min(1, Swift.max(0, jitter))
            )
        )
    }

    /// Any function of the failed attempt number (1-based).
    public static func custom(_ delay: @escaping @Sendable (Int) -> Duration) -> Backoff {
        Backoff(kind: .custom(delay))
    }

    /// The delay after attempt number `attempt` (1-based) failed.
    public func delay(afterAttempt attempt: Int) -> Duration {
        delay(afterAttempt: attempt, random: Double.random(in: 0...1))
    }

    /// Deterministic variant: `random` in 0...1 picks the point inside the jitter range.
    public func delay(afterAttempt attempt: Int, random: Double) -> Duration {
        switch kind {
        case .none:
            return .zero
        case .fixed(let delay):
            return delay
        case .exponential(let initial, let multiplier, let max, let jitter):
            let exponent = Double(Swift.max(0, attempt - 1))
            let base = Swift.min(initial.timeInterval * pow(multiplier, exponent), max.timeInterval)
            let spread = base * jitter * (random * 2 - 1)
            return .interval(Swift.max(0, Swift.min(base + spread, max.timeInterval)))
        case .custom(let function):
            return Swift.max(.zero, function(attempt))
        }
    }

    /// The bounds the delay after `attempt` falls in (useful for tests and docs).
    public func range(afterAttempt attempt: Int) -> ClosedRange<Duration> {
        let low = delay(afterAttempt: attempt, random: 0)
        let high = delay(afterAttempt: attempt, random: 1)
        return Swift.min(low, high)...Swift.max(low, high)
    }

    public var description: String {
        switch kind {
        case .none: return "none"
        case .fixed(let d): return "fixed(\(d))"
        case .exponential(let i, let m, let max, let j):
            return "exponential(initial: \(i), multiplier: \(m), max: \(max), jitter: \(j))"
        case .custom: return "custom"
        }
    }
}

private func pow(_ base: Double, _ exponent: Double) -> Double {
    var result = 1.0
    var remaining = Int(exponent)
    // Exponents are small attempt counts; cap to avoid overflow to infinity.
    remaining = Swift.min(remaining, 1024)
    while remaining > 0 {
        result *= base
        if result.isInfinite { return .greatestFiniteMagnitude }
        remaining -= 1
    }
    return result
}
