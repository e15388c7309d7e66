import BrokerAPI
import Foundation

/// Queue-specific steps of ``RedisConsumer``: one group (`brokerkit`) per queue, XACK + XDEL
/// on ack, retries parked in `<queue>:retry` until due, dead letters to `<queue>:dlq`,
/// expired leases claimed with XAUTOCLAIM, and entries given back on close re-added as new
/// entries (with the next attempt number when the app had started on them).
extension RedisConsumer {
    static let released = "__released"

    func prepareGroup(initial: Bool = true) async throws {
        switch mode {
        case .queue:
            try await createGroup(at: "0")
        case .stream(_, let options):
            try await prepareStreamGroup(options.start, initial: initial)
        }
    }

    func createGroup(at id: String) async throws {
        let reply = try await broker.client.send(["XGROUP", "CREATE", RedisArgument(key), RedisArgument(group), RedisArgument(id), "MKSTREAM"])
        if let error = reply.errorText, !error.hasPrefix("BUSYGROUP") {
            throw RedisClient.map(.server(error), server: broker.settings.server, destination: destination)
        }
    }

    /// Entries whose lease expired (and, for streams, entries other members gave back).
    func claimEntries(limit: Int) async throws -> [(RedisFieldLayout.Entry, Int)] {
        var ids: [String] = []
        if !isQueue {
            let released = try await client.send([
                "XPENDING", RedisArgument(key), RedisArgument(group), "-", "+", RedisArgument(limit), RedisArgument(Self.released),
            ])
            ids = (released.array ?? []).compactMap { $0.array?.first?.text }
            if !ids.isEmpty {
                _ = try await client.send(
                    ["XCLAIM", RedisArgument(key), RedisArgument(group), RedisArgument(name), "0"] + ids.map { RedisArgument($0) } + ["JUSTID"])
            }
        }
        if ids.count < limit {
            let idle = max(1, Int(lease.timeInterval * 1000))
            let reply = try await client.send([
                "XAUTOCLAIM", RedisArgument(key), RedisArgument(group), RedisArgument(name), RedisArgument(idle), "0-0",
                "COUNT", RedisArgument(limit - ids.count), "JUSTID",
            ])
            if let error = reply.errorText {
                throw RedisClient.map(.server(error), server: broker.settings.server, destination: destination)
            }
            ids += (reply.array?.count ?? 0) > 1 ? (reply.array![1].array ?? []).compactMap(\.text) : []
        }
        guard !ids.isEmpty else { return [] }
        // Fetch the entries and their delivery counts; claiming counts as a delivery.
        var commands: [[RedisArgument]] = []
        for id in ids {
            commands.append(["XCLAIM", RedisArgument(key), RedisArgument(group), RedisArgument(name), "0", RedisArgument(id)])
            commands.append(["XPENDING", RedisArgument(key), RedisArgument(group), RedisArgument(id), RedisArgument(id), "1"])
        }
        let replies = try await client.pipeline(commands)
        var result: [(RedisFieldLayout.Entry, Int)] = []
        var deleted: [String] = []
        for (index, id) in ids.enumerated() {
            let claimed = replies[index * 2]
            let count = Int(replies[index * 2 + 1].array?.first?.array?[3].integer ?? 1)
            if let item = claimed.array?.first, let entry = RedisFieldLayout.entry(from: item) {
                result.append((entry, count))
            } else {
                deleted.append(id)
            }
        }
        if !deleted.isEmpty {
            _ = try await broker.client.send(["XACK", RedisArgument(key), RedisArgument(group)] + deleted.map { RedisArgument($0) })
        }
        return result
    }

    func noLongerHeld(_ held: Held) -> BrokerError {
        BrokerError(
            .closed, "entry \(held.entry.entryID) of message '\(held.entry.message.id)' is no longer held by this consumer (closed, or its lease expired and another consumer claimed it)",
            backend: "redis", destination: destination)
    }

    func ackEntry(_ held: Held) async throws {
        let id = RedisArgument(held.entry.entryID)
        if isQueue {
            let replies = try await broker.client.pipeline([
                ["MULTI"], ["XACK", RedisArgument(key), RedisArgument(group), id], ["XDEL", RedisArgument(key), id], ["EXEC"],
            ])
            try broker.check(replies, destination: destination)
            guard replies[3].array?.first?.integer == 1 else { throw noLongerHeld(held) }
        } else {
            let reply = try await broker.client.checked(["XACK", RedisArgument(key), RedisArgument(group), id], destination: destination)
            guard reply.integer == 1 else { throw noLongerHeld(held) }
        }
    }

    func retryEntry(_ held: Held, after delay: Duration, nextAttempt: Int, firstFailureAt: Date) async throws {
        let entry = held.entry
        guard isQueue else {
            try await retryInPlace(held, after: delay, nextAttempt: nextAttempt, firstFailureAt: firstFailureAt)
            return
        }
        defer { settled(entry.entryID) }
        let due = Int64((Date().timeIntervalSince1970 + delay.timeInterval) * 1000)
        let reply = try await broker.client.checked(
            ["EVAL", RedisArgument(RedisScripts.retry), "2", RedisArgument(key), RedisArgument(key + ":retry"), RedisArgument(group),
             RedisArgument(entry.entryID), RedisArgument(due)]
                + RedisFieldLayout.fields(for: entry.message, attempt: nextAttempt, firstFailureAt: firstFailureAt),
            destination: destination)
        guard reply.integer == 1 else { throw noLongerHeld(held) }
    }

    func deadLetterEntry(_ held: Held, envelope: DeadLetterEnvelope) async throws {
        var message = envelope.message
        if !isQueue { message.headers["x-brokerkit-group"] = group }
        _ = try await broker.client.checked(
            ["EVAL", RedisArgument(RedisScripts.deadLetter), "2", RedisArgument(key), RedisArgument(key + ":dlq"),
             RedisArgument(group), RedisArgument(held.entry.entryID), isQueue ? "1" : "0"]
                + RedisFieldLayout.fields(for: message),
            destination: destination)
    }

    func releaseEntry(_ held: Held) async throws {
        if isQueue {
            try await requeue(held, attempt: held.attempt, firstFailureAt: held.entry.firstFailureAt)
        } else {
            try await handToReleased([held.entry.entryID])
        }
    }

    /// Gives entries back on close: those the app saw count as an attempt, buffered ones do not.
    func giveBack(_ entries: [Held], buffered: Set<String>) async throws {
        if isQueue {
            var firstError: (any Error)?
            for held in entries {
                let seen = !buffered.contains(held.entry.entryID)
                do {
                    try await requeue(
                        held, attempt: seen ? held.attempt + 1 : held.attempt,
                        firstFailureAt: seen ? (held.entry.firstFailureAt ?? Date()) : held.entry.firstFailureAt)
                } catch {
                    firstError = firstError ?? error  // keep going: one failure must not strand the rest
                }
            }
            if let firstError { throw firstError }
        } else {
            try await handToReleased(entries.map(\.entry.entryID))
        }
    }

    private func requeue(_ held: Held, attempt: Int, firstFailureAt: Date?) async throws {
        let reply = try await broker.client.checked(
            ["EVAL", RedisArgument(RedisScripts.requeue), "1", RedisArgument(key), RedisArgument(group), RedisArgument(held.entry.entryID)]
                + RedisFieldLayout.fields(for: held.entry.message, attempt: attempt, firstFailureAt: firstFailureAt),
            destination: destination)
        guard reply.integer == 1 else { throw noLongerHeld(held) }
    }
}
