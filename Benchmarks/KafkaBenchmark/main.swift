// swift-format-ignore-file
// (Formatted, Swift 6.3.1 reports spurious "no 'async' operations occur within 'await'" warnings on the
// nested functions of measureRound(_:); this file stays as it was until the compiler is fixed.)

// BrokerKit's Kafka backend against raw librdkafka doing the same work, in one run.
//
//   swift build -c release --product KafkaBenchmark
//   .build/release/KafkaBenchmark [kafka://127.0.0.1:19092 | mock] [messages] [rounds, default 3]
//
// On `mock`, at most 40,000 messages (refused above that): librdkafka's mock cluster keeps
// at most 5 MiB per partition and drops a partition's oldest records past that
// (`max_size` in rdkafka_mock.c, not configurable in 2.0.2). With these records that is
// ≈ 45,000 per 3-partition topic; beyond it a consume scenario would wait forever for
// records that are gone (seen with 99,000 and 100,000: idle, never finishing).
//
// Scenarios (same message count, 256-byte payload, 3-partition topics, same producer
// settings: idempotent, acks=all; BrokerKit with its defaults, linger 0 since issue 23):
//   produce-awaited   one record at a time, each delivery report awaited before the next;
//                     raw with linger.ms 0 (the baseline) and 5 (librdkafka's default)
//   produce-batched   every record enqueued at once, then all delivery reports awaited
//                     (BrokerKit: concurrent publish calls of 1,000 records); raw with
//                     linger.ms 0 and 5, the faster of the two each round is the baseline
//   consume-commit    a group member reads every record and commits after processing
//                     (raw: async commit of the consumed position every 1,000 records and
//                     at the end; BrokerKit: ack each delivery, contiguous commits). Raw
//                     runs three times: touching only the offset (the floor), copying each
//                     record into Swift values, and building a BrokerKit `Delivery` per
//                     record on the polling thread (what building the app's values costs
//                     on one thread; printed below the table against the floor)
//   e2e-latency       produce one record, wait until a group member has it (p50 / p99);
//                     neither side waits for the delivery report before the consumer
// Batched produce and consume also get a CPU row: the process's CPU time (every thread,
// librdkafka's too) per message over the scenario, raw ÷ BrokerKit. Unlike the speed rows
// it does not depend on what else the host runs meanwhile (noida-db's rewrites).
// Before each timed scenario, raw and BrokerKit alike, the benchmark waits until the host's
// CPUs are quiet (BenchmarkSupport's waitForQuietHost): noida-db, when it runs on the same
// host, rewrites its whole state to disk for seconds after every change.
import BenchmarkSupport
@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation
import KafkaBackend
import Synchronization

let arguments = CommandLine.arguments
let target = arguments.count > 1 ? arguments[1] : (ProcessInfo.processInfo.environment["BROKERKIT_TEST_KAFKA_URL"] ?? "kafka://127.0.0.1:9092")

/// `mock`: librdkafka's in-process mock cluster (one broker) instead of a server. It
/// answers an empty fetch after the request's `fetch.wait.max.ms` as Kafka does; noida-db
/// answers at once, so a consumer that has fetched everything and is still processing
/// busy-polls it (see docs/benchmarks.md).
func startMockCluster() -> (owner: OpaquePointer, cluster: OpaquePointer) {
    var errstr = [CChar](repeating: 0, count: 256)
    let conf = rd_kafka_conf_new()
    _ = rd_kafka_conf_set(conf, "log_level", "0", &errstr, errstr.count)
    guard let owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errstr, errstr.count),
          let cluster = rd_kafka_mock_cluster_new(owner, 1) else { fatalError("cannot start the mock cluster") }
    return (owner, cluster)
}
let mock = target == "mock" ? startMockCluster() : nil
let url = mock.map { "kafka://" + String(cString: rd_kafka_mock_cluster_bootstraps($0.cluster)) } ?? target
let count = positiveArgument(2, "messages", fallback: 20_000)
let roundCount = positiveArgument(3, "rounds", fallback: 3)
let mockLimit = 40_000
if mock != nil && count > mockLimit {
    usageError(
        "\(count) messages is more than the mock cluster keeps (at most \(mockLimit) here): it holds at most 5 MiB per "
            + "partition and drops the oldest records past that, so a consume scenario would wait forever. Use \(mockLimit) "
            + "or fewer, or a real broker URL.")
}
let latencySamples = 500
let payload = Data(repeating: 0x61, count: 256)
let run = String(UUID().uuidString.prefix(6)).lowercased()

KafkaBackend.register()
let parsed = try BrokerURL(url)
let bootstrap = parsed.hosts.map { "\($0.name):\($0.port ?? 9092)" }.joined(separator: ",")
// The mock cluster creates topics when asked for their metadata: BrokerKit must know that.
let mockOptions = target == "mock" ? ["topic.creation": "auto"] : [:]
let broker = try await Brokers.connect(url: url, options: ["prefix": "bench.", "statistics.interval": "0"].merging(mockOptions) { $1 })

// MARK: - Raw librdkafka

final class Box<T>: @unchecked Sendable {
    // Safe: every access holds `lock`.
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func update<R>(_ body: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&value) }
}

let delivered = Box(0)

func rawHandle(_ type: rd_kafka_type_t, _ properties: [String: String], producer: Bool = false) -> OpaquePointer {
    var errstr = [CChar](repeating: 0, count: 512)
    let conf = rd_kafka_conf_new()
    for (key, value) in properties where rd_kafka_conf_set(conf, key, value, &errstr, errstr.count) != RD_KAFKA_CONF_OK {
        fatalError("raw conf \(key)")
    }
    if producer {
        rd_kafka_conf_set_dr_msg_cb(conf) { _, message, _ in
            if message?.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR { fatalError("raw delivery failed") }
            delivered.update { $0 += 1 }
        }
    }
    guard let rk = rd_kafka_new(type, conf, &errstr, errstr.count) else { fatalError("rd_kafka_new") }
    return rk
}

let producerProperties = [
    "bootstrap.servers": bootstrap, "enable.idempotence": "true", "acks": "all", "linger.ms": "5",
    "max.in.flight.requests.per.connection": "5",
]

/// One record with the same content BrokerKit writes: key, payload and an id header (a
/// fresh id from the same generator BrokerKit's messages use).
func rawProduce(_ rk: OpaquePointer, _ topic: String, _ i: Int) {
    let key = Array("k\(i % 64)".utf8)
    let id = Array(Message.newID().utf8)
    while true {
        let headers = rd_kafka_headers_new(1)
        _ = rd_kafka_header_add(headers, "x-brokerkit-id", -1, id, id.count)
        let err = payload.withUnsafeBytes { value in
            bk_produce(rk, topic, -1, value.baseAddress, value.count, key, key.count, headers, 0, nil)
        }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { rd_kafka_headers_destroy(headers) }
        if err == RD_KAFKA_RESP_ERR_NO_ERROR { return }
        if err == RD_KAFKA_RESP_ERR__QUEUE_FULL { rd_kafka_poll(rk, 1); continue }
        fatalError("raw produce: \(String(cString: rd_kafka_err2str(err)))")
    }
}

func stream(_ label: String) async throws -> (name: String, topic: String) {
    let name = "\(label)-\(run)"
    try await broker.createStream(name, options: DestinationOptions(partitions: 3))
    return (name, "bench." + name)
}

/// One record before timing, so neither side's figure includes the producer's first
/// metadata lookup for the topic.
func warmRaw(_ rk: OpaquePointer, _ topic: String) {
    rawProduce(rk, topic, 0)
    _ = rd_kafka_flush(rk, 10_000)
    delivered.update { $0 = 0 }
}

/// Times `body` on a fresh raw producer with `linger.ms` = `lingerMs` (warmed up on `topic`),
/// on a thread of its own:
/// wall time, and the process's CPU time (every thread) over the same span.
func timedRawProducer(
    _ topic: String, lingerMs: Int, _ body: @escaping @Sendable (OpaquePointer) -> Void
) async -> (wall: Duration, cpu: Duration) {
    await onThread {
        let rk = rawHandle(RD_KAFKA_PRODUCER, producerProperties.merging(["linger.ms": "\(lingerMs)"]) { $1 }, producer: true)
        defer { rd_kafka_destroy(rk) }
        warmRaw(rk, topic)
        let cpu = processCPUTime()
        let start = ContinuousClock.now
        body(rk)
        return (ContinuousClock.now - start, processCPUTime() - cpu)
    }
}

print("BrokerKit Kafka backend vs raw librdkafka \(KafkaBackend.libraryVersion) — \(count) messages of \(payload.count) B, \(url)")
print("")

/// Calls `body` with each header of `message`: its name, and its value's bytes.
func forEachHeader(of message: UnsafeMutablePointer<rd_kafka_message_t>, _ body: (String, UnsafeRawBufferPointer) -> Void) {
    var hdrs: OpaquePointer?
    guard rd_kafka_message_headers(message, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs else { return }
    var index = 0
    var name: UnsafePointer<CChar>?
    var value: UnsafeRawPointer?
    var size = 0
    while rd_kafka_header_get_all(hdrs, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
        body(String(cString: name!), value.map { UnsafeRawBufferPointer(start: $0, count: size) } ?? UnsafeRawBufferPointer(start: nil, count: 0))
        index += 1
    }
}

/// What a Swift app reading librdkafka directly does with each record: key and payload into
/// `Data`, topic and headers into `String`s. Returns a byte count so the work is not dropped.
nonisolated(unsafe) var copied = 0
func copyOut(_ message: UnsafeMutablePointer<rd_kafka_message_t>) -> Int {
    let m = message.pointee
    let topic = String(cString: rd_kafka_topic_name(m.rkt))
    let payload = m.payload.map { Data(bytes: $0, count: m.len) } ?? Data()
    let key = m.key.map { Data(bytes: $0, count: m.key_len) }
    var headers: [(String, String)] = []
    forEachHeader(of: message) { name, bytes in headers.append((name, String(decoding: bytes, as: UTF8.self))) }
    return topic.utf8.count + payload.count + (key?.count ?? 0) + headers.count
}

/// What a consumer that hands the app BrokerKit's own values must at least do with each
/// record, here on the polling thread itself (no hand-off to another thread, no settle
/// bookkeeping, no commit tracking beyond the raw consumer's own): the
/// app's message (id from its header, every other header in a dictionary, the key as a
/// string) inside a `Delivery`. A window of 1,000 is kept alive, as BrokerKit's prefetch is,
/// then dropped on this same thread.
struct BenchmarkSettler: DeliverySettler {
    func ack() async throws {}
    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {}
    func deadLetter(_ envelope: DeadLetterEnvelope) async throws {}
    func release() async throws {}
}
nonisolated(unsafe) var window: [Delivery] = []
func deliveryOut(_ message: UnsafeMutablePointer<rd_kafka_message_t>) -> Int {
    let m = message.pointee
    let topic = String(cString: rd_kafka_topic_name(m.rkt))
    let payload = m.payload.map { Data(bytes: $0, count: m.len) } ?? Data()
    let key = m.key.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: m.key_len), as: UTF8.self) }
    var id = ""
    var headers: [String: String] = [:]
    forEachHeader(of: message) { name, bytes in
        if name == "x-brokerkit-id" { id = String(decoding: bytes, as: UTF8.self) } else { headers[name] = String(decoding: bytes, as: UTF8.self) }
    }
    var type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
    let ms = rd_kafka_message_timestamp(message, &type)
    let delivery = Delivery(
        message: Message(id: id, key: key, payload: payload, headers: headers, timestamp: Date(timeIntervalSince1970: TimeInterval(ms) / 1000)),
        destination: topic, attempt: 1, firstFailureAt: nil, position: Position(partition: Int(m.partition), offset: m.offset),
        retryPolicy: .default, backend: "kafka", settler: BenchmarkSettler())
    window.append(delivery)
    if window.count >= 1000 { window.removeAll(keepingCapacity: true) }
    return topic.utf8.count + delivery.message.payload.count
}

/// Per round: raw building deliveries ÷ the raw floor (printed below the table).
var deliveriesToFloor: [Double] = []
/// Per round, BrokerKit's consume through 16 processor handlers ÷ its one-handler loop.
var processorToLoop: [Double] = []
/// Handler calls counted across a processor's tasks, with the first and last call's time.
final class Handled: Sendable {
    private let state = Mutex<(count: Int, first: ContinuousClock.Instant?, last: ContinuousClock.Instant?)>((0, nil, nil))
    func record() {
        let now = ContinuousClock.now
        state.withLock { s in
            s.count += 1
            if s.first == nil { s.first = now }
            s.last = now
        }
    }
    var count: Int { state.withLock { $0.count } }
    var span: Duration { state.withLock { s in (s.last ?? .now) - (s.first ?? .now) } }
}
/// Per round, the `linger.ms` (0 or 5) at which raw batched produce was faster.
var rawBestBatchedLinger: [Int] = []

/// Every scenario once, raw side first. Topic and group names carry the round.
@MainActor func measureRound(_ round: Int) async throws -> [Row] {
    var rows: [Row] = []
    func row(_ name: String, kit: Double, raw: Double) { rows.append(Row(name: name, kit: kit, raw: raw, ratio: kit / raw)) }
    func cpuRow(_ name: String, kit: Duration, raw: Duration) {
        let kit = cpuPerMessage(count, kit), raw = cpuPerMessage(count, raw)
        rows.append(Row(name: name, kit: kit, raw: raw, ratio: raw / kit))
    }
    // produce-awaited. Raw runs with linger.ms 0 (the target: nothing waits for a batch to
    // fill) and with 5 (librdkafka's default, what BrokerKit used before issue 23).
    let awaitedCount = min(count, 2_000)
    func rawAwaited(lingerMs: Int) async throws -> Duration {
        let topic = try await stream("raw-awaited\(lingerMs)-r\(round)").topic
        await waitForQuietHost()
        return await timedRawProducer(topic, lingerMs: lingerMs) { rk in
            for i in 0..<awaitedCount {
                rawProduce(rk, topic, i)
                while delivered.update({ $0 }) <= i { rd_kafka_poll(rk, 1) }
            }
        }.wall
    }
    let rawAwaited0 = try await rawAwaited(lingerMs: 0)
    let rawAwaited5 = try await rawAwaited(lingerMs: 5)
    let kitAwaitedStream = try await stream("kit-awaited-r\(round)").name
    try await broker.publish(Message(payload: payload), to: kitAwaitedStream)  // warm-up, as warmRaw
    await waitForQuietHost()
    // BrokerKit runs off the main actor, as a server's request handlers do.
    let kitAwaited = try await Task.detached {
        try await measure {
            for i in 0..<awaitedCount {
                try await broker.publish(Message(key: "k\(i % 64)", payload: payload), to: kitAwaitedStream)
            }
        }
    }.value
    row("produce awaited (msg/s), raw linger 0", kit: rate(awaitedCount, kitAwaited), raw: rate(awaitedCount, rawAwaited0))
    row("produce awaited (msg/s), raw linger 5", kit: rate(awaitedCount, kitAwaited), raw: rate(awaitedCount, rawAwaited5))

    // produce-batched. Raw runs with linger.ms 0 and 5; the baseline is the faster of the two
    // in this round (raw at its best settings).
    func rawBatched(lingerMs: Int) async throws -> (wall: Duration, cpu: Duration) {
        let topic = try await stream("raw-batched\(lingerMs)-r\(round)").topic
        await waitForQuietHost()
        let timed = await timedRawProducer(topic, lingerMs: lingerMs) { rk in
            for i in 0..<count {
                rawProduce(rk, topic, i)
                if i % 1000 == 0 { rd_kafka_poll(rk, 0) }
            }
            _ = rd_kafka_flush(rk, 60_000)
        }
        if delivered.update({ $0 }) != count { fatalError("raw batched: \(delivered.update { $0 }) reports") }
        return timed
    }
    let rawBatched0 = try await rawBatched(lingerMs: 0)
    let rawBatched5 = try await rawBatched(lingerMs: 5)
    let rawBatched = rawBatched0.wall < rawBatched5.wall ? rawBatched0 : rawBatched5
    let rawBatchTopic = "bench.raw-batched5-r\(round)-\(run)"  // what the raw consumers read
    rawBestBatchedLinger.append(rawBatched0.wall < rawBatched5.wall ? 0 : 5)
    let kitBatchStream = try await stream("kit-batched-r\(round)").name
    try await broker.publish(Message(payload: payload), to: kitBatchStream)  // warm-up, as warmRaw
    await waitForQuietHost()
    let kitBatchedCPUStart = processCPUTime()
    let kitBatched = try await Task.detached { try await measure {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for start in stride(from: 0, to: count, by: 1000) {
                group.addTask {
                    let messages = (start..<min(count, start + 1000)).map { Message(key: "k\($0 % 64)", payload: payload) }
                    _ = try await broker.publish(messages, to: kitBatchStream)
                }
            }
            try await group.waitForAll()
        }
    } }.value
    let kitBatchedCPU = processCPUTime() - kitBatchedCPUStart
    row("produce batched (msg/s), raw at its best", kit: rate(count, kitBatched), raw: rate(count, rawBatched.wall))
    cpuRow("produce batched CPU (µs/msg)", kit: kitBatchedCPU, raw: rawBatched.cpu)

    // consume-commit, both reading the batched topics (count records each). The raw
    // consumer runs three times: touching nothing but the offset (librdkafka's floor);
    // copying each record's key, payload and headers into Swift values first, as an app
    // using librdkafka directly from Swift does (swift-kafka-client's consumer copies them);
    // and building the same `Delivery` BrokerKit hands out, on the polling thread.
    enum RawWork { case offsetOnly, copyingOut, buildingDeliveries }
    @Sendable func rawConsume(_ work: RawWork) -> Duration {
        let rk = rawHandle(RD_KAFKA_CONSUMER, [
            "bootstrap.servers": bootstrap, "group.id": "bench.raw-\(work)-\(run)-\(round)", "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "earliest", "partition.assignment.strategy": "roundrobin", "fetch.wait.max.ms": "100",
        ])
        defer { rd_kafka_destroy(rk) }
        rd_kafka_poll_set_consumer(rk)
        let topics = rd_kafka_topic_partition_list_new(1)
        rd_kafka_topic_partition_list_add(topics, rawBatchTopic, -1)
        _ = rd_kafka_subscribe(rk, topics)
        rd_kafka_topic_partition_list_destroy(topics)
        var got = 0
        var start: ContinuousClock.Instant?
        while got < count {
            guard let message = rd_kafka_consumer_poll(rk, 100) else { continue }
            if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                if start == nil { start = .now }
                got += 1
                switch work {
                case .offsetOnly: break
                case .copyingOut: copied &+= copyOut(message)
                case .buildingDeliveries: copied &+= deliveryOut(message)
                }
                let list = rd_kafka_topic_partition_list_new(1)!
                let element = rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(message.pointee.rkt), message.pointee.partition)
                element?.pointee.offset = message.pointee.offset + 1
                _ = rd_kafka_offsets_store(rk, list)
                rd_kafka_topic_partition_list_destroy(list)
                if got % 1000 == 0 { _ = rd_kafka_commit(rk, nil, 1) }
            }
            rd_kafka_message_destroy(message)
        }
        _ = rd_kafka_commit(rk, nil, 0)
        let took = ContinuousClock.now - start!
        _ = rd_kafka_consumer_close(rk)
        return took
    }
    // CPU is counted over each whole consume call (joining, consuming, committing, closing),
    // the same span on every side.
    await waitForQuietHost()
    var cpuStart = processCPUTime()
    let rawConsumeFloor = await onThread { rawConsume(.offsetOnly) }
    let rawConsumeFloorCPU = processCPUTime() - cpuStart
    await waitForQuietHost()
    let rawConsumeCopying = await onThread { rawConsume(.copyingOut) }
    await waitForQuietHost()
    cpuStart = processCPUTime()
    let rawConsumeDeliveries = await onThread { rawConsume(.buildingDeliveries) }
    let rawConsumeDeliveriesCPU = processCPUTime() - cpuStart
    await waitForQuietHost()
    cpuStart = processCPUTime()
    let kitConsume = try await Task.detached {
        let consumer = try await broker.consumeStream(kitBatchStream, group: "kit-\(run)-\(round)", options: .init(start: .earliest, prefetch: 1000))
        var kitStart: ContinuousClock.Instant?
        var kitGot = 0
        while kitGot < count {
            guard let delivery = try await consumer.next() else { fatalError("consumer ended") }
            if kitStart == nil { kitStart = .now }
            kitGot += 1
            try await delivery.ack()
        }
        let took = ContinuousClock.now - kitStart!
        await consumer.close()
        return took
    }.value
    let kitConsumeCPU = processCPUTime() - cpuStart
    row("consume + commit (msg/s)", kit: rate(count, kitConsume), raw: rate(count, rawConsumeFloor))
    row("  vs raw copying records out", kit: rate(count, kitConsume), raw: rate(count, rawConsumeCopying))
    row("  vs raw building deliveries (one thread)", kit: rate(count, kitConsume), raw: rate(count, rawConsumeDeliveries))
    cpuRow("consume + commit CPU (µs/msg)", kit: kitConsumeCPU, raw: rawConsumeFloorCPU)
    cpuRow("  vs raw building deliveries, CPU", kit: kitConsumeCPU, raw: rawConsumeDeliveriesCPU)
    deliveriesToFloor.append(rawConsumeFloor / rawConsumeDeliveries)

    // The same topic again, in a new group, through a DeliveryProcessor with 16 handlers
    // (unordered), timed from the first handled record to the last: against the one-handler
    // loop above (issue 23).
    await waitForQuietHost()
    let processorConsume = try await Task.detached { () -> Duration in
        let consumer = try await broker.consumeStream(
            kitBatchStream, group: "kit-proc-\(run)-\(round)", options: .init(start: .earliest, prefetch: 1000))
        let handled = Handled()
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 16, orderedByKey: false)) { _ in
            handled.record()
        }
        let running = Task { try await processor.run() }
        while handled.count < count { try await Task.sleep(for: .milliseconds(1)) }
        let took = handled.span
        processor.stop()
        try await running.value
        return took
    }.value
    processorToLoop.append(rate(count, processorConsume) / rate(count, kitConsume))

    // e2e latency (not on the mock cluster: it answers a waiting fetch only when
    // fetch.wait.max.ms is over, so every sample on both sides is ≈ 100 ms)
    if mock == nil {
        let rawLatencyTopic = try await stream("raw-latency-r\(round)").topic
        await waitForQuietHost()
        let rawLatencies: [Duration] = await onThread {
            let producer = rawHandle(RD_KAFKA_PRODUCER, producerProperties.merging(["linger.ms": "0"]) { $1 }, producer: true)
            let consumer = rawHandle(RD_KAFKA_CONSUMER, [
                "bootstrap.servers": bootstrap, "group.id": "bench.raw-lat-\(run)-\(round)", "enable.auto.commit": "false",
                "enable.auto.offset.store": "false",
                "auto.offset.reset": "latest", "fetch.wait.max.ms": "100", "partition.assignment.strategy": "roundrobin",
            ])
            defer {
                _ = rd_kafka_consumer_close(consumer)
                rd_kafka_destroy(consumer)
                rd_kafka_destroy(producer)
            }
            rd_kafka_poll_set_consumer(consumer)
            let topics = rd_kafka_topic_partition_list_new(1)
            rd_kafka_topic_partition_list_add(topics, rawLatencyTopic, -1)
            _ = rd_kafka_subscribe(consumer, topics)
            rd_kafka_topic_partition_list_destroy(topics)
            // Wait for the assignment before measuring.
            while true {
                var assigned: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
                _ = rd_kafka_assignment(consumer, &assigned)
                let n = assigned?.pointee.cnt ?? 0
                if let assigned { rd_kafka_topic_partition_list_destroy(assigned) }
                if n > 0 { break }
                if let m = rd_kafka_consumer_poll(consumer, 50) { rd_kafka_message_destroy(m) }
            }
            Thread.sleep(forTimeInterval: 1)
            var samples: [Duration] = []
            // Commits as BrokerKit's consumer does: each handled offset stored, an async
            // commit of what is stored every 100 ms (outside the timed part of a sample).
            var lastCommit = ContinuousClock.now
            for i in 0..<latencySamples {
                let start = ContinuousClock.now
                rawProduce(producer, rawLatencyTopic, i)
                rd_kafka_poll(producer, 0)
                while true {
                    rd_kafka_poll(producer, 0)
                    guard let message = rd_kafka_consumer_poll(consumer, 1) else { continue }
                    let ok = message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR
                    if ok { _ = rd_kafka_offset_store(message.pointee.rkt, message.pointee.partition, message.pointee.offset) }
                    rd_kafka_message_destroy(message)
                    if ok { break }
                }
                samples.append(ContinuousClock.now - start)
                if ContinuousClock.now - lastCommit >= .milliseconds(100) {
                    _ = rd_kafka_commit(consumer, nil, 1)
                    lastCommit = ContinuousClock.now
                }
            }
            return samples
        }
        let latencyBroker = try await Brokers.connect(url: url, options: ["prefix": "bench.", "statistics.interval": "0"].merging(mockOptions) { $1 })
        let kitLatencyStream = try await stream("kit-latency-r\(round)").name
        await waitForQuietHost()
        let latencyConsumer = try await latencyBroker.consumeStream(kitLatencyStream, group: "kit-lat-\(run)-\(round)", options: .init(start: .latest, prefetch: 1))
        try await Task.sleep(for: .seconds(1))
        // The raw side never waits for the producer's delivery report, so neither do the
        // samples: BrokerKit's publish calls are awaited after the last sample.
        let kitLatencies = try await sampleLatencies(latencySamples, consumer: latencyConsumer, publishAcknowledgedFirst: false) { i in
            try await latencyBroker.publish(Message(key: "k\(i % 64)", payload: payload), to: kitLatencyStream)
        }
        await latencyConsumer.close()
        await latencyBroker.close()
        rows += latencyRows(kit: kitLatencies, raw: rawLatencies)
    }

    // (The 2.0.2 mock cluster does not answer DeleteTopics; its topics go with the process.)
    for label in ["raw-awaited0", "raw-awaited5", "kit-awaited", "raw-batched0", "raw-batched5", "kit-batched", "raw-latency", "kit-latency"]
    where mock == nil {
        try? await broker.deleteDestination("\(label)-r\(round)-\(run)")
    }
    return rows
}

// Rounds: this VM's figures swing between runs, so every scenario runs `roundCount` times,
// raw and BrokerKit back to back; the table shows medians and each round's ratio.
var rounds: [[Row]] = []
for round in 1...roundCount {
    print("round \(round) of \(roundCount)…")
    rounds.append(try await measureRound(round))
}
await broker.close()

printRounds(rounds, rawName: "raw librdkafka")
print("raw librdkafka building deliveries on one thread consumed at \(String(format: "%.2f", median(deliveriesToFloor))) of the raw floor's speed (rounds \(deliveriesToFloor.map { String(format: "%.2f", $0) }.joined(separator: " / "))): what building the values an app receives costs on one thread, before any hand-off between threads.")
print("BrokerKit consume + commit through a DeliveryProcessor with 16 handlers (unordered) ran at \(String(format: "%.2f", median(processorToLoop))) of its one-handler loop (rounds \(processorToLoop.map { String(format: "%.2f", $0) }.joined(separator: " / "))).")
print("raw batched produce was faster with linger.ms \(rawBestBatchedLinger.map(String.init).joined(separator: " / ")) (rounds); that is its baseline.")
print(quietWaitSummary())
if let mock {
    rd_kafka_mock_cluster_destroy(mock.cluster)
    rd_kafka_destroy(mock.owner)
}
