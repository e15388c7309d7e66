@testable import BrokerAPI
import Foundation
import Synchronization
import Testing

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
}
