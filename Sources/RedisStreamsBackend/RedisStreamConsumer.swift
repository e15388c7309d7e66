import BrokerAPI
import Foundation
import Synchronization

/// Stream-specific steps of ``RedisConsumer``: one Redis consumer group per BrokerKit group;
/// start positions via XGROUP CREATE / SETID (entry ids are time-based, so a timestamp is an
/// id); the committed position is the set of acknowledged entries; a nack retries in place
/// (the member reads nothing new until the retry is due, so order holds); entries a member
/// gives back go to the pseudo-consumer `__released`, from which live members claim them.
extension RedisConsumer {
    func prepareStreamGroup(_ start: StartPosition, initial: Bool) async throws {
        switch start {
        case .earliest, .position, .timestamp:
            try await createGroup(at: "0")
        case .latest:
            try await createGroup(at: initial ? "$" : "0")
        }
        guard initial else { return }
        var seekTo: String?
        switch start {
        case .position(let position):
            let parts = position.offset.split(separator: "-")
            guard parts.count == 2, UInt64(parts[0]) != nil, UInt64(parts[1]) != nil else {
                throw BrokerError(
                    .invalidConfiguration, "position '\(position.offset)' is not a Redis entry id (milliseconds-sequence, e.g. 1700000000000-0)",
                    backend: "redis", destination: destination)
            }
            seekTo = RedisFieldLayout.idBefore(position.offset)
        case .timestamp(let date):
            seekTo = RedisFieldLayout.idBefore("\(max(0, Int64(date.timeIntervalSince1970 * 1000)))-0")
        case .earliest, .latest:
            seekTo = nil
        }
        if let seekTo {
            _ = try await broker.client.checked(
                ["XGROUP", "SETID", RedisArgument(key), RedisArgument(group), RedisArgument(seekTo)], destination: destination)
        }
    }

    func retryInPlace(_ held: Held, after delay: Duration, nextAttempt: Int, firstFailureAt: Date) async throws {
        let entry = held.entry
        state.withLock { s in
            if s.unsettled.removeValue(forKey: entry.entryID) != nil { s.outstanding -= 1 }
            s.pendingRetries += 1
        }
        let again = Held(
            entry: RedisFieldLayout.Entry(entryID: entry.entryID, message: entry.message, attempt: entry.attempt, firstFailureAt: firstFailureAt),
            attempt: nextAttempt)
        Task { [self] in
            try? await Task.sleep(for: delay)
            let open = state.withLock { s -> Bool in
                s.pendingRetries -= 1
                return !s.closed
            }
            if open {
                push(again)
            } else {
                try? await handToReleased([entry.entryID])
            }
            wake.signal()
        }
    }

    func handToReleased(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        _ = try await broker.client.checked(
            ["XCLAIM", RedisArgument(key), RedisArgument(group), RedisArgument(Self.released), "0"] + ids.map { RedisArgument($0) } + ["JUSTID"],
            destination: destination)
    }
}
