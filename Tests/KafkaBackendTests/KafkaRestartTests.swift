import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import KafkaBackend
import Testing

/// The out-of-process broker goes down mid-run and comes back (`scripts/brokers.sh
/// restart-kafka`: SIGTERM, then a start on the same data). Runs in the serial restart pass.
@Suite("Kafka restart", .serialized, .enabled(if: TestEnvironment.shouldRunRestartTests(.kafka)))
struct KafkaRestartTests {
    /// A publish may fail while the broker is away (noida-db also forgets idempotent-producer
    /// sequence numbers across a restart, which librdkafka reports as
    /// OUT_OF_ORDER_SEQUENCE_NUMBER for the record in flight): 90 of 100 must be acknowledged.
    @Test func brokerRestartLosesNoAcknowledgedPublishAndConsumersContinue() async throws {
        let broker = try await KafkaTestSupport.connect(["operation.timeout": "60s"])
        try await RestartCheck.run(
            broker,
            plan: .init(publishes: 100, pause: .milliseconds(20), minimumAcknowledged: 90),
            restart: { try await TestEnvironment.restartServer("BROKERKIT_TEST_KAFKA_RESTART", pause: 1) }
        )
        await broker.close()
    }
}
