import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import KafkaBackend
import Testing

/// kcat, an independent librdkafka-based client, reads what BrokerKit produces and produces
/// what BrokerKit consumes; bad input gets clear errors.
@Suite("Kafka interop (kcat) and bad input", .enabled(if: TestEnvironment.shouldRun(.kafka)))
struct KafkaInteropTests {
    /// Runs kcat against the test broker; returns stdout.
    @discardableResult
    static func kcat(_ arguments: [String], input: String? = nil) async throws -> String {
        let (host, port) = try #require(TestEnvironment.hostAndPort(try KafkaTestSupport.url()))
        return try await TestEnvironment.blocking {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["kcat", "-b", "\(host):\(port)"] + arguments
            let output = Pipe()
            let stdin = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            process.standardInput = stdin
            try process.run()
            if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
            try stdin.fileHandleForWriting.close()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw ConformanceFailure("kcat \(arguments) exited with \(process.terminationStatus)")
            }
            return String(decoding: data, as: UTF8.self)
        }
    }

    @Test func brokerKitRecordReadsBackWithKcat() async throws {
        let broker = try await KafkaTestSupport.connect()
        let stream = "interop-out-\(UUID().uuidString.prefix(8))"
        try await broker.createStream(stream, options: DestinationOptions(partitions: 1))
        let message = Message(
            id: "msg-1",
            key: "user-7",
            text: "héllo from BrokerKit",
            headers: ["source": "swift", "trace": "a=b"]
        )
        let receipt = try await broker.publish(message, to: stream)
        await broker.close()
        let topic = KafkaTestSupport.runPrefix + stream
        let output = try await Self.kcat(["-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k|%h|%o|%s\\n"])
        let fields = output.trimmingCharacters(in: .newlines).split(separator: "|", omittingEmptySubsequences: false)
            .map(String.init)
        try #require(fields.count == 4, "kcat printed \(output)")
        #expect(fields[0] == "user-7")
        #expect(
            fields[1].contains("x-brokerkit-id=msg-1") && fields[1].contains("source=swift")
                && fields[1].contains("trace=a=b"),
            "headers \(fields[1])"
        )
        #expect(fields[2] == receipt.position?.offset)
        #expect(fields[3] == "héllo from BrokerKit")
    }

    @Test func kcatRecordIsConsumedByBrokerKit() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "interop-in-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue, options: DestinationOptions(partitions: 1))
        let topic = KafkaTestSupport.runPrefix + queue
        try await Self.kcat(
            ["-P", "-t", topic, "-K", ":", "-H", "origin=kcat", "-H", "x-brokerkit-id=from-kcat"],
            input: "k9:{\"n\":1}\n"
        )
        try await Self.kcat(["-P", "-t", topic], input: "bare\n")
        let consumer = try await broker.consumeQueue(queue)
        let first = try #require(try await consumer.next(timeout: .seconds(15)))
        let second = try #require(try await consumer.next(timeout: .seconds(15)))
        try await first.ack()
        try await second.ack()
        await consumer.close()
        #expect(first.message.id == "from-kcat")
        #expect(first.message.key == "k9")
        #expect(first.message.headers["origin"] == "kcat")
        #expect(first.message.headers["x-brokerkit-id"] == nil)
        #expect(first.message.text == "{\"n\":1}")
        #expect(first.attempt == 1)
        #expect(second.message.text == "bare" && second.message.key == nil)
        #expect(second.message.id == "\(topic)-0-\(second.position?.offset ?? "?")")
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await broker.stats(for: queue).depth == 0)
        await broker.close()
    }

    @Test func unknownTopicWithAutoCreateOffIsAClearError() async throws {
        let broker = try await KafkaTestSupport.connect(["auto.create": "false"])
        let name = "missing-\(UUID().uuidString.prefix(8))"
        do {
            try await broker.publish(Message(text: "x"), to: name)
            Issue.record("published to a missing topic with auto.create off")
        } catch let error as BrokerError {
            #expect(error.code == .unknownDestination)
            #expect(error.message.contains(KafkaTestSupport.runPrefix + name), "\(error)")
        }
        await broker.close()
    }

    @Test func brokerRejectsARecordOverTheTopicLimit() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "small-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(
            queue,
            options: DestinationOptions(partitions: 1, backendSettings: ["max.message.bytes": "2000"])
        )
        let big = Message(text: String(repeating: "y", count: 5000))
        do {
            try await broker.publish(big, to: queue)
            Issue.record("the broker accepted 5000 bytes on a topic limited to 2000")
        } catch let error as BrokerError {
            #expect(error.code == .messageTooLarge, "\(error)")
            #expect(error.message.contains(big.id) && error.destination == queue, "\(error)")
        }
        try await broker.publish(Message(text: "fits"), to: queue)
        let consumer = try await broker.consumeQueue(queue)
        let got = try #require(try await consumer.next(timeout: .seconds(15)))
        try await got.ack()
        let extra = try await consumer.next(timeout: .milliseconds(300))
        await consumer.close()
        await broker.close()
        #expect(got.message.text == "fits")
        #expect(extra == nil, "the rejected record was stored")
    }

    @Test func blockingRetryModeRedeliversInPlaceBeforeLaterRecords() async throws {
        let broker = try await KafkaTestSupport.connect(["retry.mode": "blocking"])
        let queue = "blocking-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue, options: DestinationOptions(partitions: 1))
        _ = try await broker.publish((0..<4).map { Message(key: "k", text: "b\($0)") }, to: queue)
        let policy = RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(200)))
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 1, retryPolicy: policy))
        var seen: [String] = []
        while seen.count < 5, let delivery = try await consumer.next(timeout: .seconds(15)) {
            seen.append("\(delivery.message.text ?? "?")#\(delivery.attempt)")
            if delivery.message.text == "b0" && delivery.attempt == 1 {
                try await delivery.nack(error: "first try fails")
            } else {
                try await delivery.ack()
            }
        }
        await consumer.close()
        #expect(seen == ["b0#1", "b0#2", "b1#1", "b2#1", "b3#1"], "order \(seen)")
        // In place: nothing went through a retry topic.
        let stats = try await broker.stats(for: queue)
        #expect(stats.delayed == 0 && stats.depth == 0, "\(stats)")
        await broker.close()
    }

    @Test func deleteRemovesTheTopicAndItsCompanions() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "deleted-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        try await broker.publish(Message(text: "x"), to: queue)
        #expect(try await broker.listDestinations().contains { $0.name == queue && $0.kind == .queue })
        try await broker.deleteDestination(queue)
        #expect(try await !broker.listDestinations().contains { $0.name == queue })
        let topics = try await Self.kcat(["-L"])
        #expect(
            !topics.contains(KafkaTestSupport.runPrefix + queue),
            "topics left: \(topics.split(separator: "\n").filter { $0.contains(queue) })"
        )
        await broker.close()
    }

    @Test func invalidLibrdkafkaPropertyNamesIt() async throws {
        do {
            _ = try await KafkaTestSupport.connect(["rdkafka.no.such.property": "1"])
            Issue.record("connected with an unknown librdkafka property")
        } catch let error as BrokerError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("no.such.property"), "\(error)")
        }
        do {
            _ = try await KafkaTestSupport.connect(["rdkafka.fetch.wait.max.ms": "soon"])
            Issue.record("connected with an invalid librdkafka value")
        } catch let error as BrokerError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("fetch.wait.max.ms") && error.message.contains("soon"), "\(error)")
        }
    }

    /// `.earliest` reads from the beginning only where the group has committed nothing, and
    /// resumes from the commit otherwise, whatever `auto.offset.reset` says: with earliest
    /// (the default) librdkafka places the partitions, with latest the backend looks the
    /// committed offsets up and sets them itself.
    @Test(arguments: ["earliest", "latest"])
    func earliestStartResumesFromTheCommitWhateverAutoOffsetReset(reset: String) async throws {
        let broker = try await KafkaTestSupport.connect(["auto.offset.reset": reset])
        let stream = "earliest-\(reset)-\(UUID().uuidString.prefix(8))"
        try await broker.createStream(stream, options: DestinationOptions(partitions: 2))
        for i in 0..<4 { try await broker.publish(Message(key: "k\(i)", text: "old-\(i)"), to: stream) }
        let group = "readers-\(reset)"
        let first = try await broker.consumeStream(stream, group: group, options: .init(start: .earliest))
        var seen: Set<String> = []
        for _ in 0..<4 {
            let delivery = try #require(
                try await first.next(timeout: .seconds(20)),
                "old records from the beginning, seen \(seen)"
            )
            seen.insert(delivery.message.text ?? "")
            try await delivery.ack()
        }
        #expect(seen == Set((0..<4).map { "old-\($0)" }))
        await first.close()  // commits what was acked
        for i in 0..<2 { try await broker.publish(Message(key: "k\(i)", text: "new-\(i)"), to: stream) }
        let second = try await broker.consumeStream(stream, group: group, options: .init(start: .earliest))
        var resumed: [String] = []
        while let delivery = try await second.next(timeout: .seconds(resumed.count < 2 ? 20 : 2)) {
            resumed.append(delivery.message.text ?? "")
            try await delivery.ack()
        }
        #expect(Set(resumed) == ["new-0", "new-1"] && resumed.count == 2, "resumed with \(resumed)")
        await second.close()
        try await broker.deleteDestination(stream)
        await broker.close()
    }

    /// A receipt's position is where the message sits in the destination. A delayed message
    /// sits in the queue's `.delay` topic until due, so its receipt has none; an immediate one
    /// has the queue topic's partition and offset.
    @Test func aDelayedPublishReceiptHasNoPosition() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "delayed-receipt-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        let now = try await broker.publish(Message(text: "now"), to: queue)
        let later = try await broker.publish(
            [Message(text: "later-1"), Message(text: "later-2")],
            to: queue,
            options: PublishOptions(deliverAt: Date().addingTimeInterval(1))
        )
        let position = try #require(now.position, "an immediate publish's receipt has its position")
        #expect((position.numericOffset ?? -1) >= 0 && position.partition >= 0, "\(position)")
        #expect(later.map(\.position) == [nil, nil], "delayed receipts: \(later)")
        let consumer = try await broker.consumeQueue(queue)
        var got: [String] = []
        while got.count < 3, let delivery = try await consumer.next(timeout: .seconds(20)) {
            got.append(delivery.message.text ?? "")
            try await delivery.ack()
        }
        #expect(got.sorted() == ["later-1", "later-2", "now"])
        await consumer.close()
        try await broker.deleteDestination(queue)
        await broker.close()
    }

    @Test func passThroughPropertyIsApplied() async throws {
        let broker = try await KafkaTestSupport.connect([
            "rdkafka.fetch.wait.max.ms": "20", "compression.type": "snappy",
        ])
        let queue = "passthrough-\(UUID().uuidString.prefix(8))"
        try await broker.publish(Message(text: "compressed"), to: queue)
        let consumer = try await broker.consumeQueue(queue)
        let got = try #require(try await consumer.next(timeout: .seconds(15)))
        try await got.ack()
        #expect(got.message.text == "compressed")
        await consumer.close()
        await broker.close()
    }
}
