import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import CRdKafka
import Foundation
import KafkaBackend
import Synchronization
import Testing

/// librdkafka's in-process mock cluster (`rd_kafka_mock_cluster_new`): a real Kafka-protocol
/// peer with consumer groups and commits, plus fault injection (brokers down and up,
/// request errors). In-process, so it needs no server and always runs.
final class MockCluster: @unchecked Sendable {
    private let owner: OpaquePointer
    let cluster: OpaquePointer
    let bootstraps: String
    let brokers: Int32

    init(brokers: Int32 = 3) throws {
        var errstr = [CChar](repeating: 0, count: 256)
        let conf = rd_kafka_conf_new()
        // BROKERKIT_TEST_MOCK_DEBUG=mock (librdkafka debug contexts) prints the mock's own
        // view (group states, joins, session timeouts) to stderr, for diagnosing a test.
        if let debug = ProcessInfo.processInfo.environment["BROKERKIT_TEST_MOCK_DEBUG"] {
            _ = rd_kafka_conf_set(conf, "debug", debug, &errstr, errstr.count)
        } else {
            _ = rd_kafka_conf_set(conf, "log_level", "0", &errstr, errstr.count)
        }
        guard let owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errstr, errstr.count) else {
            throw ConformanceFailure("rd_kafka_new for the mock cluster failed")
        }
        guard let cluster = rd_kafka_mock_cluster_new(owner, brokers) else {
            rd_kafka_destroy(owner)
            throw ConformanceFailure("rd_kafka_mock_cluster_new failed")
        }
        self.owner = owner
        self.cluster = cluster
        self.brokers = brokers
        bootstraps = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
    }

    var url: String { "kafka://" + bootstraps }

    /// Takes every broker down (connections drop, requests fail) or brings them back.
    func setAll(up: Bool) {
        for id in 1...brokers {
            _ = up ? rd_kafka_mock_broker_set_up(cluster, id) : rd_kafka_mock_broker_set_down(cluster, id)
        }
    }

    /// The next `errors.count` requests of `apiKey` fail with these errors, in order.
    func pushErrors(apiKey: Int16, _ errors: [rd_kafka_resp_err_t]) {
        errors.withUnsafeBufferPointer { buffer in
            rd_kafka_mock_push_request_errors_array(cluster, apiKey, buffer.count, buffer.baseAddress)
        }
    }

    private let destroyed = Mutex(false)

    /// Destroys the cluster on a thread of its own: tearing it down joins librdkafka threads,
    /// which must not block the cooperative pool. Idempotent.
    func shutdown() async {
        guard
            destroyed.withLock({ done in
                defer { done = true }
                return !done
            })
        else { return }
        _ = try? await TestEnvironment.blocking { [self] in
            rd_kafka_mock_cluster_destroy(self.cluster)
            rd_kafka_destroy(self.owner)
        }
    }

    deinit {
        if !destroyed.withLock({ $0 }) {
            rd_kafka_mock_cluster_destroy(cluster)
            rd_kafka_destroy(owner)
        }
    }

    static let produce: Int16 = 0
    static let fetch: Int16 = 1
    static let offsetCommit: Int16 = 8

    /// One cluster shared by the conformance cases (they use unique names).
    static let shared: MockCluster = try! MockCluster()
}

@Suite("Conformance: kafka on librdkafka's mock cluster", .serialized)
struct KafkaMockConformanceTests {
    @Test("case", arguments: ConformanceSuite.cases(for: KafkaBackend.capabilities))
    func conformance(_ testCase: ConformanceCase) async throws {
        let harness = try KafkaTestSupport.harness(
            url: MockCluster.shared.url,
            name: "kafka-mock",
            extra: KafkaTestSupport.mockOptions
        )
        if testCase.name == "stream.replay.fromTimestamp" {
            // The 2.0.2 mock broker answers ListOffsets-by-timestamp with offset -1 (it only
            // knows earliest/latest); the same case passes against noida-db above.
            await withKnownIssue("librdkafka 2.0.2's mock cluster does not look up offsets by timestamp") {
                try await ConformanceSuite.run(testCase, on: harness)
            }
            return
        }
        try await ConformanceSuite.run(testCase, on: harness)
    }
}

/// Faults injected into the mock cluster while BrokerKit produces and consumes.
@Suite("Kafka faults (mock cluster)", .serialized)
struct KafkaFaultTests {
    func connect(_ cluster: MockCluster, _ options: [String: String] = [:]) async throws -> any Broker {
        try await KafkaTestSupport.connect(to: cluster, options)
    }

    /// Consumes until every text in `expected` arrived (acking each); returns what arrived.
    func drain(
        _ consumer: any MessageConsumer,
        expecting expected: Set<String>,
        timeout: Duration = .seconds(60)
    ) async throws -> [String] {
        var got: [String] = []
        let deadline = ContinuousClock.now + timeout
        while !expected.isSubset(of: Set(got)), ContinuousClock.now < deadline {
            guard let delivery = try await consumer.next(timeout: .seconds(1)) else { continue }
            got.append(delivery.message.text ?? "")
            try await delivery.ack()
        }
        return got
    }

    @Test func brokersDownDuringProduceLoseNoAcknowledgedMessage() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster)
        let queue = "fault-produce"
        try await broker.createQueue(queue)
        let acknowledged = Mutex<[String]>([])
        let publishing = Task {
            for i in 0..<60 {
                let text = "m\(i)"
                try await broker.publish(Message(text: text), to: queue)
                acknowledged.withLock { $0.append(text) }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        cluster.setAll(up: false)
        try await Task.sleep(for: .seconds(2))
        cluster.setAll(up: true)
        try await publishing.value
        let sent = acknowledged.withLock { $0 }
        #expect(sent.count == 60)
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 64))
        let got = try await drain(consumer, expecting: Set(sent))
        await consumer.close()
        await broker.close()
        await cluster.shutdown()
        #expect(Set(sent).isSubset(of: Set(got)), "lost \(Set(sent).subtracting(got).sorted())")
        #expect(got.count == Set(got).count, "the idempotent producer wrote duplicates")
    }

    @Test func brokersDownDuringConsumeConsumerContinues() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster)
        let stream = "fault-consume"
        try await broker.createStream(stream, options: DestinationOptions(partitions: 2))
        let consumer = try await broker.consumeStream(stream, group: "survivor", options: .init(start: .earliest))
        _ = try await broker.publish((0..<20).map { Message(key: "k\($0 % 4)", text: "before\($0)") }, to: stream)
        let first = try await drain(consumer, expecting: Set((0..<20).map { "before\($0)" }))
        #expect(first.count >= 20)
        cluster.setAll(up: false)
        try await Task.sleep(for: .seconds(2))
        cluster.setAll(up: true)
        let after = (0..<20).map { "after\($0)" }
        _ = try await broker.publish(after.map { Message(key: "k", text: $0) }, to: stream)
        let second = try await drain(consumer, expecting: Set(after))
        await consumer.close()
        await broker.close()
        await cluster.shutdown()
        #expect(Set(after).isSubset(of: Set(second)), "the consumer did not continue after the outage")
    }

    /// One produce request in flight (`max.in.flight` 1). With several, and `linger` 0 (the
    /// default since issue 23, which splits the 30 records over more requests), one full
    /// test run in 2026-12 saw 6 of 30 records acknowledged and never stored: the mock
    /// answers an injected REQUEST_TIMED_OUT without writing the batch, while librdkafka
    /// 2.0.2 takes that error as "possibly persisted" (librdkafka 2.3.0 changed its handling,
    /// PR 4438); a real broker returns it only after the leader wrote the batch. Not seen in
    /// 22 runs of this test alone. See docs/kafka.md, Tests.
    @Test func injectedProduceErrorsAreRetriedWithoutDuplicates() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster, ["max.in.flight": "1"])
        let queue = "fault-produce-errors"
        try await broker.createQueue(queue)
        cluster.pushErrors(
            apiKey: MockCluster.produce,
            [
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            ]
        )
        let texts = (0..<30).map { "e\($0)" }
        let receipts = try await broker.publish(texts.map { Message(text: $0) }, to: queue)
        #expect(receipts.count == 30)
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 64))
        let got = try await drain(consumer, expecting: Set(texts))
        let extra = try await consumer.next(timeout: .milliseconds(500))
        await consumer.close()
        await broker.close()
        await cluster.shutdown()
        #expect(got.sorted() == texts.sorted(), "got \(got.count) records for 30 publishes")
        #expect(extra == nil, "a duplicate after retried produce requests")
    }

    /// Issue 22, item 7: a nack whose retry copy could not be produced kept its prefetch
    /// slot and its offset for good; after `prefetch` such failures the consumer received
    /// nothing. Now each failed nack throws and the record comes again, however many times.
    @Test func aNackWhoseRetryCopyFailsGivesTheRecordBack() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster)
        let queue = "fault-retry-copy"
        try await broker.createQueue(queue)
        try await broker.publish(Message(text: "stubborn"), to: queue)
        let consumer = try await broker.consumeQueue(
            queue,
            options: .init(prefetch: 2, retryPolicy: RetryPolicy(maxAttempts: 10, backoff: .fixed(.milliseconds(100))))
        )
        var first = try await consumer.next(timeout: .seconds(30))
        // The next four produce requests (the retry copies) fail for good.
        cluster.pushErrors(
            apiKey: MockCluster.produce,
            Array(repeating: RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, count: 4)
        )
        var failures = 0
        for _ in 0..<4 {
            let delivery = try #require(first, "the consumer stalled after \(failures) failed nacks")
            #expect(delivery.message.text == "stubborn")
            do { try await delivery.nack(error: "boom") } catch { failures += 1 }
            first = try await consumer.next(timeout: .seconds(15))
        }
        #expect(failures == 4, "the failing retry copies did not fail the nacks")
        let last = try #require(first, "the consumer stalled after 4 failed nacks")
        try await last.nack(error: "once more, now the copy goes through")
        let retried = try #require(try await consumer.next(timeout: .seconds(15)))
        #expect(retried.message.text == "stubborn" && retried.attempt == 2)
        try await retried.ack()
        let extra = try await consumer.next(timeout: .milliseconds(500))
        #expect(extra == nil, "\(extra?.message.text ?? "?") came again")
        await consumer.close()
        await broker.close()
        await cluster.shutdown()
    }

    /// `task`'s value, or nil when it has none after `limit` (the task is left running): a
    /// publish that never completes fails the test instead of hanging the run.
    func value<T: Sendable>(of task: Task<T, any Error>, within limit: Duration) async throws -> T? {
        let result = Mutex<Result<T, any Error>?>(nil)
        Task {
            let outcome = await task.result
            result.withLock { $0 = outcome }
        }
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if let outcome = result.withLock({ $0 }) { return try outcome.get() }
            try await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    /// The producer's one thread both enqueues and serves delivery reports. librdkafka counts
    /// a record against `queue.buffering.max.messages` until its report is served, so with a
    /// full queue that thread must serve reports while it waits for room: a batch 30 times
    /// the queue's size, and awaited publishes beside it, all get their receipts.
    @Test func aBatchLargerThanTheProducerQueueIsDelivered() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster, ["rdkafka.queue.buffering.max.messages": "16"])
        let queue = "fault-full-queue"
        try await broker.createQueue(queue)
        let batch = (0..<480).map { "b\($0)" }
        let single = (0..<20).map { "s\($0)" }
        let batchPublish = Task { try await broker.publish(batch.map { Message(text: $0) }, to: queue) }
        let singlePublishes = Task {
            var receipts: [PublishReceipt] = []
            for text in single { receipts.append(try await broker.publish(Message(text: text), to: queue)) }
            return receipts
        }
        guard let batchReceipts = try await value(of: batchPublish, within: .seconds(60)),
            let singleReceipts = try await value(of: singlePublishes, within: .seconds(10))
        else {
            Issue.record("publishing into a full producer queue did not finish within 60 s")
            return
        }
        let receipts = batchReceipts + singleReceipts
        #expect(receipts.count == 500)
        #expect(Set(receipts.compactMap { $0.position }).count == 500, "two records reported at one position")
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 64))
        let got = try await drain(consumer, expecting: Set(batch + single))
        await consumer.close()
        await broker.close()
        await cluster.shutdown()
        #expect(Set(got) == Set(batch + single), "lost \(Set(batch + single).subtracting(got).count) records")
    }

    /// A publish call whose records find the producer's queue full for `operation.timeout`
    /// fails with a `timeout` error naming the queue's limit. Its later records that find the
    /// queue full fail at once instead of each waiting again, so none of them is sent when
    /// room comes later; the records that were queued are delivered once the broker is back.
    /// A single record (enqueued on the caller's thread when there is room) waits for room
    /// the same way.
    @Test func aQueueThatStaysFullFailsTheRestOfThePublishCallAtOnce() async throws {
        let cluster = try MockCluster()
        let publisher = try await connect(
            cluster,
            [
                "rdkafka.queue.buffering.max.messages": "2", "rdkafka.message.timeout.ms": "60000",
                "operation.timeout": "1s",
                "rdkafka.reconnect.backoff.max.ms": "300",  // back within a moment of the broker
            ]
        )
        let queue = "fault-stays-full"
        try await publisher.createQueue(queue)
        try await publisher.publish(Message(text: "warm-up"), to: queue)  // metadata known, connected
        cluster.setAll(up: false)
        let texts = (0..<16).map { "m\($0)" }
        let publish = Task { try await publisher.publish(texts.map { Message(text: $0) }, to: queue) }
        // m0 and m1 fill the queue; m2 gives up after 1 s and m3…m15 at once. Waiting once per
        // record, m5…m15 would still be waiting when the broker is back, and be sent.
        try await Task.sleep(for: .milliseconds(1_500))
        // A single record finds the queue full too: it waits for room as long, then fails alike.
        let single = Task { try await publisher.publish(Message(text: "single"), to: queue) }
        try await Task.sleep(for: .milliseconds(2_000))
        cluster.setAll(up: true)
        do {
            _ = try await single.value
            Issue.record("a single record that never got room was published")
        } catch let error as BrokerError {
            #expect(error.code == .timeout && error.message.contains("stayed full"), "\(error)")
        }
        var failure: BrokerError?
        do {
            guard try await value(of: publish, within: .seconds(60)) != nil else {
                Issue.record("the publish call did not end within 60 s of the broker's return")
                return
            }
            Issue.record("a publish call with records that never got room succeeded")
        } catch let error as BrokerError {
            failure = error
        }
        #expect(failure?.code == .timeout, "\(String(describing: failure))")
        #expect(failure?.message.contains("queue.buffering.max.messages = 2") == true, "\(String(describing: failure))")
        #expect(failure?.message.contains("stayed full") == true, "\(String(describing: failure))")

        let reader = try await connect(cluster)
        let consumer = try await reader.consumeQueue(queue)
        var got = try await drain(consumer, expecting: ["warm-up", "m0", "m1"])
        // Anything else would be a record the failed call reported as not sent.
        while let extra = try await consumer.next(timeout: .seconds(3)) {
            got.append(extra.message.text ?? "")
            try await extra.ack()
        }
        await consumer.close()
        await reader.close()
        await publisher.close()
        await cluster.shutdown()
        #expect(got.sorted() == ["m0", "m1", "warm-up"], "consumed \(got)")
    }

    /// Closing a broker while tasks publish single records (enqueued on the callers' threads)
    /// and batches: every call either gets its receipt, and its records are delivered, or
    /// fails with `closed`; nothing acknowledged is lost.
    @Test func closingWhilePublishingLosesNothingAcknowledged() async throws {
        let cluster = try MockCluster()
        let publisher = try await connect(cluster)
        let queue = "fault-close-publishing"
        try await publisher.createQueue(queue)
        // Single records then skip the producer's thread.
        try await publisher.publish(Message(text: "warm-up"), to: queue)
        let outcomes = try await withThrowingTaskGroup(of: (acknowledged: [String], closed: Int).self) { group in
            for worker in 0..<4 {
                group.addTask {
                    var acknowledged: [String] = []
                    var closed = 0
                    for i in 0..<5_000 {
                        let texts = i % 10 == 9 ? (0..<20).map { "w\(worker)-\(i)-\($0)" } : ["w\(worker)-\(i)"]
                        do {
                            _ = try await publisher.publish(texts.map { Message(text: $0) }, to: queue)
                            acknowledged += texts
                        } catch let error as BrokerError where error.code == .closed {
                            closed += 1
                            break
                        }
                    }
                    return (acknowledged, closed)
                }
            }
            group.addTask {
                try await Task.sleep(for: .milliseconds(300))
                await publisher.close()
                return ([], 0)
            }
            var all: [(acknowledged: [String], closed: Int)] = []
            for try await outcome in group { all.append(outcome) }
            return all
        }
        let acknowledged = Set(outcomes.flatMap(\.acknowledged))
        #expect(outcomes.map(\.closed).reduce(0, +) == 4, "every publishing task ends with a closed error")
        #expect(acknowledged.count > 0, "nothing was published before the close")

        let reader = try await connect(cluster)
        let consumer = try await reader.consumeQueue(queue, options: .init(prefetch: 256))
        let got = try await drain(consumer, expecting: acknowledged)
        await consumer.close()
        await reader.close()
        await cluster.shutdown()
        let lost = acknowledged.subtracting(got)
        #expect(
            lost.isEmpty,
            "\(lost.count) of \(acknowledged.count) acknowledged records lost, e.g. \(lost.prefix(5))"
        )
    }

    @Test func aFatalProducerErrorIsReportedAndTheProducerReplaced() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster)
        let queue = "fault-fatal"
        try await broker.createQueue(queue)
        try await broker.publish(Message(text: "before"), to: queue)
        // The broker claims a sequence gap: the idempotent producer cannot go on.
        cluster.pushErrors(apiKey: MockCluster.produce, [RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER])
        var refused: BrokerError?
        do { try await broker.publish(Message(text: "refused"), to: queue) } catch let error as BrokerError {
            refused = error
        }
        #expect(refused != nil, "a publish the broker refused was reported as acknowledged")
        // Later publishes go through (on a new producer once librdkafka declared the old one fatal).
        var after: [String] = []
        for i in 0..<5 {
            do {
                try await broker.publish(Message(text: "after\(i)"), to: queue)
                after.append("after\(i)")
            } catch {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        #expect(after.contains("after4"), "publishing did not recover: \(after)")
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 16))
        let got = try await drain(consumer, expecting: Set(["before"] + after))
        await consumer.close()
        await broker.close()
        await cluster.shutdown()
        #expect(Set(["before"] + after).isSubset(of: Set(got)), "acknowledged publishes missing: \(got)")
    }

    /// The mock cluster holds a group's first join for 3 s (like Kafka's initial rebalance
    /// delay): with a 1 s operation timeout the consumer gives up, and its error says what the
    /// group was doing, from librdkafka's statistics.
    @Test func aJoinThatTimesOutSaysWhatTheGroupWasDoing() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster, ["operation.timeout": "1s", "statistics.interval": "100ms"])
        let queue = "join-timeout"
        try await broker.createQueue(queue)
        do {
            let consumer = try await broker.consumeQueue(queue)
            await consumer.close()
            Issue.record("the consumer joined within 1 s; the mock cluster's first join takes 3 s")
        } catch let error as BrokerError {
            #expect(error.code == .timeout, "\(error)")
            #expect(error.message.contains("did not assign partitions within"), "\(error)")
            #expect(
                error.message.contains("join state wait-join") || error.message.contains("join state wait-sync"),
                "\(error)"
            )
        }
        await broker.close()
        await cluster.shutdown()
    }

    @Test func injectedFetchAndCommitErrorsLoseNothing() async throws {
        let cluster = try MockCluster()
        let broker = try await connect(cluster)
        let queue = "fault-fetch-commit"
        try await broker.createQueue(queue)
        let texts = (0..<40).map { "f\($0)" }
        _ = try await broker.publish(texts.map { Message(text: $0) }, to: queue)
        cluster.pushErrors(
            apiKey: MockCluster.fetch,
            [
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
            ]
        )
        cluster.pushErrors(
            apiKey: MockCluster.offsetCommit,
            [
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ]
        )
        let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 8))
        let got = try await drain(consumer, expecting: Set(texts))
        await consumer.close()
        #expect(Set(got) == Set(texts), "missing \(Set(texts).subtracting(got).sorted())")
        // The final commit on close went through despite the failed ones: nothing is left.
        var depth = -1
        for _ in 0..<50 {
            depth = try await broker.stats(for: queue).depth
            if depth == 0 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        await broker.close()
        await cluster.shutdown()
        #expect(depth == 0, "depth \(depth) after every message was acked")
    }
}
