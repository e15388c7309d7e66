import BrokerAPI
import Logging
import Testing

@testable import KafkaBackend

/// The producer on its own (no broker object), against librdkafka's mock cluster.
@Suite("Kafka producer")
struct KafkaProducerTests {
    func producer(_ cluster: MockCluster) throws -> KafkaPublisher {
        let configuration = try Brokers.configuration(
            url: cluster.url,
            options: KafkaTestSupport.mockOptions,
            registry: KafkaTestSupport.registry
        )
        return try KafkaPublisher(settings: KafkaSettings(configuration), logger: Logger(label: "test"))
    }

    func record(_ topic: String, _ text: String) -> OutgoingRecord {
        OutgoingRecord(topic: topic, message: Message(text: text))
    }

    /// A single record to a topic the producer knows is enqueued on the caller's thread; once
    /// the producer is closed (its handle destroyed) that must be refused with `closed`, never
    /// reach librdkafka.
    @Test func aSingleRecordAfterCloseIsRefused() async throws {
        let cluster = try MockCluster(brokers: 1)
        let producer = try producer(cluster)
        let topic = "producer-after-close"
        // The first record to a topic goes through the producer's thread (metadata lookup);
        // the second takes the caller's-thread path.
        let first = try await producer.produce([record(topic, "first")], destination: topic)
        let second = try await producer.produce([record(topic, "second")], destination: topic)
        #expect(first.count == 1 && second.count == 1 && first[0].1 >= 0 && second[0].1 >= 0, "\(first) \(second)")
        await producer.close(timeout: .seconds(5))
        for records in [[record(topic, "late")], [record(topic, "late-1"), record(topic, "late-2")]] {
            do {
                _ = try await producer.produce(records, destination: topic)
                Issue.record("a closed producer accepted \(records.count) record(s)")
            } catch let error as BrokerError {
                #expect(error.code == .closed, "\(error)")
            }
        }
        await cluster.shutdown()
    }
}
