@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

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
        let reply = try await broker.client.send([
            "XGROUP", "CREATE", RedisArgument(key), RedisArgument(group), RedisArgument(id), "MKSTREAM",
        ])
        if let error = reply.errorText, !error.hasPrefix("BUSYGROUP") {
            throw RedisClient.map(.server(error), server: broker.settings.server, destination: destination)
        }
    }

    /// Entries whose lease expired (and, for streams, entries other members gave back).
    func claimEntries(limit: Int) async throws -> [(RedisMessageMapping.Entry, Int)] {
        var ids: [String] = []
        if !isQueue {
            let released = try await client.send([
                "XPENDING", RedisArgument(key), RedisArgument(group), "-", "+", RedisArgument(limit),
                RedisArgument(Self.released),
            ])
            ids = (released.array ?? []).compactMap { $0.array?.first?.text }
            if !ids.isEmpty {
                _ = try await client.send(
                    ["XCLAIM", RedisArgument(key), RedisArgument(group), RedisArgument(name), "0"]
                        + ids.map { RedisArgument($0) } + ["JUSTID"]
                )
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
        // XAUTOCLAIM ignores the owner: entries this consumer holds itself (buffered, or with
        // a handler slower than the lease) come back too. Claiming them only renewed their
        // lease; they are not delivered again.
        let held = state.withLock { Set($0.unsettled.keys).union($0.retrying) }
        ids.removeAll { held.contains($0) }
        guard !ids.isEmpty else { return [] }
        // Fetch the entries and their delivery counts; claiming counts as a delivery.
        var commands: [[RedisArgument]] = []
        for id in ids {
            commands.append([
                "XCLAIM", RedisArgument(key), RedisArgument(group), RedisArgument(name), "0", RedisArgument(id),
            ])
            commands.append([
                "XPENDING", RedisArgument(key), RedisArgument(group), RedisArgument(id), RedisArgument(id), "1",
            ])
        }
        let replies = try await client.pipeline(commands)
        var result: [(RedisMessageMapping.Entry, Int)] = []
        var deleted: [String] = []
        for (index, id) in ids.enumerated() {
            let claimed = replies[index * 2]
            let info = replies[index * 2 + 1].array?.first?.array
            let count = Int((info?.count ?? 0) > 3 ? info?[3].integer ?? 1 : 1)
            if let item = claimed.array?.first, let entry = RedisMessageMapping.entry(from: item) {
                result.append((entry, count))
            } else {
                deleted.append(id)
            }
        }
        if !deleted.isEmpty {
            _ = try await broker.client.send(
                ["XACK", RedisArgument(key), RedisArgument(group)] + deleted.map { RedisArgument($0) }
            )
        }
        return result
    }

    func noLongerHeld(_ held: Held) -> BrokerError {
        BrokerError(
            .closed,
            "entry \(held.entry.entryID) of message '\(held.entry.message.id)' is no longer held by this consumer (closed, or its lease expired and another consumer claimed it)",
            backend: "redis",
            destination: destination
        )
    }

    /// Acks are asynchronous, as RabbitMQ's and Kafka's are: the ack is recorded here and
    /// returns; one flush at a time sends every ack recorded meanwhile in a single round trip
    /// on the broker's connection (queue: `MULTI XACK … XDEL … EXEC`; stream: `XACK …`).
    /// An ack the flush cannot deliver (connection lost) leaves the entry pending: it is
    /// claimed again after the lease, as after a crash (at-least-once). `close()` and `stats`
    /// wait for the flush, so this process reads its own acks.
    func ackEntry(_ held: Held) async throws {
        let id = held.entry.entryID
        // Held means still unsettled here: a consumer that is closing takes acks until it
        // gives the rest back (close empties `unsettled` when it does).
        let start = state.withLock { s -> Bool? in
            guard s.unsettled[id] != nil else { return nil }
            s.pendingAcks.append(id)
            if s.flushing { return false }
            s.flushing = true
            return true
        }
        guard let start else { throw noLongerHeld(held) }
        if start { Task { await self.flushAcks() } }
    }

    /// Sends recorded acks until none is left.
    private func flushAcks() async {
        while true {
            let (ids, waiters) = state.withLock { s -> ([String], [CheckedContinuation<Void, Never>]) in
                if s.pendingAcks.isEmpty {
                    s.flushing = false
                    defer { s.flushWaiters = [] }
                    return ([], s.flushWaiters)
                }
                defer { s.pendingAcks = [] }
                return (s.pendingAcks, [])
            }
            if ids.isEmpty {
                for waiter in waiters { waiter.resume() }
                return
            }
            let arguments = ids.map { RedisArgument($0) }
            let ack: [RedisArgument] = ["XACK", RedisArgument(key), RedisArgument(group)] + arguments
            do {
                let acked: Int
                if isQueue {
                    let replies = try await broker.client.pipeline([
                        ["MULTI"], ack, ["XDEL", RedisArgument(key)] + arguments, ["EXEC"],
                    ])
                    try broker.check(replies, destination: destination)
                    acked = Int(replies[3].array?.first?.integer ?? 0)
                } else {
                    acked = Int(try await broker.client.checked(ack, destination: destination).integer ?? 0)
                }
                if acked < ids.count {
                    broker.logger.warning(
                        "redis consumer of '\(destination)': \(ids.count - acked) of \(ids.count) acked entries were no longer pending (their lease expired and another consumer claimed them, or they were given back)"
                    )
                }
            } catch {
                broker.logger.warning(
                    "redis consumer of '\(destination)': \(ids.count) acks not delivered (\(error)); those entries are delivered again after the lease"
                )
            }
        }
    }

    /// Returns once every ack recorded so far has been sent (or failed).
    func acksSent() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { s -> Bool in
                guard s.flushing || !s.pendingAcks.isEmpty else { return true }
                s.flushWaiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }

    func retryEntry(_ held: Held, after delay: Duration, nextAttempt: Int, firstFailureAt: Date) async throws {
        let entry = held.entry
        guard isQueue else {
            try await retryInPlace(held, after: delay, nextAttempt: nextAttempt, firstFailureAt: firstFailureAt)
            return
        }
        let due = Int64((Date().timeIntervalSince1970 + min(delay.timeInterval, 10 * 365 * 86_400)) * 1000)
        let reply = try await broker.client.checked(
            [
                "EVAL", RedisArgument(RedisScripts.retry), "2", RedisArgument(key), RedisArgument(key + ":retry"),
                RedisArgument(group),
                RedisArgument(entry.entryID), RedisArgument(due),
            ]
                + RedisMessageMapping.fields(for: entry.message, attempt: nextAttempt, firstFailureAt: firstFailureAt),
            destination: destination
        )
        guard reply.integer == 1 else { throw noLongerHeld(held) }
        settled(entry.entryID)
    }

    func deadLetterEntry(_ held: Held, envelope: DeadLetterEnvelope) async throws {
        var message = envelope.message
        if !isQueue { message.headers[HeaderName.group] = group }
        let reply = try await broker.client.checked(
            [
                "EVAL", RedisArgument(RedisScripts.deadLetter), "2", RedisArgument(key), RedisArgument(key + ":dlq"),
                RedisArgument(group), RedisArgument(held.entry.entryID), isQueue ? "1" : "0",
            ]
                + RedisMessageMapping.fields(for: message),
            destination: destination
        )
        guard reply.integer == 1 else { throw noLongerHeld(held) }
    }

    func releaseEntry(_ held: Held) async throws {
        if isQueue {
            try await requeue(held, attempt: held.attempt, firstFailureAt: held.entry.firstFailureAt)
        } else {
            // Only an entry this member holds: handing another member's to `__released`
            // would take it away from that member.
            guard state.withLock({ $0.unsettled[held.entry.entryID] != nil }) else { throw noLongerHeld(held) }
            // No longer held before it is handed on: a claim from `__released` that comes in
            // between must deliver it, not skip it as one this member holds.
            settled(held.entry.entryID)
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
                        held,
                        attempt: seen ? held.attempt + 1 : held.attempt,
                        firstFailureAt: seen ? (held.entry.firstFailureAt ?? Date()) : held.entry.firstFailureAt
                    )
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
            [
                "EVAL", RedisArgument(RedisScripts.requeue), "1", RedisArgument(key), RedisArgument(group),
                RedisArgument(held.entry.entryID),
            ]
                + RedisMessageMapping.fields(for: held.entry.message, attempt: attempt, firstFailureAt: firstFailureAt),
            destination: destination
        )
        guard reply.integer == 1 else { throw noLongerHeld(held) }
    }
}
