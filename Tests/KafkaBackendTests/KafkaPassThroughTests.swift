import BrokerAPI
import CRdKafka
import Logging
import Testing

@testable import KafkaBackend

/// `rdkafka.<property>` pass-through (docs/kafka.md, "Options"): the user's explicit
/// librdkafka property wins over BrokerKit's own defaults for every handle, the producer's
/// included. No broker needed: the handles are created, read back and destroyed.
@Suite("Kafka pass-through properties")
struct KafkaPassThroughTests {
    func settings(_ options: [String: String]) throws -> KafkaSettings {
        try KafkaSettings(
            Brokers.configuration(url: "kafka://127.0.0.1:9", options: options, registry: KafkaTestSupport.registry)
        )
    }

    /// What librdkafka itself holds for `name` on a live handle.
    func live(_ name: String, of handle: RdKafkaHandle) -> String? {
        guard let conf = rd_kafka_conf(handle.rk) else { return nil }
        var size = 0
        guard rd_kafka_conf_get(conf, name, nil, &size) == RD_KAFKA_CONF_OK, size > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: size)
        guard rd_kafka_conf_get(conf, name, &buffer, &size) == RD_KAFKA_CONF_OK else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A consumer handle created as BrokerKit's consumers create theirs (group id added last).
    func consumerHandle(_ settings: KafkaSettings) throws -> RdKafkaHandle {
        try RdKafkaHandle(
            type: RD_KAFKA_CONSUMER,
            properties: settings.consumerProperties.merging(["group.id": "g"]) { $1 },
            callbacks: RdKafkaCallbacks(logger: Logger(label: "test"), role: "consumer")
        )
    }

    @Test func passThroughWinsOverTheProducersDefaults() async throws {
        // BrokerKit sets each of these on its producer (linger 0 ms, message timeout from
        // operation.timeout, 5 in flight).
        let settings = try settings([
            "rdkafka.linger.ms": "250", "rdkafka.message.timeout.ms": "90000",
            "rdkafka.max.in.flight.requests.per.connection": "3",
        ])
        let producer = try KafkaPublisher(settings: settings, logger: Logger(label: "test"))
        #expect(live("linger.ms", of: producer.handle) == "250")
        #expect(live("message.timeout.ms", of: producer.handle) == "90000")
        #expect(live("max.in.flight.requests.per.connection", of: producer.handle) == "3")
        await producer.close(timeout: .seconds(1))

        // Without pass-through, BrokerKit's defaults stand.
        let defaults = try KafkaPublisher(settings: try self.settings([:]), logger: Logger(label: "test"))
        #expect(live("linger.ms", of: defaults.handle) == "0")
        #expect(live("message.timeout.ms", of: defaults.handle) == "30000")
        await defaults.close(timeout: .seconds(1))
    }

    @Test func passThroughWinsOverTheConsumersDefaults() throws {
        let settings = try settings(["rdkafka.fetch.wait.max.ms": "20", "rdkafka.session.timeout.ms": "45000"])
        let handle = try consumerHandle(settings)
        #expect(live("fetch.wait.max.ms", of: handle) == "20")
        #expect(live("session.timeout.ms", of: handle) == "45000")
        // A consumer setting of BrokerKit's that was not passed through stands.
        #expect(live("enable.auto.commit", of: handle) == "false")
        handle.destroy()
    }

    /// The typed options (docs/kafka.md, "Options") reach librdkafka as the properties they
    /// stand for.
    @Test func typedOptionsReachTheLiveHandles() async throws {
        let settings = try settings([
            "client.id": "shop-api", "compression.type": "zstd", "batch.size": "65536", "batch.messages": "500",
            "linger": "20ms", "max.in.flight": "2", "operation.timeout": "45s",
            "session.timeout": "12s", "auto.offset.reset": "latest",
        ])
        let producer = try KafkaPublisher(settings: settings, logger: Logger(label: "test"))
        #expect(live("client.id", of: producer.handle) == "shop-api")
        #expect(live("compression.codec", of: producer.handle) == "zstd")
        #expect(live("batch.size", of: producer.handle) == "65536")
        #expect(live("batch.num.messages", of: producer.handle) == "500")
        #expect(live("linger.ms", of: producer.handle) == "20")
        #expect(live("max.in.flight.requests.per.connection", of: producer.handle) == "2")
        #expect(live("enable.idempotence", of: producer.handle) == "true")
        #expect(live("message.timeout.ms", of: producer.handle) == "45000")
        #expect(live("acks", of: producer.handle) == "-1")  // all
        await producer.close(timeout: .seconds(1))

        let consumer = try consumerHandle(settings)
        #expect(live("client.id", of: consumer) == "shop-api")
        #expect(live("session.timeout.ms", of: consumer) == "12000")
        #expect(live("auto.offset.reset", of: consumer) == "largest")
        #expect(live("enable.auto.commit", of: consumer) == "false")  // commits only after processing
        consumer.destroy()
    }

    @Test func aPassedThroughGroupIdIsRejectedByName() throws {
        do {
            _ = try settings(["rdkafka.group.id": "mine"])
            Issue.record("rdkafka.group.id was accepted, and would have been ignored")
        } catch let error as BrokerError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("rdkafka.group.id") && error.message.contains("'group.id'"), "\(error)")
        }
    }
}
