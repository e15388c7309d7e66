@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// Create / delete / list, stats from the server, and the dead-letter streams.
extension RedisBroker {
    func createDestination(_ destination: String, kind: DestinationKind, options: DestinationOptions) async throws {
        let key = try key(destination)
        try await create(key: key, destination: destination, kind: kind)
    }

    func deleteDestination(_ destination: String) async throws {
        let key = try key(destination)
        let existed = try await client.checked(
            ["HDEL", RedisArgument(registryKey), RedisArgument(key)],
            destination: destination
        )
        _ = try await client.checked(
            [
                "DEL", RedisArgument(key), RedisArgument(key + ":dlq"), RedisArgument(key + ":retry"),
                RedisArgument(key + ":delay"),
            ],
            destination: destination
        )
        forget(key: key)
        if existed.integer == 0 {
            throw BrokerError(
                .unknownDestination,
                "'\(destination)' does not exist on redis \(settings.server)",
                backend: backendName,
                destination: destination
            )
        }
    }

    func listDestinations() async throws -> [DestinationInfo] {
        try checkOpen()
        let reply = try await client.checked(["HGETALL", RedisArgument(registryKey)])
        let flat = reply.array ?? []
        var result: [DestinationInfo] = []
        var index = 0
        while index + 1 < flat.count {
            if let key = flat[index].text, key.hasPrefix(settings.prefix),
                let kind = flat[index + 1].text.flatMap(DestinationKind.init(rawValue:))
            {
                result.append(
                    DestinationInfo(name: String(key.dropFirst(settings.prefix.count)), kind: kind, partitions: 1)
                )
            }
            index += 2
        }
        return result.sorted { $0.name < $1.name }
    }

    func stats(for destination: String) async throws -> DestinationStats {
        let key = try key(destination)
        let kind = try await kind(of: key, destination: destination, createAs: nil)
        await acksSent(for: key)
        let replies = try await client.pipeline([
            ["XLEN", RedisArgument(key)],
            ["XINFO", "GROUPS", RedisArgument(key)],
            ["ZCARD", RedisArgument(key + ":retry")],
            ["ZCARD", RedisArgument(key + ":delay")],
            ["XLEN", RedisArgument(key + ":dlq")],
        ])
        try check([replies[0], replies[2], replies[3], replies[4]], destination: destination)
        let length = Int(replies[0].integer ?? 0)
        let delayed = Int((replies[2].integer ?? 0) + (replies[3].integer ?? 0))
        let dead = Int(replies[4].integer ?? 0)
        var groups: [GroupStats] = []
        for group in replies[1].array ?? [] {
            let info = Self.dictionary(group)
            guard let name = info["name"]?.text else { continue }
            let pending = Int(info["pending"]?.integer ?? 0)
            let consumers = Int(info["consumers"]?.integer ?? 0)
            let lastDelivered = info["last-delivered-id"]?.text ?? "0-0"
            var undelivered: Int
            if let lag = info["lag"]?.integer {
                undelivered = Int(lag)
            } else {
                // Redis cannot tell after deletions: count the entries after the last delivered id.
                let range = try await client.checked(
                    ["XRANGE", RedisArgument(key), RedisArgument("(" + lastDelivered), "+", "COUNT", "1000000"],
                    destination: destination
                )
                undelivered = range.array?.count ?? 0
            }
            if kind == .queue { undelivered = max(0, length - pending) }
            groups.append(
                GroupStats(
                    group: kind == .queue ? "queue" : name,
                    lag: kind == .queue ? undelivered + delayed : undelivered + pending,
                    pending: pending,
                    consumers: consumers,
                    committed: [Position(partition: 0, offset: lastDelivered)]
                )
            )
        }
        let pending = groups.reduce(0) { $0 + $1.pending }
        switch kind {
        case .queue:
            return DestinationStats(
                name: destination,
                kind: .queue,
                depth: max(0, length - pending),
                inFlight: pending,
                delayed: delayed,
                deadLettered: dead,
                groups: groups
            )
        case .stream:
            return DestinationStats(
                name: destination,
                kind: .stream,
                depth: length,
                inFlight: pending,
                delayed: 0,
                deadLettered: dead,
                groups: groups.sorted { $0.group < $1.group }
            )
        }
    }

    func readDeadLetters(of destination: String, limit: Int) async throws -> [DeadLetterRecord] {
        try await deadLetterEntries(key: try key(destination), of: destination, limit: limit).map {
            DeadLetterRecord(message: $0.message, position: Position(partition: 0, offset: $0.entryID))
        }
    }

    func moveDeadLetters(
        of destination: String,
        limit: Int,
        replay: @Sendable (DeadLetterRecord) -> DeadLetterReplay
    ) async throws -> Int {
        let key = try key(destination)
        var moved = 0
        for entry in try await deadLetterEntries(key: key, of: destination, limit: limit) {
            let copy = replay(
                DeadLetterRecord(message: entry.message, position: Position(partition: 0, offset: entry.entryID))
            )
            // One script per entry: the copy is added and the entry deleted atomically.
            let result = try await client.checked(
                [
                    "EVAL", RedisArgument(RedisScripts.replay), "2", RedisArgument(key + ":dlq"),
                    RedisArgument(try self.key(copy.destination)), RedisArgument(entry.entryID),
                ]
                    + RedisMessageMapping.fields(for: copy.message),
                destination: destination
            )
            if result.integer == 1 { moved += 1 }
        }
        return moved
    }

    /// The oldest `limit` entries of the DLQ stream that can be read as messages.
    private func deadLetterEntries(
        key: String,
        of destination: String,
        limit: Int
    ) async throws -> [RedisMessageMapping.Entry] {
        _ = try await kind(of: key, destination: destination, createAs: nil)
        guard limit > 0 else { return [] }
        let reply = try await client.checked(
            ["XRANGE", RedisArgument(key + ":dlq"), "-", "+", "COUNT", RedisArgument(limit)],
            destination: destination
        )
        return RedisMessageMapping.entries(reply).valid
    }

    static func dictionary(_ reply: RedisReply) -> [String: RedisReply] {
        var result: [String: RedisReply] = [:]
        let flat = reply.array ?? []
        var index = 0
        while index + 1 < flat.count {
            if let name = flat[index].text { result[name] = flat[index + 1] }
            index += 2
        }
        return result
    }
}
