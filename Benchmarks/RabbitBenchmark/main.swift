// RabbitMQ benchmark: BrokerKit's RabbitMQ backend against raw rabbitmq-c doing the same
// work, in the same run, against the same broker.
//
//   swift build -c release --product RabbitBenchmark
//   BROKERKIT_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5682/ .build/release/RabbitBenchmark [scale] [rounds, default 3]
//
// Measured, for both: publish with confirms awaited one at a time (on a quorum queue, and on
// a classic queue: what the quorum default costs); pipelined batch publish
// (batches of 500, all confirmed); consume-and-ack (prefetch 256); end-to-end latency of a
// message published (confirmed) one at a time and received by a running consumer.
// Messages are 256-byte persistent messages on durable quorum queues; raw rabbitmq-c sends the
// AMQP message BrokerKit sends (message id from the same generator, timestamp property,
// `x-brokerkit-timestamp-ms` header), so the broker's work is the same on both sides.

import BenchmarkSupport
@_spi(BrokerBackend) import BrokerAPI
import CRabbitMQ
import Foundation
import RabbitBackend
import Synchronization

let environment = ProcessInfo.processInfo.environment
let url = environment["BROKERKIT_TEST_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5682/"
let scale = positiveArgument(1, "scale", fallback: 1)
let roundCount = positiveArgument(2, "rounds", fallback: 3)
let singles = 2_000 * scale
let batched = 20_000 * scale
let batchSize = 500
let latencySamples = 1_000 * scale
let payload = Data((0..<256).map { UInt8(truncatingIfNeeded: $0) })

struct Figures {
    var publishOne = 0.0
    /// The same awaited publishes to a classic queue (what the quorum default costs).
    var publishOneClassic = 0.0
    var publishBatch = 0.0
    var consume = 0.0
    /// BrokerKit only: consume + ack through a `DeliveryProcessor` with 16 handlers.
    var consumeProcessor = 0.0
    var p50 = 0.0
    var p99 = 0.0
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return 0 }
    return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
}

func nowNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// Payload of a latency sample: send time (ns) in bytes 0..<8, a marker in 8..<16, so that a
/// message left over from an earlier scenario (a redelivered unacked one) is never read as
/// a timestamp.
let latencyMarker: UInt64 = 0x4252_4B5F_4C41_5459  // "BRK_LATY"

func stamped() -> Data {
    var data = payload
    withUnsafeBytes(of: nowNanos().littleEndian) { data.replaceSubrange(0..<8, with: $0) }
    withUnsafeBytes(of: latencyMarker.littleEndian) { data.replaceSubrange(8..<16, with: $0) }
    return data
}

/// Microseconds since `body` was stamped, or nil for a payload that is no latency sample.
func latency(of body: UnsafeRawBufferPointer) -> Double? {
    guard body.count >= 16,
        UInt64(littleEndian: body.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) == latencyMarker
    else { return nil }
    let sent = UInt64(littleEndian: body.loadUnaligned(as: UInt64.self))
    let now = nowNanos()
    return now >= sent ? Double(now - sent) / 1000 : nil
}

/// Handler calls counted across the processor's tasks.
final class Handled: Sendable { let count = Atomic<Int>(0) }

func benchmarkBrokerKit() async throws -> Figures {
    RabbitBackend.register()
    let broker = try await Brokers.connect(url: url)
    defer { Task { await broker.close() } }
    let queue = "bench-bk-\(UUID().uuidString.prefix(6))"
    try await broker.createQueue(queue)
    var figures = Figures()

    var start = ContinuousClock.now
    for _ in 0..<singles { try await broker.publish(Message(payload: payload), to: queue) }
    figures.publishOne = rate(singles, ContinuousClock.now - start)

    let classicBroker = try await Brokers.connect(url: url, options: ["queue.type": "classic"])
    let classicQueue = "bench-bk-classic-\(UUID().uuidString.prefix(6))"
    try await classicBroker.createQueue(classicQueue)
    start = ContinuousClock.now
    for _ in 0..<singles { try await classicBroker.publish(Message(payload: payload), to: classicQueue) }
    figures.publishOneClassic = rate(singles, ContinuousClock.now - start)
    try await classicBroker.deleteDestination(classicQueue)
    await classicBroker.close()

    start = ContinuousClock.now
    for _ in 0..<(batched / batchSize) {
        try await broker.publish((0..<batchSize).map { _ in Message(payload: payload) }, to: queue)
    }
    figures.publishBatch = rate(batched, ContinuousClock.now - start)

    let consumer = try await broker.consumeQueue(queue, options: .init(prefetch: 256))
    start = ContinuousClock.now
    for _ in 0..<(singles + batched) {
        guard let delivery = try await consumer.next() else { break }
        try await delivery.ack()
    }
    figures.consume = rate(singles + batched, ContinuousClock.now - start)

    let reader = Task { () -> [Double] in
        var latencies: [Double] = []
        while latencies.count < latencySamples, let delivery = try await consumer.next() {
            if let sample = delivery.message.payload.withUnsafeBytes({ latency(of: $0) }) { latencies.append(sample) }
            try await delivery.ack()
        }
        return latencies
    }
    for _ in 0..<latencySamples { try await broker.publish(Message(payload: stamped()), to: queue) }
    let latencies = try await reader.value
    figures.p50 = percentile(latencies, 0.5)
    figures.p99 = percentile(latencies, 0.99)
    await consumer.close()
    try await broker.deleteDestination(queue)

    // The same consume + ack through a DeliveryProcessor with 16 handlers (unordered), timed
    // until the last message is handled, against the one-handler loop above.
    let processorQueue = "bench-bk-proc-\(UUID().uuidString.prefix(6))"
    try await broker.createQueue(processorQueue)
    for _ in 0..<(batched / batchSize) {
        try await broker.publish((0..<batchSize).map { _ in Message(payload: payload) }, to: processorQueue)
    }
    let handled = Handled()
    let processorConsumer = try await broker.consumeQueue(processorQueue, options: .init(prefetch: 256))
    let processor = DeliveryProcessor(consumer: processorConsumer, options: .init(concurrency: 16, orderedByKey: false))
    { _ in
        handled.count.add(1, ordering: .relaxed)
    }
    let (elapsed, running) = try await Task.detached { () -> (Duration, Task<Void, any Error>) in
        let started = ContinuousClock.now
        let running = Task { try await processor.run() }
        while handled.count.load(ordering: .relaxed) < batched { try await Task.sleep(for: .milliseconds(1)) }
        return (ContinuousClock.now - started, running)
    }.value
    figures.consumeProcessor = rate(batched, elapsed)
    processor.stop()
    try await running.value
    try await broker.deleteDestination(processorQueue)
    return figures
}

// MARK: - Raw rabbitmq-c

struct RawError: Error, CustomStringConvertible { let description: String }

/// One blocking rabbitmq-c connection, used from a single thread.
final class RawConnection {
    let state: amqp_connection_state_t

    init(url: String) throws {
        let parsed = try BrokerURL(url)
        guard let host = parsed.hosts.first, let state = amqp_new_connection() else {
            throw RawError(description: "bad url")
        }
        self.state = state
        let socket = amqp_tcp_socket_new(state)
        guard amqp_socket_open(socket, host.name, Int32(host.port ?? 5672)) == 0 else {
            throw RawError(description: "cannot connect")
        }
        let reply = bk_amqp_login_plain(
            state,
            parsed.path.isEmpty ? "/" : parsed.path,
            0,
            131_072,
            0,
            parsed.user ?? "guest",
            parsed.password ?? "guest"
        )
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else { throw RawError(description: "login failed") }
        _ = amqp_channel_open(state, 1)
        try check("channel.open")
    }

    deinit {
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        amqp_destroy_connection(state)
    }

    func check(_ what: String) throws {
        guard amqp_get_rpc_reply(state).reply_type == AMQP_RESPONSE_NORMAL else {
            throw RawError(description: "\(what) failed")
        }
    }

    func declare(_ queue: String, type: String = "quorum") throws {
        var entry = amqp_table_entry_t()
        entry.key = amqp_cstring_bytes("x-queue-type")
        entry.value.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
        entry.value.value.bytes = amqp_cstring_bytes(type)
        try withUnsafeMutablePointer(to: &entry) { pointer in
            _ = amqp_queue_declare(
                state,
                1,
                amqp_cstring_bytes(queue),
                0,
                1,
                0,
                0,
                amqp_table_t(num_entries: 1, entries: pointer)
            )
            try check("queue.declare")
        }
    }

    func delete(_ queue: String) { _ = amqp_queue_delete(state, 1, amqp_cstring_bytes(queue), 0, 0) }

    func confirmSelect() throws {
        _ = amqp_confirm_select(state, 1)
        try check("confirm.select")
    }

    /// Publishes the AMQP message BrokerKit sends for a message with no key and no headers
    /// (see RabbitMessageMapping): persistent, `mandatory`, a message id, the `timestamp`
    /// property and the `x-brokerkit-timestamp-ms` header, so the broker does the same work.
    func publish(_ queue: String, _ body: Data) throws {
        var properties = amqp_basic_properties_t()
        properties._flags = amqp_flags_t(
            AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG
                | AMQP_BASIC_HEADERS_FLAG
        )
        properties.delivery_mode = 2
        let millis = Int64((Date().timeIntervalSince1970 * 1000).rounded())
        properties.timestamp = UInt64(millis / 1000)
        var header = amqp_table_entry_t()
        header.key = amqp_cstring_bytes("x-brokerkit-timestamp-ms")
        header.value.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
        header.value.value.i64 = millis
        let id = Message.newID()  // the same id generator BrokerKit's messages use
        let status = id.withCString { idPointer in
            body.withUnsafeBytes { buffer in
                withUnsafeMutablePointer(to: &header) { entry in
                    properties.headers = amqp_table_t(num_entries: 1, entries: entry)
                    properties.message_id = amqp_bytes_t(
                        len: strlen(idPointer),
                        bytes: UnsafeMutableRawPointer(mutating: idPointer)
                    )
                    return amqp_basic_publish(
                        state,
                        1,
                        amqp_empty_bytes,
                        amqp_cstring_bytes(queue),
                        1,
                        0,
                        &properties,
                        amqp_bytes_t(len: buffer.count, bytes: UnsafeMutableRawPointer(mutating: buffer.baseAddress))
                    )
                }
            }
        }
        guard status == 0 else { throw RawError(description: "publish failed") }
    }

    /// Waits until the broker confirmed every tag up to `tag`.
    func awaitConfirms(upTo tag: UInt64) throws {
        var confirmed: UInt64 = 0
        while confirmed < tag {
            var frame = amqp_frame_t()
            guard amqp_simple_wait_frame(state, &frame) == 0 else { throw RawError(description: "wait failed") }
            if frame.frame_type == UInt8(AMQP_FRAME_METHOD), frame.payload.method.id == AMQP_BASIC_ACK_METHOD {
                let ack = frame.payload.method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
                confirmed = max(confirmed, ack.delivery_tag)
            }
            amqp_maybe_release_buffers(state)
        }
    }

    func consume(_ queue: String, prefetch: UInt16) throws {
        _ = amqp_basic_qos(state, 1, 0, prefetch, 0)
        try check("basic.qos")
        _ = amqp_basic_consume(state, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table)
        try check("basic.consume")
    }

    /// Receives one message, hands its body to `body`, acks it.
    func receiveAndAck(_ body: (UnsafeRawBufferPointer) -> Void) throws {
        amqp_maybe_release_buffers(state)
        var envelope = amqp_envelope_t()
        let reply = amqp_consume_message(state, &envelope, nil, 0)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else { throw RawError(description: "consume failed") }
        body(UnsafeRawBufferPointer(start: envelope.message.body.bytes, count: envelope.message.body.len))
        guard amqp_basic_ack(state, 1, envelope.delivery_tag, 0) == 0 else { throw RawError(description: "ack failed") }
        amqp_destroy_envelope(&envelope)
    }
}

func benchmarkRaw() async throws -> Figures {
    let queue = "bench-raw-\(UUID().uuidString.prefix(6))"
    var figures = try await onThread { () throws -> Figures in
        var figures = Figures()
        let publisher = try RawConnection(url: url)
        try publisher.declare(queue)
        try publisher.confirmSelect()
        var tag: UInt64 = 0
        var start = ContinuousClock.now
        for _ in 0..<singles {
            try publisher.publish(queue, payload)
            tag += 1
            try publisher.awaitConfirms(upTo: tag)
        }
        figures.publishOne = rate(singles, ContinuousClock.now - start)
        let classicQueue = queue + "-classic"
        try publisher.declare(classicQueue, type: "classic")
        start = ContinuousClock.now
        for _ in 0..<singles {
            try publisher.publish(classicQueue, payload)
            tag += 1
            try publisher.awaitConfirms(upTo: tag)
        }
        figures.publishOneClassic = rate(singles, ContinuousClock.now - start)
        publisher.delete(classicQueue)
        start = ContinuousClock.now
        for _ in 0..<(batched / batchSize) {
            for _ in 0..<batchSize { try publisher.publish(queue, payload) }
            tag += UInt64(batchSize)
            try publisher.awaitConfirms(upTo: tag)
        }
        figures.publishBatch = rate(batched, ContinuousClock.now - start)
        let consumer = try RawConnection(url: url)
        try consumer.consume(queue, prefetch: 256)
        start = ContinuousClock.now
        for _ in 0..<(singles + batched) { try consumer.receiveAndAck { _ in } }
        figures.consume = rate(singles + batched, ContinuousClock.now - start)
        return figures
    }
    let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
        group.addTask {
            try await onThread {
                let consumer = try RawConnection(url: url)
                try consumer.consume(queue, prefetch: 256)
                var latencies: [Double] = []
                while latencies.count < latencySamples {
                    try consumer.receiveAndAck { body in
                        if let sample = latency(of: body) { latencies.append(sample) }
                    }
                }
                return latencies
            }
        }
        group.addTask {
            try await onThread {
                let publisher = try RawConnection(url: url)
                try publisher.confirmSelect()
                for tag in 1...UInt64(latencySamples) {
                    try publisher.publish(queue, stamped())
                    try publisher.awaitConfirms(upTo: tag)
                }
                publisher.delete(queue)
                return []
            }
        }
        var all: [Double] = []
        for try await part in group { all += part }
        return all
    }
    figures.p50 = percentile(latencies, 0.5)
    figures.p99 = percentile(latencies, 0.99)
    return figures
}

// MARK: - Report

print("RabbitMQ benchmark against \(BrokerURL.redact(url)) (rabbitmq-c \(RabbitBackend.libraryVersion))")
print(
    "\(singles) single publishes, \(batched) batched (\(batchSize)/batch), consume+ack \(singles + batched), \(latencySamples) latency samples; 256-byte persistent messages, quorum queues"
)
// Rounds: this VM's figures swing between runs, so both sides run `roundCount` times back to
// back; the table shows medians, and each round's ratio compares two runs made under the
// same conditions.
do {
    var rounds: [(kit: Figures, raw: Figures)] = []
    for round in 1...roundCount {
        print("round \(round) of \(roundCount)…")
        let raw = try await benchmarkRaw()
        let kit = try await benchmarkBrokerKit()
        rounds.append((kit, raw))
    }
    func row(_ name: String, _ path: KeyPath<Figures, Double>, _ unit: String, higherIsBetter: Bool = true) {
        var kit: [Double] = []
        var raw: [Double] = []
        var ratios: [Double] = []
        for round in rounds {
            kit.append(round.kit[keyPath: path])
            raw.append(round.raw[keyPath: path])
            ratios.append(
                higherIsBetter ? kit[kit.count - 1] / raw[raw.count - 1] : raw[raw.count - 1] / kit[kit.count - 1]
            )
        }
        print(
            name.padding(toLength: 34, withPad: " ", startingAt: 0)
                + String(format: "%12.0f %12.0f %8.0f%%  ", median(kit), median(raw), median(ratios) * 100)
                + unit + "  [rounds: " + ratios.map { String(format: "%.0f%%", $0 * 100) }.joined(separator: " / ")
                + "]"
        )
    }
    print(
        "measure (medians of \(roundCount) rounds)".padding(toLength: 34, withPad: " ", startingAt: 0)
            + "   BrokerKit  raw librabbitmq  ratio"
    )
    row("publish, confirm awaited each", \.publishOne, "msg/s")
    row("  the same, classic queue", \.publishOneClassic, "msg/s")
    row("publish, pipelined batches", \.publishBatch, "msg/s")
    row("consume + ack", \.consume, "msg/s")
    print(
        "  16 handlers (DeliveryProcessor) ÷ one handler, BrokerKit: "
            + String(format: "%.2f", median(rounds.map { $0.kit.consumeProcessor / $0.kit.consume }))
            + "  [rounds: "
            + rounds.map { String(format: "%.2f", $0.kit.consumeProcessor / $0.kit.consume) }.joined(separator: " / ")
            + "]; 16 handlers \(String(format: "%.0f", median(rounds.map(\.kit.consumeProcessor)))) msg/s"
    )
    row("end-to-end latency p50", \.p50, "µs (ratio: raw/BrokerKit)", higherIsBetter: false)
    row("end-to-end latency p99", \.p99, "µs (ratio: raw/BrokerKit)", higherIsBetter: false)
} catch {
    print("benchmark failed: \(error)")
    exit(1)
}
