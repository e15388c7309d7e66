import BrokerAPI
import CRabbitMQ

/// The RabbitMQ backend over rabbitmq-c. Linked and versioned here; the broker
/// implementation lands with its own issue, so it is not registered for `amqp://` yet.
public enum RabbitBackend {
    /// The linked rabbitmq-c version, e.g. `0.11.0`.
    public static var libraryVersion: String { String(cString: amqp_version()) }
}
