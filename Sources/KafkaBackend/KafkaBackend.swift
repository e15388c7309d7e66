import BrokerAPI
import CRdKafka

/// The Kafka backend over librdkafka. Linked and versioned here; the broker implementation
/// lands with its own issue, so it is not registered for `kafka://` yet.
public enum KafkaBackend {
    /// The linked librdkafka version, e.g. `2.0.2`.
    public static var libraryVersion: String { String(cString: rd_kafka_version_str()) }
}
