import Foundation

/// A dedicated OS thread that runs blocking work (C client calls) one job at a time, in
/// submission order. Backends give each non-thread-safe C connection (a hiredis context, a
/// rabbitmq-c connection) its own `ConnectionThread`, so blocking calls never run on Swift's
/// cooperative thread pool and the connection is only ever touched by one thread.
///
/// ```swift
/// let thread = ConnectionThread(name: "redis-publisher")
/// let reply = try await thread.run { try connection.command(["PING"]) }
/// thread.shutdown()
/// ```
@_spi(BrokerBackend) public final class ConnectionThread: Sendable {
    /// The job queue. `@unchecked Sendable` is safe: `jobs` and `stopped` are only touched
    /// while holding `condition`.
    private final class Core: @unchecked Sendable {
        let condition = NSCondition()
        var jobs: [@Sendable () -> Void] = []
        var stopped = false

        /// Appends `job` unless stopped; returns whether it was accepted.
        func enqueue(_ job: @escaping @Sendable () -> Void) -> Bool {
            condition.lock()
            defer { condition.unlock() }
            guard !stopped else { return false }
            jobs.append(job)
            condition.signal()
            return true
        }

        func stop() {
            condition.lock()
            stopped = true
            condition.signal()
            condition.unlock()
        }

        /// The thread's loop: run jobs until stopped and drained. After a job it polls briefly
        /// before sleeping: request/response traffic usually sends the next job within
        /// microseconds, and a futex sleep + wake costs more than that.
        func loop() {
            while true {
                var spins = 0
                while spins < 200 {
                    condition.lock()
                    let ready = !jobs.isEmpty || stopped
                    condition.unlock()
                    if ready { break }
                    spins += 1
                    if spins % 20 == 0 { sched_yield() }
                }
                condition.lock()
                while jobs.isEmpty && !stopped { condition.wait() }
                if jobs.isEmpty && stopped {
                    condition.unlock()
                    return
                }
                let job = jobs.removeFirst()
                condition.unlock()
                job()
            }
        }
    }

    private let core = Core()
    public let name: String

    public init(name: String, stackSize: Int? = nil) {
        self.name = name
        let core = self.core
        DedicatedThread.start(name: name, stackSize: stackSize) { core.loop() }
    }

    /// Dropped without ``shutdown()`` (its owner was dropped without being closed): the
    /// thread runs the jobs already queued, then ends.
    deinit { core.stop() }

    /// Runs `body` on the thread and returns its result. Throws ``BrokerError/Code/closed``
    /// after ``shutdown()``.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let accepted = core.enqueue { continuation.resume(with: Result { try body() }) }
            if !accepted { continuation.resume(throwing: BrokerError.closed("connection thread '\(name)'")) }
        }
    }

    /// Fire-and-forget variant for cleanup work; ignored after ``shutdown()``.
    public func submit(_ body: @escaping @Sendable () -> Void) {
        _ = core.enqueue(body)
    }

    /// Like ``submit(_:)``, but says whether the job was accepted (`false` after shutdown).
    public func trySubmit(_ body: @escaping @Sendable () -> Void) -> Bool {
        core.enqueue(body)
    }

    /// Lets queued jobs finish, then ends the thread. Idempotent.
    public func shutdown() { core.stop() }
}
