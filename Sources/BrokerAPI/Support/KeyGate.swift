import Synchronization

/// Serializes work per key in arrival order; different keys run in parallel. Taking a place
/// and leaving are synchronous; only a ticket whose key is busy waits.
final class KeyGate: Sendable {
    private struct State {
        var queues: [String: [UInt64]] = [:]
        var keyOfTicket: [UInt64: String] = [:]
        var waiting: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextTicket: UInt64 = 0
    }
    private let state = Mutex(State())

    /// Takes a place in `key`'s line; `nil` keys never wait.
    func enqueue(_ key: String?) -> UInt64? {
        guard let key else { return nil }
        return state.withLock { s in
            s.nextTicket += 1
            s.queues[key, default: []].append(s.nextTicket)
            s.keyOfTicket[s.nextTicket] = key
            return s.nextTicket
        }
    }

    private static func isFirst(_ ticket: UInt64, _ s: State) -> Bool {
        guard let key = s.keyOfTicket[ticket] else { return true }
        return s.queues[key]?.first == ticket
    }

    func wait(_ ticket: UInt64) async {
        if state.withLock({ Self.isFirst(ticket, $0) }) { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            // The ticket ahead may have left since the check above.
            let now = state.withLock { s -> Bool in
                if Self.isFirst(ticket, s) { return true }
                s.waiting[ticket] = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    func done(_ ticket: UInt64) {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard let key = s.keyOfTicket.removeValue(forKey: ticket) else { return nil }
            var line = s.queues[key] ?? []
            line.removeAll { $0 == ticket }
            if line.isEmpty {
                s.queues[key] = nil
                return nil
            }
            s.queues[key] = line
            return s.waiting.removeValue(forKey: line[0])
        }
        next?.resume()
    }
}

/// A shared counter (the processor counts its live workers with it).
final class RunningCount: Sendable {
    private let count = Atomic<Int>(0)
    @discardableResult
    func add(_ delta: Int) -> Int { count.wrappingAdd(delta, ordering: .acquiringAndReleasing).newValue }
    var value: Int { count.load(ordering: .acquiring) }
}
