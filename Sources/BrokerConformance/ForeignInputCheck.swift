import BrokerAPI
import Foundation

/// A record another program writes straight to the broker, bypassing BrokerKit: how a
/// backend's test proves that input BrokerKit did not write can neither crash nor stall a
/// consumer. The backend's test supplies the records, each written through an
/// independent client (`redis-cli`, pika, kcat…); ``ForeignInputCheck`` holds the shared
/// expectations.
///
/// ```swift
/// let records = [
///     ForeignRecord("attempt = 20 digits", expect: .deadLettered(naming: "attempt")) { queue in
///         try await redisCLI(["XADD", queue, "*", "attempt", "99999999999999999999", "payload", "x"])
///     },
/// ]
/// try await ForeignInputCheck.run(records, on: broker, queue: "foreign-\(UUID())")
/// ```
public struct ForeignRecord: Sendable {
    /// What the consumer must do with it.
    public enum Expectation: Sendable {
        /// Dead-lettered once, with a `lastError` containing this text (the field's name).
        case deadLettered(naming: String)
        /// Delivered to the app, the bad field ignored as the backend's docs say.
        case delivered
    }

    /// Writes the record to a queue (its name as the app sees it; add the backend's prefix if
    /// the harness sets one).
    public typealias Write = @Sendable (_ queue: String) async throws -> Void

    public let label: String
    public let expectation: Expectation
    public let write: Write

    public init(_ label: String, expect expectation: Expectation, write: @escaping Write) {
        self.label = label
        self.expectation = expectation
        self.write = write
    }
}

/// The shared expectations for ``ForeignRecord``s.
public enum ForeignInputCheck {
    /// Writes every record to a fresh queue, each followed by a good message published with
    /// BrokerKit, then consumes through a ``DeliveryProcessor`` (4 handlers, prefetch 8) and
    /// checks that: every good message and every `.delivered` record reached the handler;
    /// no dead-lettered record did; the DLQ holds exactly one entry per `.deadLettered`
    /// record, whose last error names its field; and the queue ends empty with nothing in
    /// flight. Throws ``ConformanceFailure`` naming what did not hold.
    ///
    /// With `nackForeignOnce`, the handler fails every foreign record the first time it sees
    /// it (so its retry copy, built from what was read, is published too) and succeeds the
    /// second time.
    public static func run(
        _ records: [ForeignRecord],
        on broker: any Broker,
        queue: String,
        timeout: Duration = .seconds(60),
        nackForeignOnce: Bool = false
    ) async throws {
        try await broker.createQueue(queue)
        var good: Set<String> = []
        for (index, record) in records.enumerated() {
            do { try await record.write(queue) } catch {
                throw ConformanceFailure("writing foreign record '\(record.label)' failed: \(error)")
            }
            let text = "good-\(index)"
            try await broker.publish(Message(text: text), to: queue)
            good.insert(text)
        }
        let delivered = Collector<String>()
        let failedOnce = Collector<String>()
        let goodTexts = good
        let consumer = try await broker.consumeQueue(
            queue,
            options: .init(prefetch: 8, retryPolicy: RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(100))))
        )
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 4)) { delivery in
            let text = delivery.message.text ?? "<\(delivery.message.payload.count) bytes>"
            let foreign = !goodTexts.contains(text)
            if nackForeignOnce && foreign && !failedOnce.values.contains(delivery.message.id) {
                failedOnce.append(delivery.message.id)
                throw ConformanceFailure("fails once, so that a retry copy is published")
            }
            delivered.append(foreign ? "foreign:\(delivery.message.id)" : text)
        }
        let run = Task { try await processor.run() }
        let expectedDelivered = records.filter {
            if case .delivered = $0.expectation { return true } else { return false }
        }.count
        let expectedDead = records.filter {
            if case .deadLettered = $0.expectation { return true } else { return false }
        }
        let deadline = ContinuousClock.now + timeout
        var deadCount = 0
        while ContinuousClock.now < deadline {
            deadCount = (try? await broker.stats(for: queue).deadLettered) ?? deadCount
            let goodSeen = good.isSubset(of: Set(delivered.values))
            if goodSeen && delivered.count >= good.count + expectedDelivered && deadCount >= expectedDead.count {
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .milliseconds(300))  // anything extra shows up now
        processor.stop()
        _ = try? await run.value
        let seen = delivered.values
        let missing = good.subtracting(seen)
        if !missing.isEmpty {
            throw ConformanceFailure(
                "good messages behind foreign records never arrived: \(missing.sorted()); delivered \(seen)"
            )
        }
        let extra = seen.count - good.count
        if extra != expectedDelivered {
            throw ConformanceFailure(
                "\(extra) foreign records reached the handler, expected \(expectedDelivered): \(seen.filter { !good.contains($0) })"
            )
        }
        let dead = try await broker.deadLetters(of: queue, limit: 1000)
        if dead.count != expectedDead.count {
            throw ConformanceFailure(
                "the DLQ holds \(dead.count) entries, expected \(expectedDead.count): \(dead.map(\.envelope.lastError))"
            )
        }
        for record in expectedDead {
            guard case .deadLettered(let field) = record.expectation else { continue }
            if !dead.contains(where: { $0.envelope.lastError.contains(field) }) {
                throw ConformanceFailure(
                    "no DLQ entry names '\(field)' for '\(record.label)': \(dead.map(\.envelope.lastError))"
                )
            }
        }
        let stats = try await broker.stats(for: queue)
        if stats.depth != 0 || stats.inFlight != 0 {
            throw ConformanceFailure("the queue did not end empty: depth \(stats.depth), in flight \(stats.inFlight)")
        }
    }
}
