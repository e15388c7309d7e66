import Logging
import Synchronization

/// Logs a failure that may repeat (a fetch loop whose queue was deleted, a bookkeeping step
/// that keeps failing) without flooding the log: the first failure is logged at once, the
/// same failure again only after a quiet period that doubles each time (1 s, 2 s, … up to
/// `maxQuiet`), with how often it happened meanwhile; a success after failures logs that it
/// recovered. Also hands out the matching retry pause, so the loop backs off too.
///
/// ```swift
/// let failures = FailureLog(logger: logger, what: "redis consumer of 'orders'")
/// do { try await fetch(); failures.succeeded() }
/// catch { try await Task.sleep(for: failures.failed(error)) }
/// ```
@_spi(BrokerBackend) public final class FailureLog: Sendable {
    private struct State {
        var text: String?
        var count = 0
        var suppressed = 0
        var nextLog = ContinuousClock.now
        var quiet = Duration.seconds(1)
    }

    private let state = Mutex(State())
    private let logger: Logger
    private let what: String
    private let level: Logger.Level
    private let maxQuiet: Duration
    private let firstPause: Duration
    private let maxPause: Duration

    /// - Parameters:
    ///   - what: who fails, as the log line starts (`"consumer of 'orders'"`).
    ///   - firstPause / maxPause: the retry pause ``failed(_:)`` returns, doubling per
    ///     consecutive failure.
    public init(
        logger: Logger,
        what: String,
        level: Logger.Level = .warning,
        maxQuiet: Duration = .seconds(60),
        firstPause: Duration = .milliseconds(100),
        maxPause: Duration = .seconds(5)
    ) {
        self.logger = logger
        self.what = what
        self.level = level
        self.maxQuiet = maxQuiet
        self.firstPause = firstPause
        self.maxPause = maxPause
    }

    /// Records a failure; logs it unless the same text was logged within the quiet period.
    /// Returns how long to pause before trying again.
    @discardableResult
    public func failed(_ error: any Error) -> Duration { failed(String(describing: error)) }

    /// ``failed(_:)`` with the failure's text.
    @discardableResult
    public func failed(_ text: String) -> Duration {
        let now = ContinuousClock.now
        let (line, count) = state.withLock { s -> (String?, Int) in
            s.count += 1
            if s.text != text {
                s.text = text
                s.suppressed = 0
                s.quiet = .seconds(1)
                s.nextLog = now + s.quiet
                return ("\(what): \(text)", s.count)
            }
            guard now >= s.nextLog else {
                s.suppressed += 1
                return (nil, s.count)
            }
            let line = "\(what): \(text) (\(s.suppressed + 1) times since the last report, \(s.count) in a row)"
            s.suppressed = 0
            s.quiet = min(s.quiet * 2, maxQuiet)
            s.nextLog = now + s.quiet
            return (line, s.count)
        }
        if let line { logger.log(level: level, "\(line)") }
        let exponent = min(count - 1, 16)
        return min(firstPause * (1 << exponent), maxPause)
    }

    /// Records a success: after failures, logs once that it recovered.
    public func succeeded() {
        let failures = state.withLock { s -> Int in
            guard s.count > 0 else { return 0 }
            defer { s = State() }
            return s.count
        }
        if failures > 0 { logger.info("\(what): recovered after \(failures) failures in a row") }
    }

    /// Consecutive failures so far.
    public var consecutiveFailures: Int { state.withLock { $0.count } }
}
