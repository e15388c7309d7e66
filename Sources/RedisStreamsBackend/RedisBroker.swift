@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// A connection to Redis serving BrokerKit queues and streams (see ``RedisStreamsBackend``).
///
/// Keys, for a destination `name` (after the `prefix` option):
/// - `name` — the stream (queues and streams alike)
/// - `name:dlq` — its dead-letter stream
/// - `name:retry`, `name:delay` — sorted sets of entries waiting for a retry backoff or a
///   `deliverAt` time (queues), moved back by consumers when due
/// - `<prefix>brokerkit:destinations` — a hash of destination name → kind
/// Queues use one consumer group, `brokerkit`; each stream consumer group is a Redis group.
final class RedisBroker: BrokerDriver {
    static let queueGroup = "brokerkit"

    let configuration: BrokerConfiguration
    let settings: RedisSettings
    let client: RedisClient
    let logger: Logger
    let observer = DeliveryObserver.shared(for: "redis")
    /// The server's `proto-max-bulk-len`, read at connect.
    let maxBulkLength: Int
    private let state = Mutex<
        (closed: Bool, kinds: [String: DestinationKind], consumers: [ObjectIdentifier: any MessageConsumer])
    >((false, [:], [:]))

    var backendName: String { "redis" }
    var capabilities: BrokerCapabilities { RedisStreamsBackend.capabilities }

    init(
        configuration: BrokerConfiguration,
        settings: RedisSettings,
        client: RedisClient,
        maxBulkLength: Int,
        logger: Logger
    ) {
        self.configuration = configuration
        self.settings = settings
        self.client = client
        self.maxBulkLength = maxBulkLength
        self.logger = logger
    }

    // MARK: - Names

    func key(_ destination: String) throws -> String {
        try checkOpen(destination)
        return settings.prefix + destination
    }

    var registryKey: String { settings.prefix + "brokerkit:destinations" }

    func checkOpen(_ destination: String? = nil) throws {
        if state.withLock({ $0.closed }) {
            throw BrokerError.closed("redis broker \(settings.server)", backend: backendName, destination: destination)
        }
    }

    func makeClient(name: String) -> RedisClient {
        RedisClient(
            endpoint: settings.endpoint,
            server: settings.server,
            name: name,
            operationTimeout: settings.operationTimeout,
            logger: logger
        )
    }

    static func consumerName() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString.prefix(8).lowercased())"
    }

    // MARK: - Kinds

    /// The kind of `key`, creating it as `createAs` when missing and auto-create is on.
    func kind(of key: String, destination: String, createAs: DestinationKind?) async throws -> DestinationKind {
        if let known = state.withLock({ $0.kinds[key] }) { return known }
        let reply = try await client.checked(
            ["HGET", RedisArgument(registryKey), RedisArgument(key)],
            destination: destination
        )
        if let text = reply.text, let kind = DestinationKind(rawValue: text) {
            state.withLock { $0.kinds[key] = kind }
            return kind
        }
        guard let createAs, settings.autoCreate else {
            throw BrokerError(
                .unknownDestination,
                "'\(destination)' does not exist on redis \(settings.server) and auto.create is off",
                backend: backendName,
                destination: destination
            )
        }
        try await create(key: key, destination: destination, kind: createAs)
        return createAs
    }

    func create(key: String, destination: String, kind: DestinationKind) async throws {
        let typeReply = try await client.checked(["TYPE", RedisArgument(key)], destination: destination)
        if let type = typeReply.text, type != "none", type != "stream" {
            throw BrokerError(
                .wrongDestinationKind,
                "key '\(key)' on redis \(settings.server) holds a \(type), not a stream",
                backend: backendName,
                destination: destination
            )
        }
        let existing = try await client.checked(
            ["HGET", RedisArgument(registryKey), RedisArgument(key)],
            destination: destination
        )
        if let text = existing.text, let existingKind = DestinationKind(rawValue: text) {
            guard existingKind == kind else {
                throw BrokerError(
                    .wrongDestinationKind,
                    "'\(destination)' already exists as a \(existingKind), cannot use it as a \(kind)",
                    backend: backendName,
                    destination: destination
                )
            }
        } else {
            // The queue group starts at 0, so messages published before any consumer are delivered.
            let group = kind == .queue ? RedisBroker.queueGroup : "__brokerkit_init"
            let created = try await client.send([
                "XGROUP", "CREATE", RedisArgument(key), RedisArgument(group), "0", "MKSTREAM",
            ])
            if let error = created.errorText, !error.hasPrefix("BUSYGROUP") {
                throw RedisClient.map(.server(error), server: settings.server, destination: destination)
            }
            if kind == .stream {
                _ = try await client.send(["XGROUP", "DESTROY", RedisArgument(key), "__brokerkit_init"])
            }
            _ = try await client.checked(
                ["HSETNX", RedisArgument(registryKey), RedisArgument(key), RedisArgument(kind.rawValue)],
                destination: destination
            )
        }
        state.withLock { $0.kinds[key] = kind }
    }

    func forget(key: String) {
        state.withLock { _ = $0.kinds.removeValue(forKey: key) }
    }

    func kind(of destination: String, for use: DestinationUse) async throws -> DestinationKind? {
        try await kind(of: try key(destination), destination: destination, createAs: use.createdKind)
    }

    // MARK: - Consumers

    func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        let key = try key(queue)
        let consumer = RedisConsumer(broker: self, destination: queue, key: key, mode: .queue(options))
        try await consumer.start()
        track(consumer)
        return consumer
    }

    func openStreamConsumer(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer {
        let key = try key(stream)
        let consumer = RedisConsumer(broker: self, destination: stream, key: key, mode: .stream(group: group, options))
        try await consumer.start()
        track(consumer)
        return consumer
    }

    private func track(_ consumer: any MessageConsumer & AnyObject) {
        state.withLock { $0.consumers[ObjectIdentifier(consumer)] = consumer }
    }

    /// Waits until this process's consumers of `key` have sent the acks they recorded.
    func acksSent(for key: String) async {
        let consumers = state.withLock { s in
            s.consumers.values.compactMap { $0 as? RedisConsumer }.filter { $0.key == key }
        }
        for consumer in consumers { await consumer.acksSent() }
    }

    func untrack(_ consumer: AnyObject) {
        state.withLock { _ = $0.consumers.removeValue(forKey: ObjectIdentifier(consumer)) }
    }

    /// The client closed the consumers first.
    func close() async {
        let first = state.withLock { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        if first { client.close() }
    }
}
