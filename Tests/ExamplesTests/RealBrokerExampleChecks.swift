import BrokerAPI
import Examples
import Logging
import Testing

/// What the example apps must report on any real broker (Redis, Kafka, ...): the same
/// checks, whichever backend the broker is.
enum RealBrokerExampleChecks {
    static func quietLogger(_ backend: String) -> Logger {
        var logger = Logger(label: "examples-\(backend)")
        logger.logLevel = .error
        return logger
    }

    /// Runs the chat example on `broker` (closing it) and checks its report.
    static func chat(on broker: any Broker, backend: String) async throws {
        let report = try await ChatExample.run(broker: broker, logger: quietLogger(backend))
        await broker.close()
        #expect(report.backend == backend)
        #expect(report.handledByGroup == [ChatExample.readReceiptsGroup: 20, ChatExample.pushGroup: 20])
        #expect(report.outOfOrder == 0)
        #expect(report.lagByGroup == [ChatExample.readReceiptsGroup: 0, ChatExample.pushGroup: 0])
        #expect(report.notificationsHandled == 20)
        #expect(report.emailsSent == 2 && report.emailsRetried == 6 && report.emailsDeadLettered == 1)
        #expect(report.deadLetters.first?.lastError.contains("bounce@chat.example") == true)
    }

    /// Runs the commerce example on `broker` (closing it) and checks its report.
    static func commerce(on broker: any Broker, backend: String) async throws {
        let report = try await CommerceExample.run(broker: broker, logger: quietLogger(backend))
        await broker.close()
        #expect(report.backend == backend)
        #expect(report.ordersImported == 25 && report.duplicatesDropped == 1 && report.importRetries == 3)
        #expect(report.logsAggregated == report.logsPublished && report.logLag == 0)
        #expect(report.notificationsHandled == 25 && report.notificationDeadLetters.count == 1)
    }
}
