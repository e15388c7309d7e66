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

    /// Publishes a checked batch (not empty; sizes, headers and the destination name
    /// checked; the current trace context added) and returns one receipt per message, in
    /// order.
    func publish(
        checked messages: [Message],
        to destination: String,
        options: PublishOptions
    ) async throws -> [PublishReceipt]

    /// A consumer of `queue`, started: deliveries may be fetched from it at once.
    func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer
    /// A member of `group` on `stream`, started (it joined the group).
    func openStreamConsumer(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer

    func createDestination(_ name: String, kind: DestinationKind, options: DestinationOptions) async throws
    func deleteDestination(_ name: String) async throws
    func listDestinations() async throws -> [DestinationInfo]
    func stats(for destination: String) async throws -> DestinationStats
    func deadLetters(of destination: String, limit: Int) async throws -> [DeadLetterEntry]
    func replayDeadLetters(of destination: String, limit: Int) async throws -> Int

    /// Closes the driver's consumers and connections. Called once, by the client's first
    /// ``BrokerClient/close()``.
    func close() async
}

extension BrokerDriver {
    public func isReservedHeader(_ name: String) -> Bool { false }
}

/// The ``Broker`` every backend hands out: one front over a ``BrokerDriver``, owning what
/// every backend shares so it is written once:
///
/// - after ``close()`` every call fails with `closed`, and the driver is closed once;
/// - destination and group names are checked (``DestinationName``) before the driver sees
///   them;
/// - a publish checks sizes and headers (reserved `x-brokerkit-*` and the broker's own),
///   adds the trace context, and counts `published`; a single publish is a batch of one;
/// - the consumers it hands out dead-letter records the backend marked unusable and are
///   closed for the app when it drops them.
public final class BrokerClient: Broker, Sendable {
    /// The backend half, for a backend's own tests and tools.
    @_spi(BrokerBackend) public let driver: any BrokerDriver
    private let closed = Atomic<Bool>(false)
    private let observer: DeliveryObserver
    private let logger: Logger

    public init(driver: any BrokerDriver, logger: Logger) {
        self.driver = driver
        self.logger = logger
        observer = DeliveryObserver.shared(for: driver.backendName)
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
            configuration: configuration,
            backend: backendName,
            reservedHeaders: { driver.isReservedHeader($0) }
        )
        if checked.isEmpty { return [] }
        let receipts = try await driver.publish(checked: checked, to: destination, options: options)
        observer.record(.published, destination: destination, count: checked.count)
        return receipts
    }

    // MARK: - Consumers

    public func consumeQueue(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        try check(queue)
        return OwnedConsumer(try await driver.openQueueConsumer(queue, options: options), logger: logger)
    }

    public func consumeStream(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer {
        try check(stream)
        try DestinationName.validate(group, what: "group", backend: backendName)
        return OwnedConsumer(
            try await driver.openStreamConsumer(stream, group: group, options: options),
            logger: logger
        )
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
        return try await driver.deadLetters(of: destination, limit: limit)
    }

    public func replayDeadLetters(of destination: String, limit: Int) async throws -> Int {
        try check(destination)
        return try await driver.replayDeadLetters(of: destination, limit: limit)
    }

    // MARK: - Closing

    public func close() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        await driver.close()
    }
}
