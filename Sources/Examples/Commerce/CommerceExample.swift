import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle

/// An e-commerce worker, a bridge between a shop and an ERP, with three modules on one broker:
///
/// - **worker queue**: order-import jobs on `commerce.order-imports`, run by a ``JobWorker``
///   with concurrency 4. The ERP times out once on every tenth order (3, 13, 23, ...); those
///   imports succeed on retry. The shop's webhook delivers the first order twice; the
///   idempotency key drops the duplicate.
/// - **logs**: every import publishes structured log events (`info` per import, `warning` for
///   orders with more than 3 lines, `error` per ERP timeout) to the stream `commerce.logs`;
///   the consumer group `log-aggregator` counts them by level.
/// - **notifications**: each imported order queues a confirmation on `commerce.notifications`,
///   consumed by a ``DeliveryProcessor``. One poison message (truncated JSON) is queued first;
///   it goes straight to the DLQ via `delivery.deadLetter(reason:)` and blocks nothing.
///
/// ```swift
/// let report = try await CommerceExample.run(broker: broker, logger: Logger(label: "commerce"))
/// print(report)
/// ```
public enum CommerceExample {
    /// The order-import job queue.
    public static let importQueue = OrderImportModule.queue
    /// The structured-log stream.
    public static let logStream = LogsModule.stream
    /// The consumer group that aggregates logs.
    public static let logGroup = LogsModule.group
    /// The notifications queue.
    public static let notificationsQueue = NotificationsModule.queue
    /// Jobs the import worker runs at once.
    public static let workerConcurrency = OrderImportModule.concurrency
    /// What the example needs from a backend (retries with backoff use delayed delivery).
    public static let requiredCapabilities: BrokerCapabilities = [.queues, .streams, .consumerGroups, .delayedDelivery]

    /// Runs the three modules over `orders` orders, waits until every import, log event and
    /// notification has settled (at most `timeout`), shuts down gracefully and reports.
    ///
    /// Destinations are created when missing and reused when they exist; only this run's
    /// messages are counted, so running it again on the same broker reports the same numbers.
    public static func run(
        broker: any Broker,
        logger: Logger,
        orders: Int = 25,
        timeout: Duration = .seconds(30)
    ) async throws -> Report {
        guard orders >= 1 else {
            throw ExampleError.invalidArgument("orders must be at least 1, got \(orders)")
        }
        try broker.require(requiredCapabilities, for: "the commerce example")
        let started = ContinuousClock.now
        let runID = ExampleSupport.newRunID()
        let logger = {
            var logger = logger
            logger[metadataKey: "example"] = "commerce"
            logger[metadataKey: "run"] = "\(runID)"
            return logger
        }()

        let state = CommerceState(CommerceCounts())
        let logs = LogsModule(broker: broker, runID: runID, state: state)
        let notifications = NotificationsModule(broker: broker, runID: runID, state: state)
        let imports = OrderImportModule(
            broker: broker,
            runID: runID,
            state: state,
            logs: logs,
            notifications: notifications
        )
        try await logs.prepare()
        try await notifications.prepare()
        try await imports.prepare()

        let plan = CommercePlan.orders(runID: runID, count: orders)
        let erp = FakeERP(
            flakyOrders: Set(
                plan.enumerated().compactMap { offset, order in
                    CommercePlan.erpTimesOutOnce(offset + 1) ? order.orderID : nil
                }
            )
        )
        let (logService, logConsumer) = try await logs.makeService(logger: logger)
        let (notificationService, notificationConsumer): (any Service, any MessageConsumer)
        do {
            (notificationService, notificationConsumer) = try await notifications.makeService(logger: logger)
        } catch {
            await logConsumer.close()
            throw error
        }
        let consumers = [logConsumer, notificationConsumer]
        let worker = imports.makeWorker(erp: erp, logger: logger)

        // Shut down in reverse order: the import worker first, then the modules it feeds.
        let services: [(name: String, service: any Service)] = [
            ("logs", logService),
            ("notifications", notificationService),
            ("order-import-worker", worker),
        ]
        let outcome: (dispatched: Int, notificationDLQ: [DeadLetterSummary], importDLQ: [DeadLetterSummary])
        do {
            outcome = try await ExampleSupport.withServices(services, example: "commerce", logger: logger) {
                try await notifications.publishPoison()
                let dispatched = try await imports.dispatch(plan)
                logger.info("dispatched \(dispatched) order-import jobs to \(importQueue)")
                try await ExampleSupport.waitUntilDone(example: "commerce", timeout: timeout) {
                    let counts = state.snapshot
                    let importProgress = try await imports.progress(counts, orders: orders)
                    let notificationProgress = try await notifications.progress(counts, orders: orders)
                    let logProgress = try await logs.progress(counts)
                    return ExampleSupport.Progress(
                        done: importProgress.done && notificationProgress.done && logProgress.done,
                        status: [importProgress.status, logProgress.status, notificationProgress.status].joined(
                            separator: ", "
                        )
                    )
                }
                let importDLQ = try await broker.deadLetters(of: importQueue, limit: 10_000).filter {
                    (try? ExampleSupport.decode(ImportOrder.self, from: $0.envelope.original.payload))?.runID == runID
                }
                return (dispatched, try await notifications.deadLetters(), importDLQ.map(DeadLetterSummary.init))
            }
        } catch {
            for consumer in consumers { await consumer.close() }
            throw error
        }
        for consumer in consumers { await consumer.close() }

        let counts = state.snapshot
        let logLag = ExampleSupport.lag(of: logGroup, in: try await broker.stats(for: logStream)) ?? -1
        let report = Report(
            backend: broker.backendName,
            runID: runID,
            ordersDispatched: outcome.dispatched,
            ordersImported: counts.imported.count,
            importRetries: counts.importRetries,
            duplicatesDropped: counts.duplicatesDropped,
            importsDeadLettered: counts.importsDeadLettered,
            peakConcurrentImports: counts.peakImports,
            importDeadLetters: outcome.importDLQ,
            logsPublished: counts.logsPublished,
            logsAggregated: counts.logsConsumed.count,
            logsByLevel: counts.logsByLevel,
            logLag: logLag,
            notificationsPublished: counts.notificationsPublished,
            notificationsHandled: counts.notified.count,
            notificationDeadLetters: outcome.notificationDLQ,
            elapsed: ContinuousClock.now - started
        )
        logger.info("commerce example finished", metadata: ["elapsed": "\(ExampleSupport.seconds(report.elapsed))"])
        return report
    }
}
