@_spi(BrokerBackend) import BrokerAPI
import CRabbitMQ
import Logging

/// The RabbitMQ backend over rabbitmq-c, for `amqp://user:pass@host:5672/vhost` and
/// `amqps://` URLs.
///
/// ```swift
/// RabbitBackend.register()
/// let broker = try await Brokers.connect(url: "amqp://app:secret@localhost:5672/orders?queue.type=quorum")
/// ```
///
/// Queues are durable quorum queues (classic with `queue.type=classic`) with `basic.qos`
/// prefetch, publisher confirms and `mandatory` publishing; retries and delayed messages wait
/// in per-delay TTL queues that dead-letter back to the queue; dead letters go to
/// `<queue>.dlq`. Streams are RabbitMQ stream queues read with `x-stream-offset`; a consumer
/// group keeps its committed offset in `<stream>.offsets.<group>` and has one active member
/// at a time. See `docs/rabbitmq.md` for the mapping and the limits.
public struct RabbitBackend: BrokerBackend {
    public init() {}

    /// The linked rabbitmq-c version, e.g. `0.11.0`.
    public static var libraryVersion: String { String(cString: amqp_version()) }

    /// Registers the backend for `amqp://` and `amqps://` in `registry`.
    public static func register(in registry: BrokerRegistry = .shared) {
        registry.register(RabbitBackend())
    }

    public var name: String { "amqp" }
    public var schemes: [String] { ["amqp", "amqps"] }
    public var optionNamespace: String { "amqp" }
    public var capabilities: BrokerCapabilities { RabbitBackend.capabilities }
    public var options: [BrokerOption] { RabbitConfiguration.options }

    /// What the RabbitMQ backend honours.
    ///
    /// Not claimed:
    /// - `consumerGroups`: a stream queue read over AMQP 0-9-1 cannot split its messages among
    ///   the members of a group; a group has one active member (the others stand by and take
    ///   over when it leaves).
    /// - `replay`: replay from `.earliest` and from a delivery's position works, but publisher
    ///   confirms carry no stream offset, so a publish receipt has no position to seek to.
    /// - `leaseExpiry`: RabbitMQ redelivers a consumer's unacked messages when its connection
    ///   closes or its heartbeats stop, not after a per-consumer visibility timeout
    ///   (`visibilityTimeout` is not used).
    public static let capabilities: BrokerCapabilities = [
        .queues, .streams, .orderedPerKey, .newGroupSeesHistory, .timestampSeek, .delayedDelivery, .nativeDelay,
        .nativeDLQ, .persistent, .perMessageAck, .crossProcess, .prefetch,
    ]

    public func connect(configuration: BrokerConfiguration, logger: Logger) async throws -> BrokerClient {
        BrokerClient(
            driver: try await RabbitBroker.connect(configuration: configuration, logger: logger),
            logger: logger
        )
    }
}
