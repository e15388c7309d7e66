import BrokerConformance
import BrokerTestSupport
import CRdKafka
import Foundation
import KafkaBackend
import Testing

/// Proves the librdkafka link and the Kafka-protocol test broker the scripts start. The
/// Kafka backend itself lands with its own issue; its conformance runs will live beside this.
@Suite("librdkafka link", .enabled(if: TestEnvironment.shouldRun(.kafka)))
struct RdKafkaLinkTests {
    @Test func libraryVersion() {
        #expect(KafkaBackend.libraryVersion.hasPrefix("2."))
    }

    @Test func metadataAndProduceThroughLibrdkafka() async throws {
        let url = try TestEnvironment.requireURL(.kafka)
        let (host, port) = try #require(TestEnvironment.hostAndPort(url))
        let (brokers, flushed): (Int32, Int32) = try await TestEnvironment.blocking {
            var errstr = [CChar](repeating: 0, count: 512)
            let conf = rd_kafka_conf_new()
            guard
                rd_kafka_conf_set(conf, "bootstrap.servers", "\(host):\(port)", &errstr, errstr.count)
                    == RD_KAFKA_CONF_OK
            else {
                throw ConformanceFailure("conf: \(cText(errstr))")
            }
            guard let producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errstr, errstr.count) else {
                throw ConformanceFailure("rd_kafka_new: \(cText(errstr))")
            }
            defer { rd_kafka_destroy(producer) }
            var metadata: UnsafePointer<rd_kafka_metadata>?
            let err = rd_kafka_metadata(producer, 1, nil, &metadata, 10_000)
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
                throw ConformanceFailure(
                    "metadata from \(host):\(port) failed: \(String(cString: rd_kafka_err2str(err)))"
                )
            }
            let brokers = metadata.pointee.broker_cnt
            rd_kafka_metadata_destroy(metadata)
            let topic = rd_kafka_topic_new(producer, "bk-link-\(UUID().uuidString.prefix(8))", nil)
            defer { rd_kafka_topic_destroy(topic) }
            var payload = Array("héllo".utf8)
            var key = Array("k".utf8)
            guard
                rd_kafka_produce(
                    topic,
                    RD_KAFKA_PARTITION_UA,
                    RD_KAFKA_MSG_F_COPY,
                    &payload,
                    payload.count,
                    &key,
                    key.count,
                    nil
                ) == 0
            else {
                throw ConformanceFailure("produce failed: \(String(cString: rd_kafka_err2str(rd_kafka_last_error())))")
            }
            let flush = rd_kafka_flush(producer, 10_000)
            return (brokers, flush == RD_KAFKA_RESP_ERR_NO_ERROR ? rd_kafka_outq_len(producer) : -1)
        }
        #expect(brokers >= 1)
        #expect(flushed == 0, "messages left in the producer queue after flush")
    }
}

/// A NUL-terminated C buffer as a String.
func cText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
