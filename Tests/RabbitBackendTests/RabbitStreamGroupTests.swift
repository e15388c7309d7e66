import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RabbitBackend
import Testing

/// Stream behaviour the backend implements but whose capability flag it does not claim
/// (`consumerGroups`: members of one group cannot share the work; `replay`: receipts carry no
/// offset). These conformance cases need only independent groups, committed offsets and
/// replay from earliest, so they run here against a harness that lends the flags.
@Suite("amqp stream groups", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitStreamGroupTests {
    static let borrowed: Set<String> = [
        "stream.twoGroups.eachReceiveEveryMessage", "stream.replay.fromLatest",
        "stream.restart.resumesFromCommittedPosition", "stream.stats.lagAndDepth", "stream.replay.fromEarliest",
    ]

    static var cases: [ConformanceCase] { ConformanceSuite.allCases.filter { borrowed.contains($0.name) } }

    @Test("case", arguments: cases)
    func borrowedCase(_ testCase: ConformanceCase) async throws {
        try await RabbitTestSupport.runCase(
            testCase,
            capabilities: RabbitBackend().capabilities.union([.consumerGroups, .replay])
        )
    }

    @Test func allBorrowedCasesExist() {
        #expect(Self.cases.count == Self.borrowed.count)
    }

    @Test func oneActiveMemberPerGroupOthersTakeOver() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["stream.commit.interval": "50ms"])
            let stream = "bk-standby-\(UUID().uuidString.prefix(8))"
            try await broker.createStream(stream)
            _ = try await broker.publish((0..<10).map { Message(key: "k", text: "s\($0)") }, to: stream)
            let first = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
            let second = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
            var texts: [String] = []
            for _ in 0..<4 {
                let delivery = try #require(try await first.next(timeout: .seconds(10)))
                texts.append(delivery.message.text ?? "")
                try await delivery.ack()
            }
            #expect(try await second.next(timeout: .milliseconds(500)) == nil, "a standby member received a message")
            await first.close()
            for _ in 0..<6 {
                let delivery = try #require(try await second.next(timeout: .seconds(10)))
                texts.append(delivery.message.text ?? "")
                try await delivery.ack()
            }
            await second.close()
            #expect(texts == (0..<10).map { "s\($0)" })
            try await broker.deleteDestination(stream)
            await broker.close()
        }
    }

    @Test func nackRetriesInPlaceAndDeadLettersKeepOrder() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect()
            let stream = "bk-snack-\(UUID().uuidString.prefix(8))"
            try await broker.createStream(stream)
            _ = try await broker.publish((0..<3).map { Message(key: "k", text: "n\($0)") }, to: stream)
            let policy = RetryPolicy(maxAttempts: 2, backoff: .fixed(.milliseconds(200)))
            let consumer = try await broker.consumeStream(
                stream,
                group: "g",
                options: .init(start: .earliest, retryPolicy: policy)
            )
            let first = try #require(try await consumer.next(timeout: .seconds(10)))
            #expect(first.message.text == "n0" && first.position == Position(partition: 0, offset: 0))
            try await first.nack(error: "later")
            let again = try #require(try await consumer.next(timeout: .seconds(10)))
            #expect(again.message.text == "n0" && again.attempt == 2)
            #expect(try await again.nack(error: "boom") == .deadLettered(reason: "retries exhausted after 2 attempts"))
            let next = try #require(try await consumer.next(timeout: .seconds(10)))
            #expect(next.message.text == "n1")
            try await next.ack()
            await consumer.close()
            let dead = try await broker.deadLetters(of: stream, limit: 10)
            #expect(
                dead.count == 1 && dead.first?.envelope.lastError == "boom"
                    && dead.first?.envelope.original.headers["x-brokerkit-group"] == "g"
            )
            try await broker.deleteDestination(stream)
            await broker.close()
        }
    }
}
