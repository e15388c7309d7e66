@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Logging

/// The Kafka backend over librdkafka, for `kafka://host1:9092,host2:9092` URLs.
///
/// ```swift
/// KafkaBackend.register()
/// let broker = try await Brokers.connect(url: "kafka://localhost:9092?compression.type=zstd")
/// ```
///
/// Streams are topics read by consumer groups; queues are topics read by one group with
/// per-message settlement on top of contiguous offset commits, retry topics
/// (`<topic>.retry.<n>`) or blocking in-place retries, a `<topic>.delay` topic for delayed
/// publishing and a `<topic>.dlq` topic for dead letters. One idempotent producer per broker;
/// every librdkafka poll runs on a dedicated thread. See `docs/kafka.md`.
public struct KafkaBackend: BrokerBackend {
    public init() {}

    /// Registers the backend for `kafka://` (and `kafka+ssl://`) in `registry`.
    public static func register(in registry: BrokerRegistry = .shared) {
        registry.register(KafkaBackend())
    }

    /// The linked librdkafka version, e.g. `2.0.2`.
    public static var libraryVersion: String { String(cString: rd_kafka_version_str()) }

    public var name: String { "kafka" }
    public var schemes: [String] { ["kafka", "kafka+ssl"] }
    public var optionNamespace: String { "kafka" }
    public var capabilities: BrokerCapabilities { Self.capabilities }
    public var options: [BrokerOption] { KafkaSettings.options }

    /// Not claimed:
    /// - `leaseExpiry`: Kafka has no per-message visibility timeout (`visibilityTimeout` is not
    ///   used); a vanished member's uncommitted messages are redelivered when the group
    ///   rebalances (it left, or its `session.timeout` passed).
    /// - `nativeDelay`: delayed and retried messages wait in delay/retry topics and consumers
    ///   hold them until due.
    /// - `nativeDLQ`: the client writes `<topic>.dlq`.
    public static let capabilities: BrokerCapabilities = [
        .queues, .streams, .consumerGroups, .orderedPerKey, .replay, .newGroupSeesHistory, .timestampSeek,
        .delayedDelivery, .persistent, .perMessageAck, .crossProcess, .prefetch,
    ]

    public func connect(configuration: BrokerConfiguration, logger: Logger) async throws -> BrokerClient {
        BrokerClient(
            driver: try await KafkaBroker.connect(configuration: configuration, logger: logger),
            logger: logger
        )
    }
}
