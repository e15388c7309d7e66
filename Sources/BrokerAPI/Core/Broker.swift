import Foundation

/// Publishes messages to queues and streams.
public protocol MessagePublisher: Sendable {
    /// Publishes one message and waits until the broker confirmed it.
    func publish(_ message: Message, to destination: String, options: PublishOptions) async throws -> PublishReceipt
    /// Publishes a batch (pipelined where the backend can) and waits for all confirmations.
    /// Receipts are in the order of `messages`.
    func publish(
        _ messages: [Message],
        to destination: String,
        options: PublishOptions
    ) async throws -> [PublishReceipt]
}

extension MessagePublisher {
    /// Publishes one message with default options.
    @discardableResult
    public func publish(_ message: Message, to destination: String) async throws -> PublishReceipt {
        try await publish(message, to: destination, options: PublishOptions())
    }
    /// Publishes a batch with default options.
    @discardableResult
    public func publish(_ messages: [Message], to destination: String) async throws -> [PublishReceipt] {
        try await publish(messages, to: destination, options: PublishOptions())
    }
}

/// A source of deliveries: a queue consumer or a stream consumer-group member.
///
/// ```swift
/// let consumer = try await broker.consumeQueue("emails", options: .init(prefetch: 8))
/// for try await delivery in consumer.deliveries { ...; try await delivery.ack() }
/// ```
public protocol MessageConsumer: Sendable {
    /// The next delivery; waits until one is available. Returns `nil` once the consumer is
    /// closed. Throws `CancellationError` when the calling task is cancelled.
    func next() async throws -> Delivery?
    /// Stops fetching and gives unsettled deliveries back for redelivery. Idempotent.
    func close() async
    /// The first step of a graceful shutdown: stops fetching, so that `next()` returns `nil`
    /// from now on and deliveries prefetched but never handed out go back unchanged, while
    /// deliveries already handed out can still be settled (then call ``close()``).
    /// ``DeliveryProcessor`` calls it before it waits for running handlers, so their final
    /// acks cannot pull in new deliveries that would only be handed back. Idempotent; the
    /// default does nothing (for consumers whose prefetch never leaves the client).
    func stopFetching() async
}

extension MessageConsumer {
    public func stopFetching() async {}

    /// The deliveries as an `AsyncSequence`; it ends when the consumer is closed.
    public var deliveries: DeliverySequence { DeliverySequence(consumer: self) }

    /// The next delivery, or `nil` if none arrives within `timeout`.
    ///
    /// A delivery that arrives just as the timeout fires is returned, never dropped.
    public func next(timeout: Duration) async throws -> Delivery? {
        try await withThrowingTaskGroup(of: NextOutcome.self) { group in
            group.addTask {
                do { return .delivery(try await self.next()) } catch is CancellationError { return .delivery(nil) }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return .timedOut
            }
            let first = try await group.next()
            group.cancelAll()
            if case .delivery(let delivery)? = first { return delivery }
            // Timed out: the fetch was cancelled, but it may have won the race; keep what it got.
            while let outcome = try await group.next() {
                if case .delivery(let delivery) = outcome { return delivery }
            }
            return nil
        }
    }
}

enum NextOutcome: Sendable {
    case delivery(Delivery?)
    case timedOut
}

/// An `AsyncSequence` over a consumer's deliveries.
public struct DeliverySequence: AsyncSequence, Sendable {
    public typealias Element = Delivery
    let consumer: any MessageConsumer
    public struct AsyncIterator: AsyncIteratorProtocol {
        let consumer: any MessageConsumer
        public mutating func next() async throws -> Delivery? { try await consumer.next() }
    }
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(consumer: consumer) }
}

/// Options for a queue consumer.
public struct QueueConsumerOptions: Sendable {
    /// Most deliveries held unsettled at once by this consumer (basic.qos / in-flight bound).
    public var prefetch: Int
    /// The policy `nack` applies.
    public var retryPolicy: RetryPolicy
    /// How long a delivery may stay unsettled before another consumer may take it over.
    public var visibilityTimeout: Duration
    /// A name for this consumer (defaults to a random one).
    public var consumerName: String?

    public init(
        prefetch: Int = 16,
        retryPolicy: RetryPolicy = .default,
        visibilityTimeout: Duration = .seconds(30),
        consumerName: String? = nil
    ) {
        self.prefetch = max(1, prefetch)
        self.retryPolicy = retryPolicy
        self.visibilityTimeout = visibilityTimeout
        self.consumerName = consumerName
    }
}

/// Where a stream consumer starts.
///
/// Every start applies only where the group has no committed position yet (as Kafka's
/// `auto.offset.reset`): a member that joins a running group, or restarts, resumes after what
/// the group committed and never rewinds it. To read again from a position or a time, start
/// a new group.
public enum StartPosition: Sendable, Hashable {
    case earliest
    case latest
    case position(Position)
    case timestamp(Date)
}

/// Options for a stream consumer.
public struct StreamConsumerOptions: Sendable {
    public var start: StartPosition
    public var prefetch: Int
    public var retryPolicy: RetryPolicy
    public var consumerName: String?

    public init(
        start: StartPosition = .latest,
        prefetch: Int = 64,
        retryPolicy: RetryPolicy = .default,
        consumerName: String? = nil
    ) {
        self.start = start
        self.prefetch = max(1, prefetch)
        self.retryPolicy = retryPolicy
        self.consumerName = consumerName
    }
}

/// Creates, deletes, lists destinations and reads their numbers and dead letters.
public protocol BrokerAdmin: Sendable {
    /// Creates a destination; does nothing if it exists with the same kind.
    func createDestination(_ name: String, kind: DestinationKind, options: DestinationOptions) async throws
    /// Deletes a destination and its dead-letter queue.
    func deleteDestination(_ name: String) async throws
    /// Lists destinations (not their DLQs).
    func listDestinations() async throws -> [DestinationInfo]
    /// Depth, in-flight, delayed, DLQ size and per-group lag.
    func stats(for destination: String) async throws -> DestinationStats
    /// Lists up to `limit` entries of `destination`'s dead-letter queue, oldest first.
    func deadLetters(of destination: String, limit: Int) async throws -> [DeadLetterEntry]
    /// Moves up to `limit` dead letters back to their original destination (attempts reset);
    /// returns how many moved.
    func replayDeadLetters(of destination: String, limit: Int) async throws -> Int
}

extension BrokerAdmin {
    /// Creates a work queue.
    public func createQueue(_ name: String, options: DestinationOptions = DestinationOptions()) async throws {
        try await createDestination(name, kind: .queue, options: options)
    }
    /// Creates a stream.
    public func createStream(_ name: String, options: DestinationOptions = DestinationOptions()) async throws {
        try await createDestination(name, kind: .stream, options: options)
    }
}

/// A connected client of one backend: publish, consume queues and streams, administer.
///
/// Pick the backend by URL:
/// ```swift
/// let broker = try await Brokers.connect(url: "memory://")
/// try await broker.createQueue("emails")
/// try await broker.publish(Message(text: "hi"), to: "emails")
/// ```
public protocol Broker: MessagePublisher, BrokerAdmin {
    /// The backend's name (`memory`, `kafka`, `amqp`, `redis`).
    var backendName: String { get }
    /// What this backend supports.
    var capabilities: BrokerCapabilities { get }
    /// The configuration it was created with (passwords redacted in its description).
    var configuration: BrokerConfiguration { get }
    /// A competing consumer on a work queue.
    func consumeQueue(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer
    /// A member of consumer group `group` on a stream.
    func consumeStream(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer
    /// Closes consumers, flushes publishers and releases connections. Idempotent. A broker
    /// dropped without it ends its threads and closes its connections in the background, once
    /// none of its consumers is left (a consumer keeps its broker alive; a consumer the app
    /// drops is closed once it holds none of its deliveries either).
    func close() async
}

extension Broker {
    /// A queue consumer with default options.
    public func consumeQueue(_ queue: String) async throws -> any MessageConsumer {
        try await consumeQueue(queue, options: QueueConsumerOptions())
    }
    /// Throws ``BrokerError/Code/unsupported`` unless the backend claims `needed`.
    public func require(_ needed: BrokerCapabilities, for operation: String) throws {
        let missing = needed.subtracting(capabilities)
        if !missing.isEmpty {
            throw BrokerError(
                .unsupported,
                "\(operation) needs [\(missing)], which \(backendName) does not support",
                backend: backendName
            )
        }
    }
}
