@_spi(BrokerBackend) import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import KafkaBackend
import Testing

/// Issue 22 on Kafka: records another producer (kcat) writes with BrokerKit's reserved
/// headers. Each test fails on e6eff75.
@Suite("Kafka hostile input", .enabled(if: TestEnvironment.shouldRun(.kafka)))
struct KafkaForeignInputTests {
    /// Item 3: a stream record carrying `x-brokerkit-deliver-at` far in the future was held
    /// back forever; the group's committed position never passed it, so every restart replayed
    /// everything after it. The header is honoured only on a queue's delay and retry topics.
    @Test func aStreamRecordWithAFarDeliverAtIsDeliveredAndCommittedPast() async throws {
        let broker = try await KafkaTestSupport.connect()
        let stream = "foreign-deliver-at-\(UUID().uuidString.prefix(8))"
        try await broker.createStream(stream, options: DestinationOptions(partitions: 1))
        let topic = KafkaTestSupport.runPrefix + stream
        try await KafkaInteropTests.kcat(
            [
                "-P", "-t", topic, "-H", "\(HeaderName.deliverAt)=2999-01-01T00:00:00.000Z", "-H",
                "\(HeaderName.attempt)=99",
            ],
            input: "held?\n"
        )
        let sent = (0..<10).map { Message(key: "k", text: "m\($0)") }
        _ = try await broker.publish(sent, to: stream)
        let first = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
        var got: [Delivery] = []
        while got.count < 11, let delivery = try await first.next(timeout: .seconds(15)) {
            got.append(delivery)
            try await delivery.ack()
        }
        await first.close()
        #expect(got.map { $0.message.text ?? "" } == ["held?"] + sent.map { $0.text ?? "" })
        #expect(got.first?.attempt == 1, "a stream record's attempt header was honoured")
        #expect(got.first?.message.headers[HeaderName.deliverAt] == nil)
        let second = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
        let again = try await second.next(timeout: .seconds(5))
        await second.close()
        #expect(again == nil, "the group replayed '\(again?.message.text ?? "")' after the held record")
        await broker.close()
    }

    /// Item 3, queue side: on a queue's delay topic a due time more than a year ahead, or an
    /// attempt that is not a number in range, is dead-lettered naming the header; a record
    /// due in a second arrives after it; the queue keeps flowing.
    @Test func badHeadersOnTheDelayTopicAreDeadLetteredNamingThem() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "foreign-delay-\(UUID().uuidString.prefix(8))"
        let delayTopic = KafkaTestSupport.runPrefix + queue + ".delay"
        let retryTopic = KafkaTestSupport.runPrefix + queue + ".retry.1"
        let soon = ISO8601.format(Date().addingTimeInterval(1))
        let records = [
            ForeignRecord("deliver-at in 2999", expect: .deadLettered(naming: "'\(HeaderName.deliverAt)'")) { _ in
                _ = try await KafkaInteropTests.kcat(
                    ["-P", "-t", delayTopic, "-H", "\(HeaderName.deliverAt)=2999-01-01T00:00:00.000Z"],
                    input: "far\n"
                )
            },
            ForeignRecord("attempt 20 digits", expect: .deadLettered(naming: "'\(HeaderName.attempt)'")) { _ in
                _ = try await KafkaInteropTests.kcat(
                    ["-P", "-t", delayTopic, "-H", "\(HeaderName.attempt)=99999999999999999999"],
                    input: "attempt\n"
                )
            },
            ForeignRecord(
                "attempt Int64.max on a retry topic",
                expect: .deadLettered(naming: "is '9223372036854775807'")
            ) { _ in
                _ = try await KafkaInteropTests.kcat(
                    ["-P", "-t", retryTopic, "-H", "\(HeaderName.attempt)=9223372036854775807"],
                    input: "max\n"
                )
            },
            ForeignRecord("attempt -1 on a retry topic", expect: .deadLettered(naming: "is '-1'")) { _ in
                _ = try await KafkaInteropTests.kcat(
                    ["-P", "-t", retryTopic, "-H", "\(HeaderName.attempt)=-1"],
                    input: "minus\n"
                )
            },
            ForeignRecord("due in a second", expect: .delivered) { _ in
                _ = try await KafkaInteropTests.kcat(
                    ["-P", "-t", delayTopic, "-H", "\(HeaderName.deliverAt)=\(soon)"],
                    input: "soon\n"
                )
            },
        ]
        // The delay topic exists once the queue does.
        try await broker.createQueue(queue)
        try await ForeignInputCheck.run(records, on: broker, queue: queue)
        await broker.close()
    }

    /// A key or header that is not UTF-8 was decoded with replacement characters (a retry or
    /// DLQ copy then carried other bytes); now the record is dead-lettered naming it, and the
    /// queue keeps flowing.
    @Test func textThatIsNotUTF8IsDeadLetteredNamingIt() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "foreign-utf8-\(UUID().uuidString.prefix(8))"
        let topic = KafkaTestSupport.runPrefix + queue
        let (host, port) = try #require(TestEnvironment.hostAndPort(try KafkaTestSupport.url()))
        /// kcat through the shell, whose printf writes the raw bytes into an argument.
        func rawKcat(_ script: String) -> ForeignRecord.Write {
            { _ in
                try await TestEnvironment.blocking {
                    let process = Process()
                    process.executableURL = URL(fileURLWithPath: "/bin/sh")
                    process.arguments = ["-c", "printf 'x\\n' | kcat -b \(host):\(port) -P -t \(topic) " + script]
                    process.standardOutput = FileHandle.nullDevice
                    try process.run()
                    process.waitUntilExit()
                    guard process.terminationStatus == 0 else {
                        throw ConformanceFailure("kcat exited with \(process.terminationStatus)")
                    }
                }
            }
        }
        let records = [
            ForeignRecord(
                "header value not UTF-8",
                expect: .deadLettered(naming: "header 'source'"),
                write: rawKcat(#"-H "source=$(printf '\377\376')""#)
            ),
            ForeignRecord(
                "key not UTF-8",
                expect: .deadLettered(naming: "key"),
                write: rawKcat(#"-k "$(printf '\303\050')""#)
            ),
        ]
        try await broker.createQueue(queue, options: DestinationOptions(partitions: 1))
        try await ForeignInputCheck.run(records, on: broker, queue: queue)
        await broker.close()
    }

    /// Item 12: replaying a DLQ that holds a record without an envelope (another producer
    /// wrote it) committed past that record without sending it anywhere: it was lost. Now it
    /// goes to the queue as it is, as on the other backends.
    @Test func replayKeepsDeadLettersWithoutAnEnvelope() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "foreign-replay-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        try await broker.publish(Message(text: "dead"), to: queue)
        let consumer = try await broker.consumeQueue(queue)
        let delivery = try #require(try await consumer.next(timeout: .seconds(15)))
        try await delivery.deadLetter(reason: "first")
        try await KafkaInteropTests.kcat(
            ["-P", "-t", KafkaTestSupport.runPrefix + queue + ".dlq"],
            input: "foreign dead letter\n"
        )
        let listed = try await broker.deadLetters(of: queue, limit: 10)
        #expect(listed.count == 2, "listing hides a record that replay moves: \(listed)")
        #expect(
            listed.contains {
                $0.envelope.original.text == "foreign dead letter"
                    && $0.envelope.lastError.contains("no dead-letter envelope")
            }
        )
        let replayed = try await broker.replayDeadLetters(of: queue, limit: 10)
        #expect(replayed == 2)
        var texts: Set<String> = []
        while texts.count < 2, let again = try await consumer.next(timeout: .seconds(15)) {
            texts.insert(again.message.text ?? "")
            try await again.ack()
        }
        await consumer.close()
        #expect(texts == ["dead", "foreign dead letter"])
        await broker.close()
    }

    /// A forged envelope on the DLQ topic (another producer set BrokerKit's headers): an
    /// origin that names Kafka's internals, attempts and times that are not numbers or out of
    /// range, a deliver-at a year ahead. Listing reads it with those fields ignored; replay
    /// sends it to the queue whose DLQ held it, without the reserved headers, so it is
    /// delivered at once (not held back) and with a fresh attempt count.
    @Test func forgedDeadLetterEnvelopesAreReplayedToTheirQueue() async throws {
        let broker = try await KafkaTestSupport.connect()
        let queue = "foreign-forged-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        let aYearAhead = Int64(Date().timeIntervalSince1970 * 1000) + 366 * 86_400_000
        let forged: [(String, [String])] = [
            ("to-internals", ["x-brokerkit-original-destination=__consumer_offsets", "x-brokerkit-attempts=-1"]),
            (
                "huge-attempts",
                ["x-brokerkit-original-destination=\(queue)", "x-brokerkit-attempts=99999999999999999999"]
            ),
            (
                "held",
                [
                    "x-brokerkit-original-destination=../\(queue)", "x-brokerkit-attempt=9223372036854775807",
                    "x-brokerkit-deliver-at=\(aYearAhead)", "x-brokerkit-failed-at=yesterday",
                    "x-brokerkit-first-failure-at=-1",
                ]
            ),
        ]
        for (text, headers) in forged {
            try await KafkaInteropTests.kcat(
                ["-P", "-t", KafkaTestSupport.runPrefix + queue + ".dlq"] + headers.flatMap { ["-H", $0] },
                input: text + "\n"
            )
        }
        let listed = try await broker.deadLetters(of: queue, limit: 10)
        #expect(Set(listed.compactMap(\.envelope.original.text)) == ["to-internals", "huge-attempts", "held"])
        #expect(listed.allSatisfy { $0.envelope.attempts >= 0 })
        #expect(try await broker.replayDeadLetters(of: queue, limit: 10) == 3)
        let consumer = try await broker.consumeQueue(queue)
        var texts: Set<String> = []
        while texts.count < 3, let delivery = try await consumer.next(timeout: .seconds(15)) {
            texts.insert(delivery.message.text ?? "")
            #expect(delivery.attempt == 1, "'\(delivery.message.text ?? "")' kept a forged attempt count")
            #expect(!delivery.message.headers.keys.contains { $0.hasPrefix("x-brokerkit-") })
            try await delivery.ack()
        }
        await consumer.close()
        #expect(texts == ["to-internals", "huge-attempts", "held"], "replayed records missing or held back")
        #expect(try await broker.deadLetters(of: queue, limit: 10).isEmpty)
        await broker.close()
    }
}
