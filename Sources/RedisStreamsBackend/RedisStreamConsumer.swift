@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Synchronization

/// Stream-specific steps of ``RedisConsumer``: one Redis consumer group per BrokerKit group;
/// start positions via XGROUP CREATE when the group is new (entry ids are time-based, so a
/// timestamp is an id); the committed position is the set of acknowledged entries; a nack retries in place
/// (the member reads nothing new until the retry is due, so order holds); entries a member
/// gives back go to the pseudo-consumer `__released`, from which live members claim them.
extension RedisConsumer {
    /// Creates the group at its start position. Every start applies only when the group is
    /// new: an existing group keeps its position, so a member that joins (or restarts) never
    /// rewinds the others. `initial` is false when the stream vanished
    /// under a running member (then `.latest` reads everything the new stream gets).
    func prepareStreamGroup(_ start: StartPosition, initial: Bool) async throws {
        let at: String
        switch start {
        case .earliest:
            at = "0"
        case .latest:
            at = initial ? "$" : "0"
        case .position(let position):
            let parts = position.offset.split(separator: "-")
            guard parts.count == 2, UInt64(parts[0]) != nil, UInt64(parts[1]) != nil,
                let before = RedisMessageMapping.idBefore(position.offset)
            else {
                throw BrokerError(
                    .invalidConfiguration,
                    "position '\(position.offset)' is not a Redis entry id (milliseconds-sequence, e.g. 1700000000000-0)",
                    backend: "redis",
                    destination: destination
                )
            }
            at = before
        case .timestamp(let date):
            let ms = Int64(
                min(max(0, date.timeIntervalSince1970 * 1000), Double(RedisMessageMapping.millisRange.upperBound))
            )
            at = RedisMessageMapping.idBefore("\(ms)-0") ?? "0"
        }
        try await createGroup(at: at)  // BUSYGROUP: the group exists and keeps its position
    }

    /// The entry waits `delay` and comes again; nothing new is read meanwhile, and the entries
    /// already fetched but not handed out wait too, then come after it (else,
    /// with a deep prefetch, the handler would see 1, 2…50, 1).
    func retryInPlace(_ held: Held, after delay: Duration, nextAttempt: Int, firstFailureAt: Date) async throws {
        let entry = held.entry
        let mine = state.withLock { s -> Bool in
            guard !s.closed, s.unsettled.removeValue(forKey: entry.entryID) != nil else { return false }
            s.outstanding -= 1
            s.pendingRetries += 1
            s.retrying.insert(entry.entryID)
            return true
        }
        guard mine else { throw noLongerHeld(held) }
        let later = buffer.takeAll()
        state.withLock { $0.heldBack.append(contentsOf: later) }
        let again = Held(
            entry: RedisMessageMapping.Entry(
                entryID: entry.entryID,
                message: entry.message,
                attempt: entry.attempt,
                firstFailureAt: firstFailureAt
            ),
            attempt: nextAttempt
        )
        Task { [self] in
            try? await Task.sleep(for: delay)
            let (open, resume) = state.withLock { s -> (Bool, [Delivery]) in
                s.pendingRetries -= 1
                s.retrying.remove(entry.entryID)
                guard !s.closed, s.pendingRetries == 0 else { return (!s.closed, []) }
                defer { s.heldBack = [] }
                return (true, s.heldBack)
            }
            if open {
                push(again)
                for delivery in buffer.push(contentsOf: resume) {
                    if let id = delivery.position?.offset { settled(id) }
                }
            } else {
                try? await handToReleased([entry.entryID])
            }
            wake.signal()
        }
    }

    func handToReleased(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        _ = try await broker.client.checked(
            ["XCLAIM", RedisArgument(key), RedisArgument(group), RedisArgument(Self.released), "0"]
                + ids.map { RedisArgument($0) } + ["JUSTID"],
            destination: destination
        )
    }
}
