import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import Logging
import RedisStreamsBackend
import Synchronization
import Testing

/// Issue 22 on Redis: entries, set members and fault paths that another program (here
/// `redis-cli`) can cause. Each test fails on e6eff75.
@Suite("Redis hostile input and fault paths", .enabled(if: TestEnvironment.shouldRun(.redis)))
struct RedisForeignInputTests {
    static func queueName(_ label: String) -> String { "foreign-\(label)-\(UUID().uuidString.prefix(8))" }

    /// `redis-cli -x`: the last argument is read from standard input, so it can hold any bytes.
    static func redisCLI(_ arguments: [String], lastArgument bytes: [UInt8]) async throws {
        let (host, port) = try #require(TestEnvironment.hostAndPort(try RedisTestSupport.url()))
        try await TestEnvironment.blocking {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["redis-cli", "-h", host, "-p", String(port), "-x"] + arguments
            let input = Pipe()
            process.standardInput = input
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            input.fileHandleForWriting.write(Data(bytes))
            try input.fileHandleForWriting.close()
            process.waitUntilExit()
        }
    }

    static func xadd(
        _ label: String,
        _ fields: [String],
        expect expectation: ForeignRecord.Expectation
    ) -> ForeignRecord {
        ForeignRecord(label, expect: expectation) { queue in
            let reply = try await RedisTestSupport.redisCLI(["XADD", queue, "*"] + fields)
            if reply.contains("ERR") { throw BrokerError(.brokerError, reply) }
        }
    }

    /// Every numeric field at Int64.max, -1 and 20 digits, text that is not UTF-8, 20,000
    /// headers, an entry without BrokerKit's fields, and garbage in the retry and delay sets:
    /// the consumer stays alive, every good message behind them arrives, and each bad one is
    /// in the DLQ once with a reason naming the field (issue 22, items 1 and 2).
    @Test func foreignEntriesAreDeadLetteredAndTheQueueKeepsFlowing() async throws {
        let broker = try await RedisTestSupport.connect(["claim.interval": "100ms"])
        let queue = Self.queueName("entries")
        var records: [ForeignRecord] = []
        for field in ["attempt", "ts", "ff"] {
            for value in ["9223372036854775807", "9999999999999999999", "-1", "99999999999999999999", "12abc"] {
                records.append(
                    Self.xadd(
                        "\(field) = \(value)",
                        [field, value, "payload", "bad \(field)"],
                        expect: .deadLettered(naming: "'\(field)'")
                    )
                )
            }
        }
        records.append(
            ForeignRecord("key not UTF-8", expect: .deadLettered(naming: "'key'")) { queue in
                try await Self.redisCLI(["XADD", queue, "*", "payload", "x", "key"], lastArgument: [0xFF, 0xFE, 0x41])
            }
        )
        records.append(
            ForeignRecord("header value not UTF-8", expect: .deadLettered(naming: "'h:source'")) { queue in
                try await Self.redisCLI(["XADD", queue, "*", "payload", "x", "h:source"], lastArgument: [0xC3, 0x28])
            }
        )
        records.append(
            ForeignRecord("20,000 headers", expect: .deadLettered(naming: "headers")) { queue in
                var fields: [String] = []
                for i in 0..<20_000 { fields += ["h:n\(i)", "v"] }
                _ = try await RedisTestSupport.redisCLI(["XADD", queue, "*"] + fields + ["payload", "many"])
            }
        )
        records.append(
            Self.xadd("no BrokerKit fields (payload empty, as documented)", ["foo", "bar"], expect: .delivered)
        )
        records.append(
            ForeignRecord("garbage in the delay set", expect: .deadLettered(naming: ":delay")) { queue in
                _ = try await RedisTestSupport.redisCLI(["ZADD", queue + ":delay", "0", "x"])
            }
        )
        records.append(
            ForeignRecord("a msgpack number in the retry set", expect: .deadLettered(naming: ":retry")) { queue in
                try await Self.redisCLI(["ZADD", queue + ":retry", "0"], lastArgument: [0x01])
            }
        )
        records.append(
            ForeignRecord("odd field list in the delay set", expect: .deadLettered(naming: "field-value pairs")) {
                queue in
                // msgpack array of 3 strings: 0x93, then fixstr "a", "b", "c".
                try await Self.redisCLI(
                    ["ZADD", queue + ":delay", "0"],
                    lastArgument: [0x93, 0xA1, 0x61, 0xA1, 0x62, 0xA1, 0x63]
                )
            }
        )
        try await ForeignInputCheck.run(records, on: broker, queue: queue)
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    /// The reproduction of item 2: one foreign member of the delay set stopped every delayed
    /// message of the queue for good (the move script failed on every pass).
    @Test func aDelayedMessageArrivesDespiteGarbageInTheDelaySet() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = Self.queueName("delay")
        try await broker.createQueue(queue)
        _ = try await RedisTestSupport.redisCLI(["ZADD", queue + ":delay", "0", "x"])
        _ = try await broker.publish(Message(text: "later"), to: queue, options: .delayed(by: .seconds(1)))
        let consumer = try await broker.consumeQueue(queue)
        let delivery = try await consumer.next(timeout: .seconds(10))
        #expect(delivery?.message.text == "later")
        try await delivery?.ack()
        await consumer.close()
        #expect(try await broker.stats(for: queue).deadLettered == 1)
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    /// Items 6 and 13: entries a live consumer holds (buffered, or with a handler slower than
    /// the lease) are neither reclaimed by itself nor taken by another consumer: 30 messages,
    /// 30 handler calls in all, no failed acks, however long past the 1 s lease the run goes.
    @Test func aLiveConsumersEntriesAreNeverReclaimed() async throws {
        let broker = try await RedisTestSupport.connect(["claim.interval": "100ms"])
        let other = try await RedisTestSupport.connect(["claim.interval": "100ms"])
        let queue = Self.queueName("lease")
        try await broker.createQueue(queue)
        _ = try await broker.publish((0..<30).map { Message(text: "m\($0)") }, to: queue)
        let calls = Mutex<[String]>([])
        let log = CapturedLog()
        let consumer = try await broker.consumeQueue(
            queue,
            options: .init(prefetch: 16, visibilityTimeout: .seconds(1))
        )
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 2), logger: log.logger) {
            delivery in
            calls.withLock { $0.append(delivery.message.text ?? "?") }
            try await Task.sleep(for: .milliseconds(250))
        }
        let run = Task { try await processor.run() }
        // A second consumer with the same lease polls all along: it must get nothing.
        let rival = try await other.consumeQueue(queue, options: .init(prefetch: 4, visibilityTimeout: .seconds(1)))
        var stolen: [String] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while calls.withLock({ Set($0) }).union(stolen).count < 30 && ContinuousClock.now < deadline {
            if let delivery = try await rival.next(timeout: .milliseconds(200)) {
                stolen.append(delivery.message.text ?? "?")
                try await delivery.ack()
            }
        }
        try await Task.sleep(for: .milliseconds(500))
        processor.stop()
        try await run.value
        await rival.close()
        let handled = calls.withLock { $0 }
        // The rival competes fairly for what the first consumer has not fetched; it must never
        // get what the first one holds, and nothing may be handled twice.
        #expect(handled.count + stolen.count == 30, "\(handled.count) + \(stolen.count) handler calls for 30 messages")
        #expect(
            Set(handled + stolen).count == 30,
            "some message was handled twice: \(handled.sorted()) / \(stolen.sorted())"
        )
        let warnings = log.lines.withLock { $0 }.filter { $0.level >= .warning }.map(\.message)
        #expect(warnings.isEmpty, "\(warnings)")
        #expect(try await broker.stats(for: queue).depth == 0)
        try await broker.deleteDestination(queue)
        await broker.close()
        await other.close()
    }

    /// Item 13, the other half: a consumer that died (here a foreign one that read an entry
    /// and never acked) gives its entries back within one lease.
    @Test func aDeadConsumersEntryComesBackWithinOneLease() async throws {
        let broker = try await RedisTestSupport.connect(["claim.interval": "100ms"])
        let queue = Self.queueName("dead")
        try await broker.createQueue(queue)
        try await broker.publish(Message(text: "orphan"), to: queue)
        _ = try await RedisTestSupport.redisCLI([
            "XREADGROUP", "GROUP", "brokerkit", "dead-worker", "COUNT", "1", "STREAMS", queue, ">",
        ])
        let started = ContinuousClock.now
        let consumer = try await broker.consumeQueue(queue, options: .init(visibilityTimeout: .seconds(2)))
        let delivery = try await consumer.next(timeout: .seconds(10))
        #expect(delivery?.message.text == "orphan" && delivery?.attempt == 2)
        #expect(ContinuousClock.now - started < .seconds(5))
        try await delivery?.ack()
        await consumer.close()
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    /// Item 12: dead-lettering an entry that another consumer already claimed and settled
    /// wrote a second DLQ copy (the script ignored XACK's result); now it fails with `closed`.
    @Test func deadLetteringAnEntryNoLongerHeldWritesNothing() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = Self.queueName("dlq-twice")
        try await broker.createQueue(queue)
        let receipt = try await broker.publish(Message(text: "once"), to: queue)
        let consumer = try await broker.consumeQueue(queue)
        let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
        let id = try #require(receipt.position?.offset)
        // Another consumer claims it and settles it.
        _ = try await RedisTestSupport.redisCLI(["XCLAIM", queue, "brokerkit", "other", "0", id, "JUSTID"])
        _ = try await RedisTestSupport.redisCLI(["XACK", queue, "brokerkit", id])
        await #expect(throws: BrokerError.self) { try await delivery.deadLetter(reason: "late") }
        #expect(try await broker.stats(for: queue).deadLettered == 0)
        await consumer.close()
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    /// An entry another program added to a DLQ stream is listed (saying it has no envelope)
    /// and replayed as it is, like every record replay moves.
    @Test func aDeadLetterWithoutAnEnvelopeIsListedAndReplayed() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = Self.queueName("bare-dlq")
        try await broker.createQueue(queue)
        _ = try await RedisTestSupport.redisCLI(["XADD", queue + ":dlq", "*", "h:trace", "t-1", "payload", "bare"])
        let listed = try await broker.deadLetters(of: queue, limit: 10)
        #expect(listed.count == 1, "\(listed)")
        #expect(listed.first?.envelope.original.text == "bare")
        #expect(listed.first?.envelope.lastError.contains("no dead-letter envelope") == true)
        #expect(try await broker.replayDeadLetters(of: queue, limit: 10) == 1)
        let consumer = try await broker.consumeQueue(queue)
        let delivery = try await consumer.next(timeout: .seconds(10))
        #expect(delivery?.message.text == "bare" && delivery?.message.headers["trace"] == "t-1")
        try await delivery?.ack()
        await consumer.close()
        #expect(try await broker.deadLetters(of: queue, limit: 10).isEmpty)
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    /// A DLQ entry is read from the broker too: one whose origin names a reserved structure
    /// (here another queue's delay set) is replayed to the queue whose DLQ held it, never there.
    @Test func replayIgnoresAnOriginThatIsNotAUsableName() async throws {
        let broker = try await RedisTestSupport.connect()
        let queue = Self.queueName("replay")
        try await broker.createQueue(queue)
        _ = try await RedisTestSupport.redisCLI([
            "XADD", queue + ":dlq", "*", "h:x-brokerkit-original-destination", "victim:delay",
            "h:x-brokerkit-last-error", "forged",
            "payload", "forged",
        ])
        #expect(try await broker.replayDeadLetters(of: queue, limit: 10) == 1)
        let consumer = try await broker.consumeQueue(queue)
        let delivery = try await consumer.next(timeout: .seconds(10))
        #expect(delivery?.message.text == "forged")
        try await delivery?.ack()
        await consumer.close()
        #expect(
            try await RedisTestSupport.redisCLI(["EXISTS", "victim:delay"]).trimmingCharacters(
                in: .whitespacesAndNewlines
            ) == "0"
        )
        try await broker.deleteDestination(queue)
        await broker.close()
    }
}
