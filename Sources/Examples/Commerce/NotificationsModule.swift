import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle

/// The notifications module: order confirmations on the queue `commerce.notifications`,
/// handled by a ``DeliveryProcessor``. A payload that cannot be decoded is poison: it goes
/// straight to the dead-letter queue with the reason and the queue keeps flowing.
struct NotificationsModule: Sendable {
    static let queue = "commerce.notifications"
    /// Header that tags a run's notifications (the poison one has no readable payload).
    static let runHeader = "example-run"

    let broker: any Broker
    let runID: String
    let state: CommerceState

    func prepare() async throws {
        try await ExampleSupport.ensureDestination(Self.queue, kind: .queue, on: broker)
    }

    /// Queues the confirmation of an imported order.
    func confirm(_ order: ImportOrder) async throws {
        let confirmation = OrderConfirmation(
            runID: runID,
            orderID: order.orderID,
            customer: order.customer,
            channel: "email",
            totalCents: order.totalCents
        )
        try await publish(Message(key: order.customer, payload: try ExampleSupport.encode(confirmation)))
    }

    /// Queues a message a buggy producer truncated: not valid JSON.
    func publishPoison() async throws {
        try await publish(
            Message(key: "legacy-shop", payload: Data(#"{"orderID": "order-0001", "customer": "acme"#.utf8))
        )
    }

    private func publish(_ message: Message) async throws {
        var message = message
        message.headers[Self.runHeader] = runID
        message.headers["content-type"] = "application/json"
        try await broker.publish(message, to: Self.queue)
        state.update { $0.notificationsPublished += 1 }
    }

    func makeService(logger: Logger) async throws -> (service: any Service, consumer: any MessageConsumer) {
        let consumer = try await broker.consumeQueue(
            Self.queue,
            options: QueueConsumerOptions(
                prefetch: 8,
                retryPolicy: RetryPolicy(
                    maxAttempts: 3,
                    backoff: .exponential(initial: .milliseconds(20), max: .milliseconds(200))
                )
            )
        )
        let runID = self.runID
        let state = self.state
        let processor = DeliveryProcessor(
            consumer: consumer,
            options: .init(concurrency: 4, orderedByKey: true, shutdownTimeout: .seconds(5)),
            logger: logger
        ) { delivery in
            guard delivery.message.headers[Self.runHeader] == runID else { return }  // an earlier run's leftover
            let confirmation: OrderConfirmation
            do {
                confirmation = try ExampleSupport.decode(OrderConfirmation.self, from: delivery.message.payload)
            } catch {
                // Poison input: retrying cannot help. Dead-letter it with the reason and move on.
                logger.warning("dead-lettering undecodable notification \(delivery.message.id)")
                try await delivery.deadLetter(reason: "undecodable order confirmation: \(error)")
                state.update { $0.poisonDeadLettered += 1 }
                return
            }
            // A real app would send the e-mail / SMS here.
            try await Task.sleep(for: .milliseconds(1))
            state.update { _ = $0.notified.insert(confirmation.orderID) }
        }
        return (ProcessorService(processor), consumer)
    }

    /// This run's entries in the notifications DLQ.
    func deadLetters() async throws -> [DeadLetterSummary] {
        try await broker.deadLetters(of: Self.queue, limit: 10_000)
            .filter { $0.envelope.original.headers[Self.runHeader] == runID }
            .map(DeadLetterSummary.init)
    }

    func progress(_ counts: CommerceCounts, orders: Int) async throws -> (done: Bool, status: String) {
        let stats = try await broker.stats(for: Self.queue)
        let dlq = counts.poisonDeadLettered >= 1 ? try await deadLetters().count : 0
        let done =
            counts.notified.count == orders && counts.poisonDeadLettered == 1 && dlq == 1
            && stats.depth == 0 && stats.inFlight == 0
        return (
            done,
            "notifications \(counts.notified.count)/\(orders) (depth \(stats.depth), in flight \(stats.inFlight), poison in DLQ \(dlq)/1)"
        )
    }
}
