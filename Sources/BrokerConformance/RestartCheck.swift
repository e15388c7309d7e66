import BrokerAPI
import Foundation

/// The broker restart every backend must survive (Watermill's universal tests restart the
/// service the same way): a consumer handles and acks while a publisher awaits one publish at
/// a time, and the broker goes away and comes back in the middle. A publish may fail while
/// the broker is away (the caller is told), but every acknowledged publish must reach the
/// same consumer afterwards, and publishing must work again once the broker is back.
///
/// `restart` stops and starts the broker (the test set-up's script); run this with no other
/// test using that broker (the serial restart pass).
public enum RestartCheck {
    public struct Plan: Sendable {
        /// Publishes, one at a time, each awaited.
        public var publishes: Int
        /// Pause between two publishes; the publishing spans the restart.
        public var pause: Duration
        /// Publishes that must be acknowledged (all of them where the backend retries a publish
        /// across a reconnect).
        public var minimumAcknowledged: Int
        /// How long after the restart the consumer gets to catch up.
        public var settle: Duration

        public init(publishes: Int, pause: Duration, minimumAcknowledged: Int, settle: Duration = .seconds(60)) {
            self.publishes = publishes
            self.pause = pause
            self.minimumAcknowledged = minimumAcknowledged
            self.settle = settle
        }
    }

    public static func run(_ broker: any Broker, plan: Plan, restart: @Sendable () async throws -> Void) async throws {
        let queue = "restart-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue, options: DestinationOptions(partitions: 1))
        let acknowledged = Collector<String>()
        let failed = Collector<String>()
        let handled = Collector<String>()
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 8))
        let consuming = Task {
            while !Task.isCancelled {
                guard let delivery = try await consumer.next(timeout: .seconds(1)) else { continue }
                handled.append(delivery.message.text ?? "")
                try? await delivery.ack()
            }
        }
        let last = "m\(plan.publishes - 1)"
        let publishing = Task {
            for index in 0..<plan.publishes {
                let text = "m\(index)"
                do {
                    try await broker.publish(Message(text: text), to: queue)
                    acknowledged.append(text)
                } catch {
                    failed.append("\(text): \(error)")
                }
                try await Task.sleep(for: plan.pause)
            }
        }
        try await Task.sleep(for: .milliseconds(400))
        try await restart()
        try await publishing.value
        let deadline = ContinuousClock.now + plan.settle
        while !Set(acknowledged.values).isSubset(of: Set(handled.values)), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        consuming.cancel()
        _ = await consuming.result
        await consumer.close()
        try? await broker.deleteDestination(queue)
        let lost = Set(acknowledged.values).subtracting(handled.values)
        var problems: [String] = []
        if acknowledged.count < plan.minimumAcknowledged {
            problems.append(
                "only \(acknowledged.count) of \(plan.publishes) publishes were acknowledged across the restart (at least \(plan.minimumAcknowledged) must be); failures: \(failed.values.prefix(5))"
            )
        }
        if !acknowledged.values.contains(last) {
            problems.append("publishing did not recover after the restart: \(failed.values.suffix(3))")
        }
        if !lost.isEmpty {
            problems.append(
                "\(lost.count) acknowledged publishes never delivered after the restart: \(lost.sorted().prefix(10))"
            )
        }
        if !problems.isEmpty { throw ConformanceFailure(problems.joined(separator: "; ")) }
    }
}
