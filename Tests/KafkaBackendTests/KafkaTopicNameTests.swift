import BrokerAPI
import Testing

@testable import KafkaBackend

/// How destination names become Kafka topic names (docs/kafka.md, "Topics"): the `prefix`
/// option first, and every `:` as `.`, since Kafka topic names allow only `A-Z a-z 0-9 . _ -`.
@Suite("Kafka topic names")
struct KafkaTopicNameTests {
    func settings(_ options: [String: String] = [:]) throws -> KafkaSettings {
        try KafkaSettings(
            Brokers.configuration(url: "kafka://127.0.0.1:9092", options: options, registry: KafkaTestSupport.registry)
        )
    }

    @Test func aNameWithoutColonsIsTheTopicAsItIs() throws {
        let plain = try settings()
        #expect(plain.topic("orders") == "orders")
        #expect(plain.topic("orders.eu_1-a") == "orders.eu_1-a")
        #expect(plain.dlqTopic("orders") == "orders.dlq")
        #expect(plain.retryTopics("orders") == ["orders.retry.1", "orders.retry.2", "orders.retry.3"])
    }

    @Test func everyColonBecomesADot() throws {
        let plain = try settings()
        #expect(plain.topic("shop:orders:eu") == "shop.orders.eu")
        #expect(plain.topic(":edge:") == ".edge.")
        #expect(plain.delayTopic("shop:orders") == "shop.orders.delay")
    }

    @Test func thePrefixComesFirstWithItsColonsMappedToo() throws {
        let prefixed = try settings(["prefix": "app:test-"])
        #expect(prefixed.topic("orders") == "app.test-orders")
        #expect(prefixed.topic("shop:orders") == "app.test-shop.orders")
        #expect(prefixed.retryTopic("shop:orders", attempt: 7) == "app.test-shop.orders.retry.3")
        #expect(prefixed.queueGroup("orders") == "app.test-orders.workers")
        #expect(prefixed.streamGroup("billing", destination: "shop:orders") == "app.test-shop.orders/billing")
    }
}
