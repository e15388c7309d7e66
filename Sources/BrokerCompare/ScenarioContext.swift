@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// Why a scenario could not finish.
struct CompareFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The failure a work-queue handler throws on purpose (the retried 5 %).
struct InjectedFailure: Error, CustomStringConvertible {
    let index: Int
    let attempt: Int
    var description: String { "injected failure of message \(index), attempt \(attempt)" }
}

/// Header names the scenarios stamp on their messages.
enum CompareHeader {
    /// The message's index in the scenario.
    static let index = "cmp-index"
    /// ``Monotonic/nanos()`` just before the publish call.
    static let sent = "cmp-sent"
    /// Its sequence number within its key (ordered scenario).
    static let sequence = "cmp-seq"
    /// Marks the warm-up message that tells a consumer is attached and receiving.
    static let warmup = "cmp-warmup"
}

/// A ``DeliveryProcessor`` running in its own task, with its consumer.
final class ProcessorRun: Sendable {
    let processor: DeliveryProcessor
    let consumer: any MessageConsumer
    private let task = Mutex<Task<Void, Never>?>(nil)
    private let failure = Mutex<String?>(nil)

    init(
        consumer: any MessageConsumer,
        options: DeliveryProcessor.Options,
        logger: Logger,
        handler: @escaping DeliveryProcessor.Handler
    ) {
        self.consumer = consumer
        self.processor = DeliveryProcessor(consumer: consumer, options: options, logger: logger, handler: handler)
        let processor = self.processor
        let started = Task { [self] in
            do { try await processor.run() } catch { self.failure.withLock { $0 = "consumer stopped: \(error)" } }
        }
        task.withLock { $0 = started }
    }

    /// Set when the processor ended with an error.
    var failed: String? { failure.withLock { $0 } }

    /// Drains the processor and closes its consumer.
    func stop() async {
        processor.stop()
        await task.withLock { $0 }?.value
        await consumer.close()
    }
}

/// What one scenario needs: the broker, the settings, a deadline, and bookkeeping of what it
/// created, so it can be deleted afterwards.
final class ScenarioContext: Sendable {
    let broker: any Broker
    let settings: CompareSettings
    let scenario: CompareScenario
    let logger: Logger
    let deadline: ContinuousClock.Instant
    let payload: Data
    private let runID: String
    private let progress: @Sendable (String) -> Void
    private let created = Mutex<[String]>([])
    private let runs = Mutex<[ProcessorRun]>([])

    init(
        broker: any Broker,
        settings: CompareSettings,
        scenario: CompareScenario,
        logger: Logger,
        progress: @escaping @Sendable (String) -> Void
    ) {
        self.broker = broker
        self.settings = settings
        self.scenario = scenario
        self.logger = logger
        self.deadline = ContinuousClock.now + settings.scenarioTimeout
        self.payload = Data(repeating: UInt8(ascii: "x"), count: settings.payloadBytes)
        self.runID = String(UUID().uuidString.lowercased().prefix(6))
        self.progress = progress
    }

    var label: String { "[\(broker.backendName)] \(scenario.rawValue)" }

    /// Creates a fresh destination of this run (`cmp<run>-<suffix>`), remembered for ``cleanUp()``.
    func create(_ suffix: String, kind: DestinationKind, partitions: Int? = nil) async throws -> String {
        let name = "cmp\(runID)-\(suffix)"
        created.withLock { $0.append(name) }
        try await broker.createDestination(name, kind: kind, options: DestinationOptions(partitions: partitions))
        return name
    }

    /// Deletes what ``create(_:kind:partitions:)`` made; failures are logged, not thrown.
    func cleanUp() async {
        for run in runs.withLock({ $0 }) { await run.stop() }
        for name in created.withLock({ $0 }) {
            do {
                try await withBrokerTimeout(.seconds(30), what: "deleting \(name)") { [broker] in
                    try await broker.deleteDestination(name)
                }
            } catch {
                logger.warning("compare: could not delete \(name): \(error)")
            }
        }
    }

    /// Starts a processor that ``cleanUp()`` stops if the scenario does not.
    func startProcessor(
        _ consumer: any MessageConsumer,
        concurrency: Int,
        orderedByKey: Bool,
        handler: @escaping DeliveryProcessor.Handler
    ) -> ProcessorRun {
        let run = ProcessorRun(
            consumer: consumer,
            options: .init(concurrency: concurrency, orderedByKey: orderedByKey, shutdownTimeout: .seconds(10)),
            logger: logger,
            handler: handler
        )
        runs.withLock { $0.append(run) }
        return run
    }

    /// Stops processors in order (and forgets them).
    func stop(_ stopping: [ProcessorRun]) async {
        for run in stopping { await run.stop() }
        runs.withLock { all in all.removeAll { run in stopping.contains { $0 === run } } }
    }

    /// A scenario message: index and publish stamp in headers, the configured payload.
    func message(_ index: Int, key: String?, stamp: UInt64, headers extra: [String: String] = [:]) -> Message {
        var headers = extra
        headers[CompareHeader.index] = String(index)
        headers[CompareHeader.sent] = String(stamp)
        return Message(key: key, payload: payload, headers: headers)
    }

    /// Publishes messages `range` in awaited batches of 100, each stamped just before its
    /// publish call; returns the receipts.
    @discardableResult
    func publishBatches(
        _ range: Range<Int>,
        to destination: String,
        make: (Int, UInt64) -> Message
    ) async throws -> [PublishReceipt] {
        var receipts: [PublishReceipt] = []
        receipts.reserveCapacity(range.count)
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min(start + 100, range.upperBound)
            let stamp = Monotonic.nanos()
            let batch = (start..<end).map { make($0, stamp) }
            receipts += try await broker.publish(batch, to: destination)
            start = end
            try checkDeadline("publishing: \(start - range.lowerBound) of \(range.count) published")
        }
        return receipts
    }

    /// Publishes one warm-up message: consumers mark themselves ready when it arrives.
    func publishWarmup(to destination: String, key: String? = nil) async throws {
        try await broker.publish(
            Message(key: key, text: "warm-up", headers: [CompareHeader.warmup: "1"]),
            to: destination
        )
    }

    /// The message's index, or nil for a warm-up message.
    static func index(of delivery: Delivery) -> Int? {
        delivery.message.headers[CompareHeader.index].flatMap { Int($0) }
    }

    /// The publish stamp of a delivery.
    static func stamp(of delivery: Delivery) -> UInt64? {
        delivery.message.headers[CompareHeader.sent].flatMap { UInt64($0) }
    }

    /// Reads and acks `count` deliveries, returning their indices in arrival order (-1 for a
    /// message without one); `onFirst` runs as the first arrives. Closes the consumer when it
    /// fails, and leaves it open when it succeeds.
    func read(
        _ count: Int,
        from consumer: any MessageConsumer,
        what: String,
        onFirst: () -> Void = {}
    ) async throws -> [Int] {
        var indices: [Int] = []
        indices.reserveCapacity(count)
        do {
            while indices.count < count {
                guard let delivery = try await consumer.next(timeout: .seconds(1)) else {
                    try checkDeadline("\(what) \(indices.count) of \(count)")
                    continue
                }
                if indices.isEmpty { onFirst() }
                indices.append(Self.index(of: delivery) ?? -1)
                try await delivery.ack()
            }
        } catch {
            await consumer.close()
            throw error
        }
        return indices
    }

    func checkDeadline(_ status: @autoclosure () -> String) throws {
        if ContinuousClock.now >= deadline {
            throw CompareFailure("timed out after \(settings.scenarioTimeout): \(status())")
        }
        if let failed = runs.withLock({ $0.lazy.compactMap(\.failed).first }) {
            throw CompareFailure(failed)
        }
    }

    /// Polls `done` every 5 ms until it holds; reports `status` as progress about once a
    /// second; throws when the deadline passes or a processor failed.
    func waitUntil(_ status: @autoclosure @escaping () -> String, _ done: () -> Bool) async throws {
        let clock = ContinuousClock()
        var lastReport = clock.now
        while !done() {
            try checkDeadline(status())
            if clock.now - lastReport >= .seconds(1) {
                progress("\(label): \(status())")
                lastReport = clock.now
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    func report(_ status: String) { progress("\(label): \(status)") }
}
