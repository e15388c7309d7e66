import Synchronization

/// A counting semaphore for tasks.
///
/// A release does not hand its permit to a waiter: it returns the permit and wakes the first
/// waiter, which then takes it if it is still there. So a task that releases and acquires
/// again at once (a processor worker whose handler was quick) takes the permit back without
/// suspending, where a hand-off cost every delivery a suspension and a resumption. A woken
/// waiter that finds the permit taken waits again, first in line; at most one waiter is woken
/// at a time, so a run of quick releases and re-acquires wakes nobody in vain more than once.
final class AsyncSemaphore: Sendable {
    private struct State {
        var permits: Int
        var waiters: [(UInt64, CheckedContinuation<Void, any Error>)] = []
        var nextID: UInt64 = 0
        var cancelled: Set<UInt64> = []
        /// A waiter was woken and has not looked at the permits yet.
        var wakePending = false
    }
    private let state: Mutex<State>

    init(_ permits: Int) { state = Mutex(State(permits: permits)) }

    /// Permits not taken right now.
    var available: Int { state.withLock { $0.permits } }

    func acquire() async throws {
        let taken = state.withLock { s -> Bool in
            guard s.permits > 0 else { return false }
            s.permits -= 1
            return true
        }
        if taken { return }
        var first = false
        while true {
            try await wait(first: first)
            // Woken by a release: take its permit if no other task took it meanwhile (and
            // wake the next waiter if permits are left, which a release skipped while this
            // wake was pending).
            let (got, next) = state.withLock { s -> (Bool, CheckedContinuation<Void, any Error>?) in
                s.wakePending = false
                guard s.permits > 0 else { return (false, nil) }
                s.permits -= 1
                return (true, Self.wakeOne(&s))
            }
            next?.resume()
            if got { return }
            first = true
        }
    }

    /// Waits until a release wakes this task (returns at once when a permit is there by now;
    /// ``acquire()`` then takes it as a woken waiter does).
    private func wait(first: Bool) async throws {
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                // A release may have come between the check and here: do not wait for a
                // release that already happened.
                enum Registration { case waiting, cancelled, permitThere }
                let registration = state.withLock { s -> Registration in
                    if s.cancelled.remove(id) != nil { return .cancelled }
                    if s.permits > 0 { return .permitThere }  // acquire() takes it as a woken waiter
                    if first {
                        s.waiters.insert((id, continuation), at: 0)
                    } else {
                        s.waiters.append((id, continuation))
                    }
                    return .waiting
                }
                switch registration {
                case .waiting: break
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .permitThere: continuation.resume()
                }
            }
        } onCancel: {
            let continuation = state.withLock { s -> CheckedContinuation<Void, any Error>? in
                if let index = s.waiters.firstIndex(where: { $0.0 == id }) {
                    return s.waiters.remove(at: index).1
                }
                s.cancelled.insert(id)
                return nil
            }
            continuation?.resume(throwing: CancellationError())
        }
        // A cancellation that came after the wake left its id behind: drop it.
        state.withLock { _ = $0.cancelled.remove(id) }
    }

    func release() {
        let continuation = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            s.permits += 1
            return Self.wakeOne(&s)
        }
        continuation?.resume()
    }

    /// The first waiter, to wake, when a permit is there and no wake is pending.
    private static func wakeOne(_ s: inout State) -> CheckedContinuation<Void, any Error>? {
        guard s.permits > 0, !s.wakePending, !s.waiters.isEmpty else { return nil }
        s.wakePending = true
        return s.waiters.removeFirst().1
    }
}
