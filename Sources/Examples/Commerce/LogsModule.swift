import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle

/// The logs module: other modules publish structured log events to the stream `commerce.logs`
/// (key = order id); the consumer group `log-aggregator` counts them by level.
struct LogsModule: Sendable {
    static let stream = "commerce.logs"
    static let group = "log-aggregator"
    static let partitions = 3

    let broker: any Broker
    let runID: String
    let state: CommerceState

    func prepare() async throws {
        try await ExampleSupport.ensureDestination(
            Self.stream,
            kind: .stream,
            options: DestinationOptions(partitions: Self.partitions),
            on: broker
        )
    }

    /// Publishes one log event and counts it.
    func log(_ level: Logger.Level, module: String, _ message: String, orderID: String? = nil) async throws {
        let event = LogEvent(
            runID: runID,
            id: Message.newID(),
            level: level.rawValue,
            module: module,
            message: message,
            orderID: orderID,
            timestamp: Date()
        )
        try await broker.publish(
            Message(
                key: orderID ?? module,
                payload: try ExampleSupport.encode(event),
                headers: ["content-type": "application/json"]
            ),
            to: Self.stream
        )
        state.update { $0.logsPublished += 1 }
    }

    /// The aggregating consumer, as a service, plus its consumer (closed by the caller at the end).
    func makeService(logger: Logger) async throws -> (service: any Service, consumer: any MessageConsumer) {
        let consumer = try await broker.consumeStream(
            Self.stream,
            group: Self.group,
            options: StreamConsumerOptions(
                start: .earliest,
                prefetch: 64,
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
            options: .init(concurrency: 2, orderedByKey: true, shutdownTimeout: .seconds(5)),
            logger: logger
        ) { delivery in
            let event: LogEvent
            do { event = try ExampleSupport.decode(LogEvent.self, from: delivery.message.payload) } catch {
                try await delivery.deadLetter(reason: "undecodable log event: \(error)")
                return
            }
            guard event.runID == runID else { return }
            state.update { counts in
                if counts.logsConsumed.insert(event.id).inserted { counts.logsByLevel[event.level, default: 0] += 1 }
            }
        }
        return (ProcessorService(processor), consumer)
    }

    /// Whether every published event was aggregated and the group has no lag.
    func progress(_ counts: CommerceCounts) async throws -> (done: Bool, lag: Int?, status: String) {
        let lag = ExampleSupport.lag(of: Self.group, in: try await broker.stats(for: Self.stream))
        let done = counts.logsConsumed.count == counts.logsPublished && lag == 0
        return (
            done, lag, "logs \(counts.logsConsumed.count)/\(counts.logsPublished) (lag \(lag.map(String.init) ?? "?"))"
        )
    }
}
