import Foundation
import Logging
import Synchronization

/// What a backend implements: the broker-specific half of a ``Broker``. Apps never hold a
/// driver; ``Brokers/connect(url:options:registry:logger:)`` wraps it in a ``BrokerClient``,
/// which owns the policy every backend shares (see there), so a driver receives only
/// destination and group names that passed ``DestinationName`` and batches that passed
/// BrokerKit's message checks. docs/writing-a-backend.md walks through one.
public protocol BrokerDriver: Sendable {
    /// The backend's name in errors, logs and metrics (`redis`, `kafka`, …).
    var backendName: String { get }
    var capabilities: BrokerCapabilities { get }
    var configuration: BrokerConfiguration { get }

    /// Header names this broker reserves for itself besides BrokerKit's `x-brokerkit-*`
    /// (RabbitMQ's `x-death` family): publishing one is refused with `invalidMessage`.
    func isReservedHeader(_ name: String) -> Bool

    /// Makes sure `name` exists before the client uses it, and returns its kind. A
    /// destination that does not exist is created (as a queue for a publish, as the consumed
    /// kind for a consumer) when the configuration's auto-create is on; otherwise this throws
    /// `unknownDestination`. `nil` means it exists but the broker cannot tell its kind
    /// without a costly call: the broker itself then refuses a use that does not fit.
    ///
    /// The client calls this before every publish and consumer, so it should answer from a
    /// cache once a name was seen.
    func kind(of name: String, for use: DestinationUse) async throws -> DestinationKind?

    /// Publishes a checked batch (not empty; sizes, headers and the destination name
    /// checked; the current trace context added; a delay only for a destination not known
    /// as a stream) to `destination`, whose kind ``kind(of:for:)`` just returned, and
    /// returns one receipt per message, in order.
    func publish(
        checked messages: [Message],
        to destination: String,
        kind: DestinationKind?,
        options: PublishOptions
    ) async throws -> [PublishReceipt]

    /// A consumer of `queue` (``kind(of:for:)`` did not call it a stream), started:
    /// deliveries may be fetched from it at once.
    func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer
    /// A member of `group` on `stream` (``kind(of:for:)`` did not call it a queue), started
    /// (it joined the group).
    func openStreamConsumer(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer

    func createDestination(_ name: String, kind: DestinationKind, options: DestinationOptions) async throws
    func deleteDestination(_ name: String) async throws
    func listDestinations() async throws -> [DestinationInfo]
    func stats(for destination: String) async throws -> DestinationStats

    /// Up to `limit` (≥ 0) records of `destination`'s dead-letter queue, oldest first, as
    /// stored; `unknownDestination` when `destination` does not exist.
    func readDeadLetters(of destination: String, limit: Int) async throws -> [DeadLetterRecord]
    /// Moves up to `limit` (≥ 0) of the oldest records out of `destination`'s dead-letter
    /// queue: publishes what `replay` makes of each (its destination auto-created as a queue
    /// when missing), and removes a record only once the broker confirmed its copy, so a fault
    /// sends one twice rather than losing it. Returns how many moved.
    func moveDeadLetters(
        of destination: String,
        limit: Int,
        replay: @Sendable (DeadLetterRecord) -> DeadLetterReplay
    ) async throws -> Int

    /// Closes the driver's connections. Called once, by the client's first
    /// ``BrokerClient/close()``, after it closed every consumer it handed out.
    func close() async
}

extension BrokerDriver {
    public func isReservedHeader(_ name: String) -> Bool { false }
}

/// What the client is about to do with a destination; see ``BrokerDriver/kind(of:for:)``.
public enum DestinationUse: Sendable, Hashable {
    /// Publishing: a missing destination is auto-created as a queue.
    case publish
    /// Consuming it as this kind: a missing destination is auto-created as that kind.
    case consume(DestinationKind)

    /// The kind a missing destination is created as.
    public var createdKind: DestinationKind {
        switch self {
        case .publish: .queue
        case .consume(let kind): kind
        }
    }
}

/// The ``Broker`` every backend hands out: one front over a ``BrokerDriver``, owning what
/// every backend shares so it is written once:
///
/// - after ``close()`` every call fails with `closed`, and the driver is closed once;
/// - destination and group names are checked (``DestinationName``) before the driver sees
///   them;
/// - a publish checks sizes and headers (reserved `x-brokerkit-*` and the broker's own),
///   adds the trace context, and counts `published`; a single publish is a batch of one;
/// - a delayed publish to a stream is refused (`unsupported`), and a queue consumer of a
///   stream or a group member of a queue fails with `wrongDestinationKind`;
/// - the consumers it hands out dead-letter records the backend marked unusable, are closed
///   for the app when it drops them, and are closed by ``close()`` before the driver;
/// - dead letters are listed and replayed by one policy: a record without BrokerKit's
///   envelope is listed and replayed too, and a replayed message goes to
///   ``DeadLetterEnvelope/replayTarget(dlqOf:)`` as a fresh one
///   (``DeadLetterEnvelope/replay(dlqOf:)``).
public final class BrokerClient: Broker, Sendable {
    /// The backend half, for a backend's own tests and tools.
    @_spi(BrokerBackend) public let driver: any BrokerDriver
    private let closed = Atomic<Bool>(false)
    /// The driver consumers handed out and not closed yet (or still closing), by a number of
    /// their own.
    private let consumers = Mutex<(nextID: UInt64, open: [UInt64: ClosingConsumer])>((0, [:]))
    private let observer: DeliveryObserver
    /// The `published` counters of the destination published to last (a lookup takes a lock
    /// and hashes the name).
    private let lastPublished = Mutex<DeliveryObserver.Destination?>(nil)
    /// `max.message.bytes`, read once: the configuration never changes.
    private let maxMessageBytes: Int
    private let logger: Logger

    public init(driver: any BrokerDriver, logger: Logger) {
        self.driver = driver
        self.logger = logger
        observer = DeliveryObserver.shared(for: driver.backendName)
        maxMessageBytes = driver.configuration.maxMessageBytes
    }

    public var backendName: String { driver.backendName }
    public var capabilities: BrokerCapabilities { driver.capabilities }
    public var configuration: BrokerConfiguration { driver.configuration }

    private func checkOpen(_ destination: String? = nil) throws {
        if closed.load(ordering: .acquiring) {
            throw BrokerError.closed(
                "broker \(configuration.url.redacted)",
                backend: backendName,
                destination: destination
            )
        }
    }

    private func check(_ destination: String) throws {
        try checkOpen(destination)
        try DestinationName.validate(destination, backend: backendName)
    }

    // MARK: - Publishing

    public func publish(
        _ message: Message,
        to destination: String,
        options: PublishOptions
    ) async throws -> PublishReceipt {
        try await publish([message], to: destination, options: options)[0]
    }

    public func publish(
        _ messages: [Message],
        to destination: String,
        options: PublishOptions
    ) async throws -> [PublishReceipt] {
        try check(destination)
        let driver = self.driver
        let checked = try PublishValidation.prepare(
            messages,
            to: destination,
            maxMessageBytes: maxMessageBytes,
            backend: backendName,
            reservedHeaders: { driver.isReservedHeader($0) }
        )
        if checked.isEmpty { return [] }
        let kind = try await driver.kind(of: destination, for: .publish)
        if kind == .stream, let deliverAt = options.deliverAt, deliverAt > Date() {
            throw BrokerError(
                .unsupported,
                "delayed delivery applies to queues; '\(destination)' is a stream",
                backend: backendName,
                destination: destination
            )
        }
        let receipts = try await driver.publish(checked: checked, to: destination, kind: kind, options: options)
        publishedCounter(destination).record(.published, count: checked.count)
        return receipts
    }

    private func publishedCounter(_ destination: String) -> DeliveryObserver.Destination {
        lastPublished.withLock { last in
            if let last, last.name == destination { return last }
            let found = observer.destination(destination)
            last = found
            return found
        }
    }

    // MARK: - Consumers

    public func consumeQueue(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        try check(queue)
        try await use(queue, as: .queue)
        return try await own(try await driver.openQueueConsumer(queue, options: options), of: queue)
    }

    public func consumeStream(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer {
        try check(stream)
        try DestinationName.validate(group, what: "group", backend: backendName)
        try await use(stream, as: .stream)
        return try await own(try await driver.openStreamConsumer(stream, group: group, options: options), of: stream)
    }

    /// Hands `consumer` to the app, tracked until it is closed or dropped; a consumer opened
    /// while the client closed is closed at once.
    private func own(_ consumer: any MessageConsumer, of destination: String) async throws -> any MessageConsumer {
        let closing = consumers.withLock { state -> ClosingConsumer? in
            guard !closed.load(ordering: .acquiring) else { return nil }
            state.nextID += 1
            let id = state.nextID
            let closing = ClosingConsumer(consumer) { [weak self] in
                _ = self?.consumers.withLock { $0.open.removeValue(forKey: id) }
            }
            state.open[id] = closing
            return closing
        }
        guard let closing else {
            await consumer.close()
            throw BrokerError.closed(
                "broker \(configuration.url.redacted)",
                backend: backendName,
                destination: destination
            )
        }
        return OwnedConsumer(closing, logger: logger)
    }

    /// Refuses to consume `name` as `wanted` when the broker holds it as the other kind.
    private func use(_ name: String, as wanted: DestinationKind) async throws {
        if let kind = try await driver.kind(of: name, for: .consume(wanted)), kind != wanted {
            throw BrokerError(
                .wrongDestinationKind,
                "'\(name)' is a \(kind), not a \(wanted)",
                backend: backendName,
                destination: name
            )
        }
    }

    // MARK: - Admin

    public func createDestination(_ name: String, kind: DestinationKind, options: DestinationOptions) async throws {
        try check(name)
        try await driver.createDestination(name, kind: kind, options: options)
    }

    public func deleteDestination(_ name: String) async throws {
        try check(name)
        try await driver.deleteDestination(name)
    }

    public func listDestinations() async throws -> [DestinationInfo] {
        try checkOpen()
        return try await driver.listDestinations()
    }

    public func stats(for destination: String) async throws -> DestinationStats {
        try check(destination)
        return try await driver.stats(for: destination)
    }

    public func deadLetters(of destination: String, limit: Int) async throws -> [DeadLetterEntry] {
        try check(destination)
        let records = try await driver.readDeadLetters(of: destination, limit: max(0, limit))
        return records.prefix(max(0, limit)).map {
            DeadLetterEntry(envelope: DeadLetterEnvelope(stored: $0.message, dlqOf: destination), position: $0.position)
        }
    }

    public func replayDeadLetters(of destination: String, limit: Int) async throws -> Int {
        try check(destination)
        return try await driver.moveDeadLetters(of: destination, limit: max(0, limit)) {
            DeadLetterEnvelope(stored: $0.message, dlqOf: destination).replay(dlqOf: destination)
        }
    }

    // MARK: - Closing

    public func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Includes consumers still closing (dropped by the app, or closed by it just now):
        // their close is joined, not started again.
        let open = consumers.withLock { Array($0.open.values) }
        await withTaskGroup(of: Void.self) { group in
            for consumer in open { group.addTask { await consumer.close() } }
        }
        await driver.close()
    }
}
