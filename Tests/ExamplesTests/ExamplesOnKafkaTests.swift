import BrokerAPI
import BrokerConformance
import Examples
import Foundation
import Logging
import KafkaBackend
import Testing

/// The same example apps, unchanged, on a Kafka-protocol broker: swapping brokers is a URL.
@Suite("Examples on kafka", .enabled(if: TestEnvironment.shouldRun(.kafka)))
struct ExamplesOnKafkaTests {
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        KafkaBackend.register(in: registry)
        return registry
    }()

    var quiet: Logger {
        var logger = Logger(label: "examples-kafka")
        logger.logLevel = .error
        return logger
    }

    /// A prefix of its own, so runs never meet each other's destinations.
    func broker() async throws -> any Broker {
        try await Brokers.connect(
            url: try TestEnvironment.requireURL(.kafka),
            options: ["prefix": "ex\(UUID().uuidString.prefix(6))."], registry: Self.registry)
    }

    @Test("chat example on kafka: both groups see every event, the bounce lands in the DLQ")
    func chat() async throws {
        let broker = try await broker()
        let report = try await ChatExample.run(broker: broker, logger: quiet)
        await broker.close()
        #expect(report.backend == "kafka")
        #expect(report.handledByGroup == [ChatExample.readReceiptsGroup: 20, ChatExample.pushGroup: 20])
        #expect(report.outOfOrder == 0)
        #expect(report.lagByGroup == [ChatExample.readReceiptsGroup: 0, ChatExample.pushGroup: 0])
        #expect(report.notificationsHandled == 20)
        #expect(report.emailsSent == 2 && report.emailsRetried == 6 && report.emailsDeadLettered == 1)
        #expect(report.deadLetters.first?.lastError.contains("bounce@chat.example") == true)
    }

    @Test("commerce example on kafka: all orders imported, poison notification dead-lettered")
    func commerce() async throws {
        let broker = try await broker()
        let report = try await CommerceExample.run(broker: broker, logger: quiet)
        await broker.close()
        #expect(report.backend == "kafka")
        #expect(report.ordersImported == 25 && report.duplicatesDropped == 1 && report.importRetries == 3)
        #expect(report.logsAggregated == report.logsPublished && report.logLag == 0)
        #expect(report.notificationsHandled == 25 && report.notificationDeadLetters.count == 1)
    }
}
