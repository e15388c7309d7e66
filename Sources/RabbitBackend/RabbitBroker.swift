@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// A connection to RabbitMQ: one confirm-mode publisher connection, one admin connection,
/// and one connection per consumer (so that a consumer's blocking wait never stalls a
/// publisher). See ``RabbitBackend``.
final class RabbitBroker: BrokerDriver {
    let configuration: BrokerConfiguration
    let settings: RabbitSettings
    let logger: Logger
    let publisher: RabbitPublisher
    let admin: RabbitAdmin
    let observer = DeliveryObserver.shared(for: AMQPError.backend)
    var backendName: String { AMQPError.backend }
    var capabilities: BrokerCapabilities { RabbitBackend.capabilities }

    private let state = Mutex<(closed: Bool, nextID: UInt64, consumers: [UInt64: any RabbitTrackedConsumer])>(
        (false, 1, [:])
    )

    private init(
        configuration: BrokerConfiguration,
        settings: RabbitSettings,
        logger: Logger,
        publisher: RabbitPublisher,
        admin: RabbitAdmin
    ) {
        self.configuration = configuration
        self.settings = settings
        self.logger = logger
        self.publisher = publisher
        self.admin = admin
    }

    static func connect(configuration: BrokerConfiguration, logger: Logger) async throws -> RabbitBroker {
        let settings = try RabbitSettings(configuration)
        let publisherConnection = AMQPConnection(endpoint: settings.endpoint, name: "publisher", logger: logger)
        let publisher = RabbitPublisher(connection: publisherConnection, operationTimeout: settings.operationTimeout)
        do {
            try await publisherConnection.start()
        } catch {
            await publisherConnection.close()
            throw error
        }
        let adminConnection = AMQPConnection(endpoint: settings.endpoint, name: "admin", logger: logger)
        let admin = RabbitAdmin(connection: adminConnection, settings: settings, publisher: publisher)
        do {
            try await adminConnection.start()
        } catch {
            await adminConnection.close()
            await publisher.close()
            throw error
        }
        return RabbitBroker(
            configuration: configuration,
            settings: settings,
            logger: logger,
            publisher: publisher,
            admin: admin
        )
    }

    // MARK: - Names

    private func checkOpen(_ destination: String? = nil) throws {
        if state.withLock({ $0.closed }) {
            throw BrokerError.closed(
                "broker \(configuration.url.redacted)",
                backend: backendName,
                destination: destination
            )
        }
    }

    /// The broker-side name of `destination` (with `prefix`), after validating it.
    func fullName(_ destination: String) throws -> String {
        try checkOpen(destination)
        return settings.prefix + destination
    }

    // MARK: - Publishing

    func kind(of destination: String, for use: DestinationUse) async throws -> DestinationKind? {
        let full = try fullName(destination)
        switch use {
        case .publish: try await admin.ensureForPublish(full, user: destination)
        case .consume(let kind): try await admin.ensure(full, user: destination, kind: kind)
        }
        return await admin.catalogKind(full)
    }

    func isReservedHeader(_ name: String) -> Bool { RabbitMessageMapping.isBrokerBookkeeping(name) }

    func publish(
        checked prepared: [Message],
        to destination: String,
        kind: DestinationKind?,
        options: PublishOptions
    ) async throws -> [PublishReceipt] {
        let full = try fullName(destination)
        var routingKey = full
        if let deliverAt = options.deliverAt, deliverAt.timeIntervalSinceNow > 0.0005 {
            routingKey = try await waitQueue(
                for: .interval(deliverAt.timeIntervalSinceNow),
                full: full,
                user: destination
            )
        }
        let outgoing = prepared.map { RabbitMessageMapping.outgoing($0, routingKey: routingKey) }
        try await publishConfirmed(outgoing, user: destination, full: full)
        return prepared.map { PublishReceipt(messageID: $0.id, destination: destination, position: nil) }
    }

    /// The wait queue that holds a message for `delay` before routing it back to `full`.
    func waitQueue(for delay: Duration, full: String, user: String) async throws -> String {
        let ms = RabbitAdmin.delayBucket(delay)
        guard ms <= Int(Int32.max) else {
            throw BrokerError(
                .unsupported,
                "a delay of \(delay) exceeds RabbitMQ's longest message TTL (about 24.8 days)",
                backend: backendName,
                destination: user
            )
        }
        return try await admin.ensureWaitQueue(full, user: user, ms: ms)
    }

    /// Publishes with confirms; messages that failed because the connection dropped are sent
    /// again (with backoff) until `operation.timeout`. A queue deleted behind our back is
    /// declared again once when `auto.create` is on.
    func publishConfirmed(_ outgoing: [AMQPOutgoing], user: String?, full: String?) async throws {
        let deadline = ContinuousClock.now + settings.operationTimeout
        var pending = Array(outgoing.indices)
        var backoff: Duration = .milliseconds(50)
        var redeclared = 0
        var lastError: BrokerError?
        while !pending.isEmpty {
            var again: [Int] = []
            var unroutable = false
            let window = settings.confirmWindow
            var outcomes: [(Int, BrokerError?)] = []
            if pending.count <= window {
                let results = await publisher.publish(
                    pending.map { outgoing[$0] },
                    destination: user,
                    deadline: deadline
                )
                outcomes = Array(zip(pending, results))
            } else {
                outcomes = await withTaskGroup(of: [(Int, BrokerError?)].self) { group in
                    for start in stride(from: 0, to: pending.count, by: window) {
                        let chunk = Array(pending[start..<min(pending.count, start + window)])
                        group.addTask {
                            let results = await self.publisher.publish(
                                chunk.map { outgoing[$0] },
                                destination: user,
                                deadline: deadline
                            )
                            return Array(zip(chunk, results))
                        }
                    }
                    var all: [(Int, BrokerError?)] = []
                    for await results in group { all += results }
                    return all
                }
            }
            for (index, error) in outcomes {
                guard let error else { continue }
                switch error.code {
                case .connectionFailed:
                    again.append(index)
                    lastError = error
                case .unknownDestination
                where settings.autoCreate && redeclared < 5 && full != nil
                    && outgoing[index].routingKey == full:
                    again.append(index)
                    unroutable = true
                    lastError = error
                default:
                    throw error
                }
            }
            if again.isEmpty { return }
            if unroutable, let full, let user {
                // Deleted behind our back, or (just after a broker restart) not yet available.
                redeclared += 1
                admin.forget(full)
                try await admin.ensureForPublish(full, user: user)
                if redeclared > 1 { try await Task.sleep(for: backoff) }
            }
            if ContinuousClock.now >= deadline {
                throw BrokerError(
                    .connectionFailed,
                    "\(again.count) message(s) not confirmed by \(configuration.url.redacted) within operation.timeout \(settings.operationTimeout): \(lastError?.message ?? "connection lost")",
                    backend: backendName,
                    destination: user
                )
            }
            if !unroutable {
                // Not past the deadline: a retry that starts after it would only race its own
                // send deadline and report `timeout` instead of the lost connection.
                try await Task.sleep(for: min(backoff, max(.zero, deadline - ContinuousClock.now)))
                backoff = min(backoff * 2, .seconds(1))
                if ContinuousClock.now >= deadline {
                    throw BrokerError(
                        .connectionFailed,
                        "\(again.count) message(s) not confirmed by \(configuration.url.redacted) within operation.timeout \(settings.operationTimeout): \(lastError?.message ?? "connection lost")",
                        backend: backendName,
                        destination: user
                    )
                }
            }
            pending = again.sorted()
        }
    }

    // MARK: - Consuming

    func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        let full = try fullName(queue)
        let prefetch =
            options.prefetch == QueueConsumerOptions().prefetch
            ? (settings.prefetchOverride ?? options.prefetch) : options.prefetch
        let id = nextConsumerID()
        let consumer = RabbitQueueConsumer(
            broker: self,
            id: id,
            queue: queue,
            full: full,
            options: options,
            prefetch: prefetch
        )
        try await consumer.start()
        return track(consumer)
    }

    func openStreamConsumer(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer {
        let full = try fullName(stream)
        let prefetch =
            options.prefetch == StreamConsumerOptions().prefetch
            ? (settings.prefetchOverride ?? options.prefetch) : options.prefetch
        let id = nextConsumerID()
        let consumer = RabbitStreamConsumer(
            broker: self,
            id: id,
            stream: stream,
            full: full,
            group: group,
            options: options,
            prefetch: prefetch
        )
        try await consumer.start()
        return track(consumer)
    }

    private func nextConsumerID() -> UInt64 {
        state.withLock { s in
            defer { s.nextID += 1 }
            return s.nextID
        }
    }

    private func track<C: RabbitTrackedConsumer>(_ consumer: C) -> C {
        let closed = state.withLock { s -> Bool in
            if s.closed { return true }
            s.consumers[consumer.id] = consumer
            return false
        }
        if closed { Task { await consumer.close() } }
        return consumer
    }

    func untrack(_ id: UInt64) {
        _ = state.withLock { $0.consumers.removeValue(forKey: id) }
    }

    private func consumers(of full: String) -> [any RabbitTrackedConsumer] {
        state.withLock { $0.consumers.values.filter { $0.full == full } }
    }

    // MARK: - Admin

    func createDestination(_ destination: String, kind: DestinationKind, options: DestinationOptions) async throws {
        let full = try fullName(destination)
        if let partitions = options.partitions, partitions > 1 {
            logger.debug("RabbitMQ streams are single logs: partitions=\(partitions) for '\(destination)' is ignored")
        }
        try await admin.create(full, user: destination, kind: kind, options: options)
    }

    func deleteDestination(_ destination: String) async throws {
        try await admin.delete(try fullName(destination), user: destination)
    }

    func listDestinations() async throws -> [DestinationInfo] {
        try checkOpen()
        return try await admin.list()
    }

    func stats(for destination: String) async throws -> DestinationStats {
        let full = try fullName(destination)
        let local = consumers(of: full)
        var groups: [String: (pending: Int, consumers: Int)] = [:]
        for consumer in local {
            if let group = consumer.group {
                let current = groups[group] ?? (0, 0)
                groups[group] = (current.pending + consumer.inFlight, current.consumers + 1)
            }
        }
        return try await admin.stats(
            full,
            user: destination,
            inFlight: local.reduce(0) { $0 + $1.inFlight },
            groupPending: groups
        )
    }

    func readDeadLetters(of destination: String, limit: Int) async throws -> [DeadLetterRecord] {
        try await admin.deadLetters(try fullName(destination), user: destination, limit: limit)
    }

    func moveDeadLetters(
        of destination: String,
        limit: Int,
        replay: @Sendable (DeadLetterRecord) -> DeadLetterReplay
    ) async throws -> Int {
        let full = try fullName(destination)
        try await admin.requireExists(full, user: destination)
        guard limit > 0 else { return 0 }
        let (channel, taken) = try await admin.takeDeadLetters(full, limit: limit)
        guard !taken.isEmpty else { return 0 }
        var outgoing: [AMQPOutgoing] = []
        var targets: [(full: String, user: String)] = []
        for (index, delivery) in taken.enumerated() {
            let stored = RabbitAdmin.envelope(delivery, origin: destination, prefix: settings.prefix).message
            let copy = replay(DeadLetterRecord(message: stored, position: Position(offset: Int64(index))))
            let targetFull = try fullName(copy.destination)
            outgoing.append(RabbitMessageMapping.outgoing(copy.message, routingKey: targetFull))
            targets.append((targetFull, copy.destination))
        }
        do {
            for target in Set(targets.map(\.full)) {
                let user = targets.first { $0.full == target }!.user
                try await admin.ensureForPublish(target, user: user)
            }
            try await publishConfirmed(outgoing, user: destination, full: nil)
        } catch {
            try? await admin.finishDeadLetters(channel: channel, ack: [])
            throw error
        }
        try await admin.finishDeadLetters(channel: channel, ack: taken.map(\.deliveryTag))
        return taken.count
    }

    /// The client closed the consumers first.
    func close() async {
        let first = state.withLock { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        guard first else { return }
        await admin.connection.close()
        await publisher.close()
    }
}

/// What the broker needs to know about its live consumers (for stats).
protocol RabbitTrackedConsumer: MessageConsumer {
    var id: UInt64 { get }
    var full: String { get }
    var group: String? { get }
    /// Deliveries handed out and not yet settled.
    var inFlight: Int { get }
}
