import Foundation
import Logging
import Synchronization

/// The driver over an in-memory store. See ``MemoryBackend``.
final class MemoryBroker: BrokerDriver {
    let store: MemoryStore
    let configuration: BrokerConfiguration
    let logger: Logger
    var backendName: String { "memory" }
    var capabilities: BrokerCapabilities { MemoryBackend.capabilities }

    private let closed = Atomic<Bool>(false)

    init(store: MemoryStore, configuration: BrokerConfiguration, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    private var defaultPartitions: Int { configuration.int("partitions") ?? 4 }
    private var maxMessages: Int { configuration.int("max.messages") ?? 1_000_000 }

    private func name(_ destination: String) throws -> String {
        try checkOpen(destination)
        return configuration.prefix + destination
    }

    private func checkOpen(_ destination: String? = nil) throws {
        if closed.load(ordering: .acquiring) {
            throw BrokerError.closed(
                "broker \(configuration.url.redacted)",
                backend: backendName,
                destination: destination
            )
        }
    }

    func kind(of destination: String, for use: DestinationUse) async throws -> DestinationKind? {
        try await store.kind(
            try name(destination),
            createAs: use.createdKind,
            autoCreate: configuration.autoCreate,
            defaultPartitions: defaultPartitions
        )
    }

    func publish(
        checked messages: [Message],
        to destination: String,
        kind: DestinationKind?,
        options: PublishOptions
    ) async throws -> [PublishReceipt] {
        try await store.publish(
            messages,
            to: try name(destination),
            deliverAt: options.deliverAt,
            autoCreate: configuration.autoCreate,
            defaultPartitions: defaultPartitions,
            maxMessages: maxMessages
        )
    }

    func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        let full = try name(queue)
        let id = try await store.registerQueueConsumer(
            full,
            options: options,
            autoCreate: configuration.autoCreate,
            defaultPartitions: defaultPartitions
        )
        return MemoryConsumer(store: store, id: id, destination: full)
    }

    func openStreamConsumer(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer {
        let full = try name(stream)
        let id = try await store.registerStreamConsumer(
            full,
            group: group,
            options: options,
            autoCreate: configuration.autoCreate,
            defaultPartitions: defaultPartitions
        )
        return MemoryConsumer(store: store, id: id, destination: full)
    }

    func createDestination(_ destination: String, kind: DestinationKind, options: DestinationOptions) async throws {
        try await store.create(
            try name(destination),
            kind: kind,
            options: options,
            defaultPartitions: defaultPartitions
        )
    }

    func deleteDestination(_ destination: String) async throws {
        try await store.delete(try name(destination))
    }

    func listDestinations() async throws -> [DestinationInfo] {
        try checkOpen()
        let prefix = configuration.prefix
        return await store.list().compactMap { info in
            guard info.name.hasPrefix(prefix) else { return nil }
            return DestinationInfo(
                name: String(info.name.dropFirst(prefix.count)),
                kind: info.kind,
                partitions: info.partitions
            )
        }
    }

    func stats(for destination: String) async throws -> DestinationStats {
        let stats = try await store.stats(try name(destination))
        return DestinationStats(
            name: destination,
            kind: stats.kind,
            depth: stats.depth,
            inFlight: stats.inFlight,
            delayed: stats.delayed,
            deadLettered: stats.deadLettered,
            groups: stats.groups
        )
    }

    func readDeadLetters(of destination: String, limit: Int) async throws -> [DeadLetterRecord] {
        try await store.deadLetters(try name(destination), limit: limit).map(withoutPrefix)
    }

    func moveDeadLetters(
        of destination: String,
        limit: Int,
        replay: @Sendable (DeadLetterRecord) -> DeadLetterReplay
    ) async throws -> Int {
        let prefix = configuration.prefix
        return try await store.moveDeadLetters(
            try name(destination),
            limit: limit,
            defaultPartitions: defaultPartitions
        ) {
            var copy = replay(self.withoutPrefix($0))
            copy.destination = prefix + copy.destination
            return copy
        }
    }

    /// The store names destinations with the `prefix` option; apps see names without it.
    private func withoutPrefix(_ record: DeadLetterRecord) -> DeadLetterRecord {
        let prefix = configuration.prefix
        guard !prefix.isEmpty, let origin = record.message.headers[HeaderName.originalDestination],
            origin.hasPrefix(prefix)
        else { return record }
        var record = record
        record.message.headers[HeaderName.originalDestination] = String(origin.dropFirst(prefix.count))
        return record
    }

    /// The client closed the consumers; the store belongs to every broker of its name.
    func close() async {
        closed.store(true, ordering: .releasing)
    }
}
