@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// Settings of the Kafka backend, read from a validated ``BrokerConfiguration``.
///
/// URL: `kafka://host1:9092,host2:9092` (`kafka+ssl://` turns TLS on). A user and password
/// in the URL are SASL credentials (`sasl.mechanism`, default PLAIN).
///
/// Typed options (environment `KAFKA_…`, config file `kafka.…`, URL query, code) cover what
/// apps set most; any other librdkafka property passes through as `rdkafka.<property>` in the
/// URL query or in code (`rdkafka.fetch.wait.max.ms=50`). librdkafka validates those at
/// connect, and an unknown or invalid one is an error naming it.
struct KafkaSettings: Sendable {
    enum RetryMode: String, Sendable {
        /// Failed queue messages go to `<topic>.retry.<n>` and wait there until due; the
        /// partition keeps flowing (order is lost for retried messages).
        case topics
        /// Failed messages are redelivered in place after the backoff; their partition is
        /// paused meanwhile (order kept, the partition waits).
        case blocking
    }

    let bootstrap: String
    let server: String
    let prefix: String
    /// ``prefix`` as it starts every topic name (`:` as `.`), mapped once.
    let topicPrefix: String
    let autoCreate: Bool
    let maxMessageBytes: Int
    let connectTimeout: Duration
    let operationTimeout: Duration
    let clientID: String
    let queueGroup: String?
    let retryMode: RetryMode
    let retryTopics: Int
    let delayHoldMax: Int
    let defaultPartitions: Int
    let defaultReplication: Int
    /// `admin`: topics are created with CreateTopics (partitions, replication, configs).
    /// `auto`: the broker creates them on first use (`auto.create.topics.enable`), with its
    /// default partition count, for clusters where clients may not call CreateTopics.
    let autoTopicCreation: Bool
    /// `group.scope=global`: stream group ids are the names as given (plus the prefix).
    let globalGroups: Bool
    let statisticsInterval: Duration
    /// Properties for every librdkafka handle (security, client id, pass-through).
    let common: [String: String]
    /// Extra producer properties, merged over ``common`` (pass-through included, so it wins).
    let producer: [String: String]
    /// Extra consumer properties, merged over ``common`` (pass-through included, so it wins).
    let consumer: [String: String]

    static let options: [BrokerOption] = [
        BrokerOption("client.id", .string, default: "brokerkit", "Client id sent to the brokers."),
        BrokerOption(
            "group.id",
            .string,
            "Consumer group of queue consumers (default: '<topic>.workers'). Stream groups are named by the app."
        ),
        BrokerOption(
            "compression.type",
            .choice(["none", "gzip", "snappy", "lz4", "zstd"]),
            default: "none",
            "Producer compression."
        ),
        BrokerOption("batch.size", .int(1...1_000_000_000), "Largest producer batch in bytes (librdkafka batch.size)."),
        BrokerOption(
            "batch.messages",
            .int(1...1_000_000),
            "Most messages in one producer batch (batch.num.messages)."
        ),
        BrokerOption(
            "linger",
            .duration,
            default: "0ms",
            "How long the producer waits to fill a batch (linger.ms). 0: an awaited publish is sent at once; records still batch while requests are in flight."
        ),
        BrokerOption(
            "max.in.flight",
            .int(1...5),
            default: "5",
            "Produce requests in flight per broker (idempotence allows at most 5)."
        ),
        BrokerOption(
            "idempotence",
            .bool,
            default: "true",
            "Idempotent producer (no duplicates or reordering on producer retries)."
        ),
        BrokerOption(
            "acks",
            .choice(["all", "1", "0"]),
            default: "all",
            "Broker acknowledgements a produce waits for."
        ),
        BrokerOption(
            "security.protocol",
            .choice(["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]),
            "Transport security (default: plaintext, or sasl_plaintext when the URL has credentials)."
        ),
        BrokerOption(
            "sasl.mechanism",
            .choice(["plain", "scram-sha-256", "scram-sha-512"]),
            default: "plain",
            "SASL mechanism."
        ),
        BrokerOption("sasl.username", .string, "SASL user (or put it in the URL)."),
        BrokerOption("sasl.password", .string, secret: true, "SASL password (or put it in the URL)."),
        BrokerOption("ssl.ca.location", .string, "CA certificate file for TLS."),
        BrokerOption("ssl.certificate.location", .string, "Client certificate file for TLS."),
        BrokerOption("ssl.key.location", .string, "Client private key file for TLS."),
        BrokerOption("ssl.key.password", .string, secret: true, "Password of the client private key."),
        BrokerOption(
            "auto.offset.reset",
            .choice(["earliest", "latest"]),
            default: "earliest",
            "Where a group restarts when its committed offset no longer exists (retention)."
        ),
        BrokerOption(
            "session.timeout",
            .duration,
            default: "10s",
            "Group session timeout: how long a silent member keeps its partitions."
        ),
        BrokerOption(
            "retry.mode",
            .choice(["topics", "blocking"]),
            default: "topics",
            "Queue retries: 'topics' (<topic>.retry.<n>, non-blocking) or 'blocking' (in place, partition waits)."
        ),
        BrokerOption(
            "retry.topics",
            .int(1...20),
            default: "3",
            "Number of retry topics <topic>.retry.1 ... .N per queue (later attempts reuse the last)."
        ),
        BrokerOption(
            "delay.hold.max",
            .int(0...1_000_000),
            default: "1000",
            "Not-yet-due retry/delayed messages a consumer holds in memory before pausing that partition."
        ),
        BrokerOption(
            "default.partitions",
            .int(1...10_000),
            default: "3",
            "Partitions of topics created without an explicit count."
        ),
        BrokerOption(
            "default.replication",
            .int(-1...32),
            default: "-1",
            "Replication factor of created topics (-1: the broker's default)."
        ),
        BrokerOption(
            "group.scope",
            .choice(["stream", "global"]),
            default: "stream",
            "Kafka group id of a stream group: '<topic>/<group>' (stream) or the name as given (global, to share it with other Kafka clients)."
        ),
        BrokerOption(
            "topic.creation",
            .choice(["admin", "auto"]),
            default: "admin",
            "How missing topics are created: 'admin' (CreateTopics with partitions and configs) or 'auto' (the broker's auto.create.topics.enable, its default partition count)."
        ),
        BrokerOption(
            "statistics.interval",
            .duration,
            default: "5s",
            "How often librdkafka statistics feed swift-metrics (0 turns them off)."
        ),
        BrokerOption(
            prefix: "rdkafka.",
            "Any other librdkafka property, passed through (rdkafka.fetch.wait.max.ms=50)."
        ),
    ]

    init(_ configuration: BrokerConfiguration) throws {
        let url = configuration.url
        guard !url.hosts.isEmpty else {
            throw BrokerError.invalidConfiguration(
                "kafka URL '\(url.redacted)' names no broker (kafka://host:9092[,host2:9092])",
                backend: "kafka"
            )
        }
        if !url.path.isEmpty {
            throw BrokerError.invalidConfiguration(
                "kafka URL '\(url.redacted)' has a path '/\(url.path)'; Kafka URLs list brokers only",
                backend: "kafka"
            )
        }
        bootstrap = url.hosts.map { host in
            let name = host.name.contains(":") && !host.name.hasPrefix("[") ? "[\(host.name)]" : host.name
            return "\(name):\(host.port ?? 9092)"
        }.joined(separator: ",")
        server = bootstrap
        prefix = configuration.prefix
        topicPrefix = Self.dotted(configuration.prefix)
        autoCreate = configuration.autoCreate
        maxMessageBytes = configuration.maxMessageBytes
        connectTimeout = configuration.connectTimeout
        operationTimeout = configuration.operationTimeout
        clientID = configuration.string("client.id") ?? "brokerkit"
        queueGroup = configuration.string("group.id").flatMap { $0.isEmpty ? nil : $0 }
        retryMode = RetryMode(rawValue: configuration.string("retry.mode") ?? "topics") ?? .topics
        retryTopics = configuration.int("retry.topics") ?? 3
        delayHoldMax = configuration.int("delay.hold.max") ?? 1000
        defaultPartitions = configuration.int("default.partitions") ?? 3
        defaultReplication = configuration.int("default.replication") ?? -1
        statisticsInterval = configuration.duration("statistics.interval") ?? .seconds(5)
        autoTopicCreation = configuration.string("topic.creation") == "auto"
        globalGroups = configuration.string("group.scope") == "global"

        var common: [String: String] = [
            "bootstrap.servers": bootstrap,
            "client.id": clientID,
            "socket.connection.setup.timeout.ms": String(max(1000, Self.milliseconds(connectTimeout))),
            "topic.metadata.refresh.interval.ms": "10000",
        ]
        if statisticsInterval > .zero {
            common["statistics.interval.ms"] = String(max(100, Self.milliseconds(statisticsInterval)))
        }
        let user = configuration.string("sasl.username") ?? url.user
        let password = configuration.string("sasl.password") ?? url.password
        var security = configuration.string("security.protocol")
        if url.scheme == "kafka+ssl" || url.scheme == "kafkas" {
            security = security ?? (user != nil ? "sasl_ssl" : "ssl")
        }
        if user != nil && security == nil { security = "sasl_plaintext" }
        if let security { common["security.protocol"] = security }
        if let security, security.hasPrefix("sasl") {
            guard let user, let password else {
                throw BrokerError.invalidConfiguration(
                    "security.protocol \(security) needs sasl.username and sasl.password (or user:password@ in the URL)",
                    backend: "kafka"
                )
            }
            common["sasl.mechanism"] = (configuration.string("sasl.mechanism") ?? "plain").uppercased()
            common["sasl.username"] = user
            common["sasl.password"] = password
        }
        for name in ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password"] {
            if let value = configuration.string(name) { common[name] = value }
        }
        // Producer and consumer limits follow BrokerKit's size limit, with room for the
        // record overhead (key, headers, batch framing).
        let wireLimit = max(1_000_000, maxMessageBytes + 64 * 1024)
        common["message.max.bytes"] = String(wireLimit)
        var producer: [String: String] = [
            "allow.auto.create.topics": autoTopicCreation ? "true" : "false",
            "enable.idempotence": configuration.string("idempotence") ?? "true",
            "acks": configuration.string("acks") ?? "all",
            "compression.type": configuration.string("compression.type") ?? "none",
            "linger.ms": String(Self.milliseconds(configuration.duration("linger") ?? .zero)),
            "max.in.flight.requests.per.connection": configuration.string("max.in.flight") ?? "5",
            "message.timeout.ms": String(max(1000, Self.milliseconds(operationTimeout))),
        ]
        if let size = configuration.string("batch.size") { producer["batch.size"] = size }
        if let count = configuration.string("batch.messages") { producer["batch.num.messages"] = count }
        if producer["enable.idempotence"] == "true" && producer["acks"] != "all" {
            throw BrokerError.invalidConfiguration(
                "option 'acks' of kafka: '\(producer["acks"]!)' needs idempotence=false (the idempotent producer requires acks=all)",
                backend: "kafka"
            )
        }
        var consumer: [String: String] = [
            "allow.auto.create.topics": "false",
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "enable.partition.eof": "false",
            "auto.offset.reset": configuration.string("auto.offset.reset") ?? "earliest",
            "session.timeout.ms": String(
                max(1000, Self.milliseconds(configuration.duration("session.timeout") ?? .seconds(10)))
            ),
            "heartbeat.interval.ms": "1000",
            "partition.assignment.strategy": "roundrobin",
            "fetch.max.bytes": String(max(52_428_800, wireLimit)),
            "max.partition.fetch.bytes": String(max(1_048_576, wireLimit)),
            "fetch.wait.max.ms": "100",
        ]
        // Pass-through last: the user's explicit librdkafka properties win, over the producer's
        // and the consumer's defaults too (each handle merges its role's properties over
        // `common`, so a pass-through only in `common` lost to `linger.ms`, `acks`,
        // `message.timeout.ms`, `fetch.wait.max.ms` and the rest of those).
        let passThrough = configuration.options(withPrefix: "rdkafka.")
        if passThrough["group.id"] != nil {
            // Each consumer's group id is derived (queue: `group.id` or `<topic>.workers`;
            // stream: from the group the app names), so one id for every handle cannot apply.
            throw BrokerError.invalidConfiguration(
                "option 'rdkafka.group.id' of kafka is not passed through: BrokerKit derives each consumer's group id; set option 'group.id' for queue workers, and name stream groups in consumeStream (group.scope=global keeps them verbatim)",
                backend: "kafka"
            )
        }
        for (key, value) in passThrough {
            common[key] = value
            producer[key] = value
            consumer[key] = value
        }
        self.common = common
        self.producer = producer
        self.consumer = consumer
    }

    /// Everything a producer handle is created with: ``common``, then ``producer``.
    var producerProperties: [String: String] { common.merging(producer) { $1 } }
    /// Everything a consumer handle is created with (before its `group.id`): ``common``, then
    /// ``consumer``.
    var consumerProperties: [String: String] { common.merging(consumer) { $1 } }

    static func milliseconds(_ duration: Duration) -> Int {
        Int((duration.timeInterval * 1000).rounded())
    }

    // MARK: - Names

    /// The Kafka topic of a BrokerKit destination. Kafka topic names allow `A-Z a-z 0-9 . _ -`;
    /// BrokerKit's `:` maps to `.` (documented: `a:b` and `a.b` are the same topic on Kafka).
    func topic(_ destination: String) -> String {
        topicPrefix + Self.dotted(destination)
    }

    /// `name` with every `:` as `.`. Names rarely hold a `:`, so they are returned as they are
    /// when none does: this runs for every publish call, and Foundation's
    /// `replacingOccurrences` took ≈ 1.3 µs even with nothing to replace.
    static func dotted(_ name: String) -> String {
        guard name.utf8.contains(UInt8(ascii: ":")) else { return name }
        return String(decoding: name.utf8.map { $0 == UInt8(ascii: ":") ? UInt8(ascii: ".") : $0 }, as: UTF8.self)
    }

    func dlqTopic(_ destination: String) -> String { topic(destination) + ".dlq" }
    func delayTopic(_ destination: String) -> String { topic(destination) + ".delay" }
    func retryTopic(_ destination: String, attempt: Int) -> String {
        topic(destination) + ".retry.\(min(max(1, attempt), retryTopics))"
    }
    func retryTopics(_ destination: String) -> [String] {
        (1...retryTopics).map { topic(destination) + ".retry.\($0)" }
    }

    /// The consumer group of a queue's workers.
    func queueGroup(_ destination: String) -> String {
        queueGroup ?? topic(destination) + ".workers"
    }

    /// The Kafka group id of BrokerKit group `group` on stream `destination`:
    /// `<topic>/<group>` (scope `stream`, the default: a group on one stream never
    /// rebalances with a same-named group on another), or `<prefix><group>` (scope `global`:
    /// the name as given, to share a group id with other Kafka clients).
    func streamGroup(_ group: String, destination: String) -> String {
        streamGroupPrefix(destination) + group
    }

    /// What every Kafka group id of `destination`'s BrokerKit groups starts with.
    func streamGroupPrefix(_ destination: String) -> String {
        globalGroups ? prefix : topic(destination) + "/"
    }

    /// The group whose committed offsets mark how far a DLQ has been replayed.
    func dlqGroup(_ destination: String) -> String { dlqTopic(destination) + ".replayed" }

    /// Whether `topic` is one of BrokerKit's companion topics (retry, delay, DLQ).
    static func isCompanion(_ topic: String) -> Bool {
        if topic.hasSuffix(".dlq") || topic.hasSuffix(".delay") { return true }
        if let range = topic.range(of: ".retry.", options: .backwards) {
            return Int(topic[range.upperBound...]) != nil
        }
        return false
    }
}
