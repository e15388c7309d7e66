import Foundation
import Synchronization
import Testing

@_spi(BrokerBackend) @testable import BrokerAPI

@Suite("AsyncSemaphore")
struct AsyncSemaphoreTests {
    /// A release that lands while an acquirer is between "no permit" and "waiting" must still
    /// wake it. (It did not: the DeliveryProcessor's fetch task then waited forever with no
    /// handler running, and a queue stopped being consumed with prefetch-many messages held.)
    @Test func releaseRacingAnAcquireIsNeverLost() async throws {
        for round in 0..<20_000 {
            let semaphore = AsyncSemaphore(0)
            let done = Mutex(false)
            let acquirer = Task { try await semaphore.acquire() }
            let releaser = Task.detached { semaphore.release() }
            // A lost release leaves the acquirer waiting forever: after 2 s, record it and
            // release once more so the test ends instead of hanging.
            let watchdog = Task {
                try await Task.sleep(for: .seconds(2))
                guard !done.withLock({ $0 }) else { return false }
                semaphore.release()
                return true
            }
            try await acquirer.value
            done.withLock { $0 = true }
            watchdog.cancel()
            if (try? await watchdog.value) == true {
                Issue.record("round \(round): a release racing the acquire was lost")
                return
            }
            await releaser.value
        }
    }

    /// Permits are counted: n releases let exactly n acquirers through, and a cancelled waiter
    /// takes no permit.
    @Test func permitsAreCountedAndCancelledWaitersTakeNone() async throws {
        let semaphore = AsyncSemaphore(2)
        try await semaphore.acquire()
        try await semaphore.acquire()
        let cancelled = Task { try await semaphore.acquire() }
        try await Task.sleep(for: .milliseconds(20))
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        let third = Task { try await semaphore.acquire() }
        semaphore.release()
        try await withBrokerTimeout(.seconds(2), what: "third acquire") { try await third.value }
        // No permit left: the next acquirer waits until one more release.
        let fourth = Task { try await semaphore.acquire() }
        try await Task.sleep(for: .milliseconds(20))
        #expect(semaphore.available == 0)
        semaphore.release()
        try await withBrokerTimeout(.seconds(2), what: "fourth acquire") { try await fourth.value }
    }

    /// Two releases back to back, with two tasks waiting: both get through. The first
    /// release wakes one waiter; the second finds that wake still pending and wakes nobody,
    /// so the woken waiter must wake the next one when it takes its permit and sees one left.
    @Test func backToBackReleasesWakeEveryWaiter() async throws {
        for round in 0..<300 {
            let semaphore = AsyncSemaphore(0)
            let first = Task { try await semaphore.acquire() }
            let second = Task { try await semaphore.acquire() }
            try await Task.sleep(for: .milliseconds(2))  // both waiting (most rounds)
            let started = ContinuousClock.now
            semaphore.release()
            semaphore.release()
            // A lost wake-up leaves one waiting: release twice more after 2 s so the test
            // ends, and fail it.
            let watchdog = Task {
                try await Task.sleep(for: .seconds(2))
                semaphore.release()
                semaphore.release()
            }
            try await first.value
            try await second.value
            watchdog.cancel()
            if ContinuousClock.now - started >= .seconds(2) {
                Issue.record("round \(round): a waiter was not woken by two releases")
                return
            }
        }
    }

    /// A release returns its permit and wakes one waiter, which takes it only if the
    /// releasing task did not take it back first (a processor worker with a quick handler
    /// keeps going without suspending). Under contention that must still admit at most
    /// `permits` tasks at once and lose no wake-up: 16 tasks × 2,000 turns each finish, and
    /// each does (a lost wake-up leaves tasks waiting; the watchdog then fails the test
    /// instead of letting it hang).
    @Test(arguments: [1, 3])
    func contendedTurnsAreExclusiveAndNoWakeUpIsLost(permits: Int) async throws {
        let semaphore = AsyncSemaphore(permits)
        let tally = Tally()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    for turn in 0..<2_000 {
                        try await semaphore.acquire()
                        tally.enter()
                        if turn % 100 == 0 { await Task.yield() }
                        tally.leave()
                        semaphore.release()
                    }
                    tally.finish()
                }
            }
            group.addTask {
                // A lost wake-up: release enough permits for every task to finish, then fail.
                try await Task.sleep(for: .seconds(30))
                guard tally.finished < 16 else { return }
                Issue.record("\(16 - tally.finished) tasks still waiting after 30 s: a wake-up was lost")
                for _ in 0..<64 { semaphore.release() }
            }
            for _ in 0..<16 { try await group.next() }
            group.cancelAll()
        }
        #expect(tally.finished == 16)
        #expect(tally.most <= permits, "more than \(permits) tasks held a permit at once")
        #expect(semaphore.available == permits)
    }
}

/// How many tasks hold a permit now and at most, and how many finished.
private final class Tally: Sendable {
    private let state = Mutex<(inside: Int, most: Int, finished: Int)>((0, 0, 0))
    func enter() {
        state.withLock {
            $0.inside += 1
            $0.most = max($0.most, $0.inside)
        }
    }
    func leave() { state.withLock { $0.inside -= 1 } }
    func finish() { state.withLock { $0.finished += 1 } }
    var most: Int { state.withLock { $0.most } }
    var finished: Int { state.withLock { $0.finished } }
}
