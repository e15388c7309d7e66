import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle

/// The worker-queue module: order-import jobs on `commerce.order-imports`, run by a
/// ``JobWorker`` with concurrency 4, retried with exponential backoff when the ERP times out,
/// de-duplicated by idempotency key (the shop's webhook delivers one order twice). Each import
/// logs to the logs module and queues a confirmation on the notifications module.
struct OrderImportModule: Sendable {
    static let queue = "commerce.order-imports"
    static let concurrency = 4
    static let retryPolicy = RetryPolicy(
        maxAttempts: 3,
        backoff: .exponential(initial: .milliseconds(20), multiplier: 2, max: .milliseconds(200), jitter: 0.1)
    )

    let broker: any Broker
    let runID: String
    let state: CommerceState
    let logs: LogsModule
    let notifications: NotificationsModule

    func prepare() async throws {
        try await ExampleSupport.ensureDestination(Self.queue, kind: .queue, on: broker)
    }

    /// Dispatches `orders` in one batch, then the first order a second time with the same
    /// idempotency key. Returns the number of messages dispatched.
    @discardableResult
    func dispatch(_ orders: [ImportOrder]) async throws -> Int {
        let jobs = JobQueue(broker: broker, queue: Self.queue)
        var messages = try orders.map { try jobs.message(for: $0, idempotencyKey: idempotencyKey($0)) }
        if let first = orders.first {
            // The webhook fired twice for the first order.
            messages.append(try jobs.message(for: first, idempotencyKey: idempotencyKey(first)))
        }
        // Record ids before publishing so the worker's hooks can tell this run's jobs apart.
        state.update { counts in for message in messages { counts.orderJobIDs.insert(message.id) } }
        try await broker.publish(messages, to: Self.queue)
        return messages.count
    }

    private func idempotencyKey(_ order: ImportOrder) -> String { "\(runID):import:\(order.orderID)" }

    func makeWorker(erp: FakeERP, logger: Logger) -> JobWorker {
        let state = self.state
        let runID = self.runID
        let logs = self.logs
        let notifications = self.notifications
        @Sendable func ours(_ event: JobEvent) -> Bool { state.update { $0.orderJobIDs.contains(event.jobID) } }
        let hooks = JobHooks(
            onFailed: { event in
                if event.retryAfter != nil, ours(event) { state.update { $0.importRetries += 1 } }
            },
            onDeadLettered: { event in
                if ours(event) { state.update { $0.importsDeadLettered += 1 } }
            },
            onDuplicate: { event in
                if ours(event) { state.update { $0.duplicatesDropped += 1 } }
            }
        )
        let worker = JobWorker(
            broker: broker,
            queue: Self.queue,
            options: JobWorker.Options(
                concurrency: Self.concurrency,
                retryPolicy: Self.retryPolicy,
                jobTimeout: .seconds(10),
                shutdownTimeout: .seconds(5)
            ),
            hooks: hooks,
            logger: logger
        )
        worker.register(ImportOrder.self) { order, context in
            guard order.runID == runID else { return }  // an earlier run's leftover
            state.update { counts in
                counts.runningImports += 1
                counts.peakImports = max(counts.peakImports, counts.runningImports)
            }
            defer { state.update { $0.runningImports -= 1 } }
            do {
                try await erp.importOrder(order, attempt: context.attempt)
            } catch {
                try await logs.log(.error, module: "order-import", "\(error); will retry", orderID: order.orderID)
                throw error
            }
            try await logs.log(
                .info,
                module: "order-import",
                "imported \(order.orderID) for \(order.customer): \(order.lines.count) lines",
                orderID: order.orderID
            )
            if order.lines.count > CommercePlan.largeOrderLines {
                try await logs.log(
                    .warning,
                    module: "order-import",
                    "large order \(order.orderID): \(order.lines.count) lines, check stock",
                    orderID: order.orderID
                )
            }
            try await notifications.confirm(order)
            state.update { _ = $0.imported.insert(order.orderID) }
        }
        return worker
    }

    func progress(_ counts: CommerceCounts, orders: Int) async throws -> (done: Bool, status: String) {
        let stats = try await broker.stats(for: Self.queue)
        let done =
            counts.imported.count == orders && counts.duplicatesDropped == 1
            && stats.depth == 0 && stats.inFlight == 0 && stats.delayed == 0
        return (
            done,
            "imports \(counts.imported.count)/\(orders), duplicates dropped \(counts.duplicatesDropped)/1 (depth \(stats.depth), in flight \(stats.inFlight), delayed \(stats.delayed))"
        )
    }
}
