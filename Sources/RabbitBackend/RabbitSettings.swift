@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// The RabbitMQ backend's options (namespace `amqp`: URL query `?heartbeat=10s`, environment
/// `AMQP_HEARTBEAT`, config file `{"amqp": {"heartbeat": "10s"}}`), and the settings a
/// connected broker derives from them.
enum RabbitConfiguration {
    static let options: [BrokerOption] = [
        BrokerOption(
            "heartbeat",
            .duration,
            default: "10s",
            "AMQP heartbeat interval (0 turns heartbeats off); a silent broker is declared dead after two."
        ),
        BrokerOption(
            "frame.max",
            .int(4096...1_048_576),
            default: "131072",
            "Largest AMQP frame to negotiate; bigger messages are split into several frames."
        ),
        BrokerOption(
            "channel.max",
            .int(0...65535),
            default: "0",
            "Most channels per connection to negotiate (0: the broker's limit)."
        ),
        BrokerOption(
            "queue.type",
            .choice(["quorum", "classic"]),
            default: "quorum",
            "Type of work queues and dead-letter queues BrokerKit declares: replicated quorum queues or classic queues."
        ),
        BrokerOption(
            "queue.delivery.limit",
            .int(0...1_000_000),
            default: "0",
            "Quorum queues only: after this many redeliveries without an ack the broker itself dead-letters a message to <queue>.dlq (0: no limit)."
        ),
        BrokerOption(
            "prefetch",
            .int(0...65535),
            default: "0",
            "basic.qos prefetch used when a consumer keeps the library default (16 for queues, 64 for streams); 0 keeps the default."
        ),
        BrokerOption(
            "confirm.batch",
            .int(1...100_000),
            default: "1024",
            "Most messages of one batch publish in flight before waiting for their publisher confirms."
        ),
        BrokerOption(
            "stream.commit.interval",
            .duration,
            default: "250ms",
            "How often a stream consumer group stores its committed offset (and always when the consumer closes)."
        ),
        BrokerOption(
            "tls.ca",
            .string,
            "PEM file with the CA certificates that sign the broker's certificate (amqps://)."
        ),
        BrokerOption("tls.cert", .string, "PEM client certificate for mutual TLS (amqps://); needs tls.key."),
        BrokerOption("tls.key", .string, "PEM private key of tls.cert (amqps://)."),
        BrokerOption("tls.verify", .bool, default: "true", "Verify the broker's certificate and host name (amqps://)."),
    ]
}

/// Everything a ``RabbitBroker`` needs from its ``BrokerConfiguration``, parsed once.
struct RabbitSettings: Sendable {
    let endpoint: AMQPEndpoint
    let queueType: String
    let deliveryLimit: Int
    let prefetchOverride: Int?
    let confirmWindow: Int
    let commitInterval: Duration
    let operationTimeout: Duration
    let autoCreate: Bool
    let prefix: String

    init(_ configuration: BrokerConfiguration) throws {
        let url = configuration.url
        let backend = AMQPError.backend
        guard url.hosts.count == 1, let host = url.hosts.first else {
            throw BrokerError.invalidConfiguration(
                "amqp URL '\(url.redacted)' must name exactly one host (amqp://user:pass@host:5672/vhost)",
                backend: backend
            )
        }
        let tlsRequested = url.scheme == "amqps"
        var tls: AMQPEndpoint.TLS?
        if tlsRequested {
            tls = AMQPEndpoint.TLS(
                caPath: configuration.string("tls.ca").flatMap { $0.isEmpty ? nil : $0 },
                certPath: configuration.string("tls.cert").flatMap { $0.isEmpty ? nil : $0 },
                keyPath: configuration.string("tls.key").flatMap { $0.isEmpty ? nil : $0 },
                verify: configuration.bool("tls.verify") ?? true
            )
            if (tls?.certPath == nil) != (tls?.keyPath == nil) {
                throw BrokerError.invalidConfiguration(
                    "options 'tls.cert' and 'tls.key' of amqp must be set together",
                    backend: backend
                )
            }
        } else {
            for key in ["tls.ca", "tls.cert", "tls.key"] where configuration.options[key] != nil {
                throw BrokerError.invalidConfiguration(
                    "option '\(key)' of amqp needs an amqps:// URL, got '\(url.redacted)'",
                    backend: backend
                )
            }
        }
        let heartbeat = configuration.duration("heartbeat") ?? .seconds(10)
        endpoint = AMQPEndpoint(
            host: host.name,
            port: host.port ?? (tlsRequested ? 5671 : 5672),
            vhost: url.path.isEmpty ? "/" : url.path,
            user: url.user ?? "guest",
            password: url.password ?? "guest",
            tls: tls,
            heartbeat: Int(heartbeat.timeInterval.rounded(.up)),
            frameMax: configuration.int("frame.max") ?? 131_072,
            channelMax: configuration.int("channel.max") ?? 0,
            connectTimeout: configuration.connectTimeout,
            operationTimeout: configuration.operationTimeout,
            redactedURL: url.redacted
        )
        queueType = configuration.string("queue.type") ?? "quorum"
        deliveryLimit = configuration.int("queue.delivery.limit") ?? 0
        if deliveryLimit > 0 && queueType != "quorum" {
            throw BrokerError.invalidConfiguration(
                "option 'queue.delivery.limit' of amqp needs queue.type=quorum (classic queues have no delivery count)",
                backend: backend
            )
        }
        let prefetch = configuration.int("prefetch") ?? 0
        prefetchOverride = prefetch > 0 ? prefetch : nil
        confirmWindow = configuration.int("confirm.batch") ?? 1024
        commitInterval = configuration.duration("stream.commit.interval") ?? .milliseconds(250)
        operationTimeout = configuration.operationTimeout
        autoCreate = configuration.autoCreate
        prefix = configuration.prefix
    }
}
