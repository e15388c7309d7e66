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

    // Read once from the configuration (each read looks up and parses an option).
    private let prefix: String
    private let autoCreate: Bool
    private let defaultPartitions: Int
    private let maxMessages: Int

    init(store: MemoryStore, configuration: BrokerConfiguration, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
        prefix = configuration.prefix
        autoCreate = configuration.autoCreate
        defaultPartitions = configuration.int("partitions") ?? 4
        maxMessages = configuration.int("max.messages") ?? 1_000_000
    }

    private func name(_ destination: String) throws -> String {
        try checkOpen(destination)
        return prefix + destination
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
        // Asked of the store every time (no cache): brokers of one memory:// name share the
        // store, and another may have deleted the destination and made it the other kind.
        try await store.kind(
            try name(destination),
            createAs: use.createdKind,
            autoCreate: autoCreate,
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
            autoCreate: autoCreate,
            defaultPartitions: defaultPartitions,
            maxMessages: maxMessages
        )
    }

    func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        let full = try name(queue)
        let id = try await store.registerQueueConsumer(
            full,
            options: options,
            autoCreate: autoCreate,
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
            autoCreate: autoCreate,
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
        try await store.moveDeadLetters(
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
