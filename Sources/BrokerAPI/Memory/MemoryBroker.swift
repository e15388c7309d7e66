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

    private let state = Mutex<(closed: Bool, consumers: [UInt64: MemoryConsumer])>((false, [:]))

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
        if state.withLock({ $0.closed }) {
            throw BrokerError.closed(
                "broker \(configuration.url.redacted)",
                backend: backendName,
                destination: destination
            )
        }
    }

    func publish(
        checked messages: [Message],
        to destination: String,
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
        return track(MemoryConsumer(store: store, id: id, destination: full, onClose: untrack))
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
        return track(MemoryConsumer(store: store, id: id, destination: full, onClose: untrack))
    }

    private func track(_ consumer: MemoryConsumer) -> MemoryConsumer {
        state.withLock { $0.consumers[consumer.id] = consumer }
        return consumer
    }

    private var untrack: @Sendable (UInt64) -> Void {
        { [weak self] id in _ = self?.state.withLock { $0.consumers.removeValue(forKey: id) } }
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

    func deadLetters(of destination: String, limit: Int) async throws -> [DeadLetterEntry] {
        try await store.deadLetters(try name(destination), limit: limit)
    }

    func replayDeadLetters(of destination: String, limit: Int) async throws -> Int {
        try await store.replayDeadLetters(try name(destination), limit: limit)
    }

    func close() async {
        let consumers = state.withLock { state -> [MemoryConsumer] in
            guard !state.closed else { return [] }
            state.closed = true
            return Array(state.consumers.values)
        }
        for consumer in consumers { await consumer.close() }
    }
}
