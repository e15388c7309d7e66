import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RabbitBackend
import Testing

/// Issue 22 on RabbitMQ: settlement steps that fail, and headers another client wrote.
@Suite("amqp fault paths", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitFaultPathTests {
    static func queueName(_ label: String) -> String { "bk-fault-\(label)-\(UUID().uuidString.prefix(8).lowercased())" }

    /// Item 7: a dead-letter after the DLQ was deleted behind the process's back came back
    /// unroutable, and the delivery stayed unacked until the connection closed; after
    /// `prefetch` such failures the consumer received nothing. Now the DLQ is declared again.
    @Test func aDeadLetterAfterTheDLQWasDeletedStillLandsAndNothingIsStranded() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["queue.type": "classic"])
            let queue = Self.queueName("dlq-gone")
            try await broker.createQueue(queue)
            _ = try await broker.publish((0..<4).map { Message(text: "m\($0)") }, to: queue)
            let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 2))
            let first = try #require(try await consumer.next(timeout: .seconds(10)))
            try await first.deadLetter(reason: "primes the DLQ")
            _ = try await RabbitTestSupport.rabbitmqctl(["delete_queue", queue + ".dlq"])
            for _ in 0..<3 {
                let delivery = try #require(try await consumer.next(timeout: .seconds(10)), "the consumer stalled")
                try await delivery.deadLetter(reason: "after the DLQ was deleted")
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await RabbitAckTests.unacked(queue) == 0)
            #expect(try await broker.deadLetters(of: queue, limit: 10).count == 3)
            await consumer.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// Item 7: a retry whose copy the broker refuses (here a policy rejects every publish to
    /// the wait queue) throws, and the delivery comes back instead of staying unacked: more
    /// failures than `prefetch` and the consumer still receives.
    @Test func aRetryWhoseCopyIsRefusedGivesTheDeliveryBack() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["queue.type": "classic"])
            let queue = Self.queueName("copy-refused")
            let policy = "bk-reject-\(UUID().uuidString.prefix(8).lowercased())"
            _ = try await RabbitTestSupport.rabbitmqctl([
                "set_policy", "--apply-to", "queues", policy, "^\(queue)\\.wait\\.",
                #"{"max-length":0,"overflow":"reject-publish"}"#,
            ])
            defer { Task { _ = try? await RabbitTestSupport.rabbitmqctl(["clear_policy", policy]) } }
            try await Task.sleep(for: .milliseconds(500))  // the policy applies to queues declared from now on
            try await broker.createQueue(queue)
            try await broker.publish(Message(text: "stubborn"), to: queue)
            let consumer = try await broker.consumeQueue(
                queue,
                options: .init(
                    prefetch: 2,
                    retryPolicy: RetryPolicy(maxAttempts: 10, backoff: .fixed(.milliseconds(200)))
                )
            )
            var failures = 0
            for _ in 0..<4 {
                let delivery = try #require(
                    try await consumer.next(timeout: .seconds(10)),
                    "stalled after \(failures) failed retries"
                )
                #expect(delivery.message.text == "stubborn")
                do { try await delivery.nack(error: "boom") } catch { failures += 1 }
            }
            #expect(failures == 4, "the refused copies did not fail the nack")
            let last = try #require(try await consumer.next(timeout: .seconds(10)))
            try await last.ack()
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await RabbitAckTests.unacked(queue) == 0)
            await consumer.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// RabbitMQ's own bookkeeping headers, which BrokerKit reads as attempts and origins,
    /// cannot be published by an app (any case): refused before anything is sent.
    @Test(arguments: ["x-delivery-count", "x-death", "X-First-Death-Queue", "x-last-death-reason"])
    func rabbitBookkeepingHeadersAreRefused(name: String) async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect()
            let queue = Self.queueName("hdr")
            do {
                _ = try await broker.publish(Message(text: "x", headers: [name: "99"]), to: queue)
                Issue.record("\(name) was published")
            } catch let error as BrokerError {
                #expect(error.code == .invalidMessage && error.message.contains(name), "\(error)")
            }
            try? await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// Item 8: a stream member had one retry slot; a second nack within a backoff window
    /// overwrote the first, which never came again and held the committed position (and lag)
    /// back for good. Both come again, in offset order, before what follows.
    @Test func twoNacksInOneBackoffWindowAreBothRedelivered() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["stream.commit.interval": "50ms"])
            let stream = "bk-two-nacks-\(UUID().uuidString.prefix(8))"
            try await broker.createStream(stream)
            _ = try await broker.publish((0..<3).map { Message(key: "k", text: "n\($0)") }, to: stream)
            let consumer = try await broker.consumeStream(
                stream,
                group: "g",
                options: .init(
                    start: .earliest,
                    prefetch: 8,
                    retryPolicy: RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(300)))
                )
            )
            let first = try #require(try await consumer.next(timeout: .seconds(10)))
            let second = try #require(try await consumer.next(timeout: .seconds(10)))
            try await first.nack(error: "one")
            try await second.nack(error: "two")
            var seen: [String] = []
            while seen.count < 3, let delivery = try await consumer.next(timeout: .seconds(5)) {
                seen.append("\(delivery.message.text ?? "?")@\(delivery.attempt)")
                try await delivery.ack()
            }
            #expect(seen == ["n0@2", "n1@2", "n2@1"])
            await consumer.close()
            let lag = try await broker.stats(for: stream).groups.first { $0.group == "g" }?.lag
            #expect(lag == 0, "lag \(String(describing: lag)) after everything was acked")
            try await broker.deleteDestination(stream)
            await broker.close()
        }
    }

    /// Item 10: a member joining a group that has a stored position resumes it, whatever its
    /// `.position` says (a standby's activation used to rewind the whole group).
    @Test func aPositionStartDoesNotRewindAGroupWithAStoredOffset() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["stream.commit.interval": "50ms"])
            let stream = "bk-seek-once-\(UUID().uuidString.prefix(8))"
            try await broker.createStream(stream)
            _ = try await broker.publish((0..<10).map { Message(key: "k", text: "s\($0)") }, to: stream)
            let options = StreamConsumerOptions(start: .position(Position(offset: 0)), prefetch: 1)
            let first = try await broker.consumeStream(stream, group: "g", options: options)
            for _ in 0..<5 { try await #require(try await first.next(timeout: .seconds(10))).ack() }
            await first.close()
            let second = try await broker.consumeStream(stream, group: "g", options: options)
            let next = try await second.next(timeout: .seconds(10))
            #expect(next?.message.text == "s5", "the group was rewound to \(next?.message.text ?? "nothing")")
            try await next?.ack()
            await second.close()
            try await broker.deleteDestination(stream)
            await broker.close()
        }
    }

    /// Item 12: `stream.commit.interval` was parsed but unused (every 100 ms tick stored the
    /// position). With 3 s, a position acked now is stored only after that interval.
    @Test func streamCommitIntervalPacesTheStoredPosition() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["stream.commit.interval": "3s"])
            let stream = "bk-commit-interval-\(UUID().uuidString.prefix(8))"
            try await broker.createStream(stream)
            _ = try await broker.publish((0..<6).map { Message(text: "c\($0)") }, to: stream)
            let consumer = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
            // The first commit goes out at once; the acks after it wait for the interval.
            try await #require(try await consumer.next(timeout: .seconds(10))).ack()
            try await Task.sleep(for: .milliseconds(400))
            for _ in 0..<5 { try await #require(try await consumer.next(timeout: .seconds(10))).ack() }
            try await Task.sleep(for: .milliseconds(1000))
            let early = try await broker.stats(for: stream).groups.first { $0.group == "g" }?.lag
            try await Task.sleep(for: .milliseconds(2500))
            let late = try await broker.stats(for: stream).groups.first { $0.group == "g" }?.lag
            #expect(
                early == 5,
                "lag \(String(describing: early)) 1.4 s after the first commit: stored before the interval"
            )
            #expect(late == 0, "lag \(String(describing: late)) after the interval")
            await consumer.close()
            try await broker.deleteDestination(stream)
            await broker.close()
        }
    }

    /// Item 11: headers larger than `frame.max` failed inside the publish, broke the shared
    /// connection and were retried until `operation.timeout`, failing every publish in flight
    /// with `connectionFailed`. Now only that message fails, at once, with `messageTooLarge`.
    @Test func headersLargerThanAFrameFailAloneAndAtOnce() async throws {
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect(["frame.max": "4096", "operation.timeout": "20s"])
            let queue = Self.queueName("big-headers")
            try await broker.createQueue(queue)
            let started = ContinuousClock.now
            let outcomes = try await withThrowingTaskGroup(of: BrokerError.Code?.self) { group in
                for i in 0..<20 {
                    group.addTask {
                        do {
                            _ = try await broker.publish(Message(text: "small \(i)"), to: queue)
                            return nil
                        } catch let error as BrokerError {
                            return error.code
                        }
                    }
                }
                group.addTask {
                    do {
                        _ = try await broker.publish(
                            Message(text: "big", headers: ["blob": String(repeating: "x", count: 8_000)]),
                            to: queue
                        )
                        return nil
                    } catch let error as BrokerError { return error.code }
                }
                var codes: [BrokerError.Code?] = []
                for try await code in group { codes.append(code) }
                return codes
            }
            #expect(ContinuousClock.now - started < .seconds(5), "took \(ContinuousClock.now - started)")
            #expect(outcomes.compactMap { $0 } == [.messageTooLarge], "\(outcomes)")
            #expect(try await broker.stats(for: queue).depth == 20)
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// What another client (pika) can put in headers: numbers BrokerKit reads
    /// (`x-delivery-count`, `x-brokerkit-attempt`, `x-brokerkit-timestamp-ms`, the `timestamp`
    /// property) at and near `Int64.max` trapped in the attempt sum or the timestamp
    /// conversion and crashed the process; text that is not UTF-8, thousands of headers and
    /// deep nesting. Each record is delivered (its retry copy built too) or dead-lettered
    /// naming what is wrong, and the queue keeps flowing.
    @Test func foreignHeadersNeitherCrashNorStall() async throws {
        /// A pika publisher of one message with these headers and `timestamp` (Python literals).
        func pika(
            _ label: String,
            headers: String,
            timestamp: String = "None",
            expect: ForeignRecord.Expectation = .delivered,
            setup: String = "",
            properties: String = ""
        ) throws -> ForeignRecord {
            let url = try RabbitTestSupport.url()
            let writer = """
                import sys, pika
                \(setup)
                conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
                ch = conn.channel()
                ch.confirm_delivery()
                props = pika.BasicProperties(headers=\(headers), timestamp=\(timestamp), delivery_mode=2\(properties))
                ch.basic_publish("", sys.argv[2], b"foreign", props, mandatory=True)
                conn.close()
                """
            return ForeignRecord(label, expect: expect) { queue in
                let result = try await RabbitTestSupport.run("python3", ["-c", writer, url, queue])
                if result.status != 0 { throw ConformanceFailure("pika writer failed: \(result.output)") }
            }
        }
        // An attempt count at Int64.max says the attempts are spent: the first failure
        // dead-letters it (with the handler's error), instead of trapping in the sum.
        let spent = ForeignRecord.Expectation.deadLettered(naming: "fails once")
        let records = [
            try pika("x-delivery-count 2^63-1", headers: #"{"x-delivery-count": 2**63 - 1}"#, expect: spent),
            try pika("x-delivery-count -5", headers: #"{"x-delivery-count": -5}"#),
            try pika("x-brokerkit-attempt 2^63-1", headers: #"{"x-brokerkit-attempt": str(2**63 - 1)}"#, expect: spent),
            try pika("x-brokerkit-timestamp-ms 2^63-1", headers: #"{"x-brokerkit-timestamp-ms": 2**63 - 1}"#),
            try pika("timestamp property 2^63", headers: "{}", timestamp: "2**63"),
            // Text that is not UTF-8 in a text header (pika writes a str as 'S').
            try pika(
                "a text header that is not UTF-8",
                headers: #"{"source": b"\xff\xfe".decode("utf-8", "surrogateescape")}"#,
                expect: .deadLettered(naming: "header 'source' is not valid UTF-8"),
                setup:
                    #"pika.data.as_bytes = lambda v: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v"#
            ),
            // A header name and a message id that are not UTF-8 (were read with
            // replacement characters, so the copy carried other bytes).
            try pika(
                "a header name that is not UTF-8",
                headers: #"{b"k\xff".decode("utf-8", "surrogateescape"): "v"}"#,
                expect: .deadLettered(naming: "header name 'k\u{FFFD}' is not valid UTF-8"),
                setup:
                    #"pika.data.as_bytes = lambda v: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v"#
            ),
            try pika(
                "a nested header name that is not UTF-8",
                headers: #"{"outer": {b"n\xff".decode("utf-8", "surrogateescape"): 1}}"#,
                expect: .deadLettered(naming: "header name 'n\u{FFFD}' is not valid UTF-8"),
                setup:
                    #"pika.data.as_bytes = lambda v: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v"#
            ),
            try pika(
                "a message id that is not UTF-8",
                headers: "{}",
                expect: .deadLettered(naming: "property 'message-id' is not valid UTF-8"),
                properties: #", message_id=b"id-\xff""#
            ),
            // Fourteen thousand headers (void values, short names: one frame).
            try pika(
                "14,000 headers",
                headers: #"{"h%d" % i: None for i in range(14000)}"#,
                expect: .deadLettered(naming: "14000 headers, more than 256")
            ),
            // An array nested 20,000 deep (rabbitmq-c 0.11 decodes it recursively, unbounded).
            try pika(
                "an array nested 20,000 deep",
                headers: #"{"deep": nested}"#,
                setup: """
                    sys.setrecursionlimit(1_000_000)
                    nested = []
                    for _ in range(20000): nested = [nested]
                    """
            ),
        ]
        try await RabbitServerGate.shared.withShared {
            let broker = try await RabbitTestSupport.connect()
            let queue = Self.queueName("huge")
            try await ForeignInputCheck.run(
                records,
                on: broker,
                queue: queue,
                timeout: .seconds(30),
                nackForeignOnce: true
            )
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    /// Garbage in BrokerKit's own bookkeeping, written by another client (pika): a stream
    /// group's offsets queue (`<stream>.offsets.<group>`, one message) and the destination
    /// catalog. A stored offset that is not a whole number ≥ 0 is ignored (the group starts
    /// from its start position, so nothing is skipped), catalog records that are not
    /// BrokerKit's are skipped, and the stream keeps flowing.
    @Test func foreignBookkeepingIsIgnored() async throws {
        let url = try RabbitTestSupport.url()
        let writer = """
            import sys, pika
            conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
            ch = conn.channel()
            ch.confirm_delivery()
            for body in sys.argv[3:]:
                if body.startswith("hex:"): data = bytes.fromhex(body[4:])
                elif body.startswith("rep:"): data = body.split(":", 2)[2].encode() * int(body.split(":", 2)[1])
                else: data = body.encode()
                ch.basic_publish("", sys.argv[2], data, pika.BasicProperties(delivery_mode=2), mandatory=True)
            conn.close()
            """
        @Sendable func write(_ queue: String, _ bodies: [String]) async throws {
            let result = try await RabbitTestSupport.run("python3", ["-c", writer, url, queue] + bodies)
            if result.status != 0 { throw ConformanceFailure("pika writer failed: \(result.output)") }
        }
        try await RabbitServerGate.shared.withShared {
            let prefix = "tfb\(UUID().uuidString.prefix(6).lowercased())-"
            let broker = try await RabbitTestSupport.connect(["prefix": prefix])
            do {
                let stream = "events"
                try await broker.createStream(stream)
                _ = try await broker.publish((0..<5).map { Message(text: "old-\($0)") }, to: stream)
                let first = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
                for _ in 0..<5 { try await #require(try await first.next(timeout: .seconds(10))).ack() }
                await first.close()  // commits offset 4 (the next start: 5)

                // The offsets queue keeps one message: each foreign write replaces the position.
                for (round, garbage) in ["not a number", "-7", "99999999999999999999999", "hex:fffe"].enumerated() {
                    try await write(prefix + stream + ".offsets.g", [garbage])
                    let again = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
                    let delivery = try #require(
                        try await again.next(timeout: .seconds(10)),
                        "no delivery after offset '\(garbage)'"
                    )
                    #expect(delivery.message.text == "old-0", "offset '\(garbage)' was read as a position")
                    try await delivery.ack()
                    // Everything there is (5 old records, a marker per earlier round) acked:
                    // the group commits again, and its next member starts after it.
                    for _ in 1..<(5 + round) { try await #require(try await again.next(timeout: .seconds(10))).ack() }
                    await again.close()
                    try await broker.publish(Message(text: "marker-\(round)"), to: stream)
                    let next = try await broker.consumeStream(stream, group: "g", options: .init(start: .earliest))
                    let marker = try #require(try await next.next(timeout: .seconds(10)))
                    #expect(
                        marker.message.text == "marker-\(round)",
                        "after offset '\(garbage)' the group did not commit again"
                    )
                    try await marker.ack()
                    await next.close()
                }

                // The catalog: not JSON, not an object of strings, an unknown destination, a
                // negative wait, a marker without id, a megabyte of brackets.
                try await write(
                    prefix + "__brokerkit.catalog",
                    [
                        "hex:fffe00", "[1,2,3]", #"{"op":"queue","name":5}"#, #"{"op":"stream","name":"ghost"}"#,
                        #"{"op":"wait","name":"events","ms":"-5"}"#, #"{"op":"mark"}"#, #"{"op":"delete"}"#,
                        "rep:1048576:[",
                    ]
                )
                let names = try await broker.listDestinations().map(\.name)
                #expect(names.contains(stream), "\(names)")
                #expect(!names.contains("ghost"), "\(names)")
                try await broker.publish(Message(text: "new"), to: stream)
                let fresh = try await broker.consumeStream(stream, group: "h", options: .init(start: .earliest))
                var seen: [String] = []
                while seen.count < 10, let delivery = try await fresh.next(timeout: .seconds(10)) {
                    seen.append(delivery.message.text ?? "")
                    try await delivery.ack()
                }
                #expect(seen == (0..<5).map { "old-\($0)" } + (0..<4).map { "marker-\($0)" } + ["new"])
                await fresh.close()
            } catch {
                await broker.close()
                await RabbitTestSupport.cleanUp(prefix: prefix)
                throw error
            }
            await broker.close()
            await RabbitTestSupport.cleanUp(prefix: prefix)
        }
    }
}
