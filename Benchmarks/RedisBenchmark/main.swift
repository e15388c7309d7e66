// BrokerKit's Redis Streams backend against raw hiredis doing the same work, in one run.
//
//   swift build -c release --product RedisBenchmark
//   .build/release/RedisBenchmark [redis://127.0.0.1:6390] [messages] [rounds, default 3]
//
// Scenarios (same message count and 256-byte payload for both sides):
//   publish-awaited   one XADD per message, each awaited before the next
//   publish-batched   batches of 100 XADDs, pipelined in one round trip
//   consume-ack       read in batches of 100 through a consumer group, ack (XACK + XDEL) each;
//                     raw acks each read batch in one MULTI/EXEC; BrokerKit with one handler
//                     (next + ack) and with 16 (DeliveryProcessor); its acks are asynchronous
//   e2e-latency       publish one message, wait until a group consumer has it (p50 / p99)
// and, in a second table, the front's cost: the same publishes through BrokerClient and
// straight to its driver, on Redis and on the embedded broker (memory://).
import BenchmarkSupport
@_spi(BrokerBackend) import BrokerAPI
import CHiredis
import Foundation
import RedisStreamsBackend

let arguments = CommandLine.arguments
let url =
    arguments.count > 1
    ? arguments[1] : (ProcessInfo.processInfo.environment["BROKERKIT_TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379")
let count = positiveArgument(2, "messages", fallback: 20_000)
let roundCount = positiveArgument(3, "rounds", fallback: 3)
let latencySamples = 2_000
let payload = Data(repeating: 0x61, count: 256)
let batch = 100

// MARK: - Raw hiredis

/// A raw hiredis context, used from one thread only.
final class Raw: @unchecked Sendable {
    // Safe: each Raw is used by one benchmark thread at a time.
    let context: UnsafeMutablePointer<redisContext>

    init(host: String, port: Int) {
        guard let context = redisConnectWithTimeout(host, Int32(port), timeval(tv_sec: 5, tv_usec: 0)),
            context.pointee.err == 0
        else {
            fatalError("raw hiredis cannot connect to \(host):\(port)")
        }
        self.context = context
    }

    deinit { redisFree(context) }

    func append(_ args: [Data]) {
        let buffers = args.map { data -> UnsafeMutablePointer<CChar> in
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, data.count))
            data.withUnsafeBytes { raw in
                if let base = raw.baseAddress {
                    UnsafeMutableRawPointer(buffer).copyMemory(from: base, byteCount: data.count)
                }
            }
            return buffer
        }
        defer { for buffer in buffers { buffer.deallocate() } }
        var argv = buffers.map { UnsafePointer<CChar>?($0) }
        let lengths = args.map(\.count)
        _ = redisAppendCommandArgv(context, Int32(args.count), &argv, lengths)
    }

    /// Reads one reply; returns the entry ids of an XREADGROUP reply (or nothing).
    @discardableResult
    func reply() -> [String] {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else { fatalError("raw hiredis: connection lost") }
        defer { freeReplyObject(raw) }
        let reply = raw.assumingMemoryBound(to: redisReply.self).pointee
        guard reply.type == REDIS_REPLY_ARRAY, reply.elements > 0, let stream = reply.element[0]?.pointee,
            stream.elements == 2, let entries = stream.element[1]?.pointee
        else { return [] }
        var ids: [String] = []
        for i in 0..<entries.elements {
            if let entry = entries.element[i]?.pointee, let id = entry.element[0]?.pointee.str {
                ids.append(String(cString: id))
            }
        }
        return ids
    }

    func command(_ args: [String]) {
        append(args.map { Data($0.utf8) })
        reply()
    }

    /// XADDs `count` messages to `key` in pipelined batches of `batch`.
    func addAll(to key: String) {
        var i = 0
        while i < count {
            let n = min(batch, count - i)
            for j in 0..<n { append([Data("XADD".utf8), Data(key.utf8), Data("*".utf8)] + fields(i + j)) }
            for _ in 0..<n { reply() }
            i += n
        }
    }
}

func fields(_ i: Int) -> [Data] {
    [
        Data("id".utf8), Data("m\(i)".utf8), Data("ts".utf8), Data("\(Int(Date().timeIntervalSince1970 * 1000))".utf8),
        Data("payload".utf8), payload,
    ]
}

final class Counter: @unchecked Sendable {
    // Safe: every access holds `lock`.
    private var count = 0
    private let lock = NSLock()
    func increment() {
        lock.lock()
        count += 1
        lock.unlock()
    }
    var value: Int {
        lock.lock()
        defer { lock.unlock() }
        return count
    }
}

// MARK: - Setup

RedisStreamsBackend.register()
let parsed = try BrokerURL(url)
let host = parsed.hosts.first?.name ?? "127.0.0.1"
let port = parsed.hosts.first?.port ?? 6379
let broker = try await Brokers.connect(url: url, options: ["prefix": "bench:"])
let run = UUID().uuidString.prefix(6)
print(
    "BrokerKit Redis Streams backend vs raw hiredis \(RedisStreamsBackend.libraryVersion) — \(count) messages of \(payload.count) B, \(url)"
)
print("")

/// Every scenario once, raw side first. Names carry the round so rounds never share keys.
@MainActor func measureRound(_ round: Int) async throws -> [Row] {
    var rows: [Row] = []

    // publish-awaited
    let rawAwaitedKey = "bench-raw-awaited-\(run)-\(round)"
    let rawAwaited = await onThread {
        let raw = Raw(host: host, port: port)
        let start = ContinuousClock.now
        for i in 0..<count {
            raw.append([Data("XADD".utf8), Data(rawAwaitedKey.utf8), Data("*".utf8)] + fields(i))
            raw.reply()
        }
        let elapsed = ContinuousClock.now - start
        raw.command(["DEL", rawAwaitedKey])
        return elapsed
    }
    let kitAwaitedQueue = "awaited-\(run)-\(round)"
    try await broker.createQueue(kitAwaitedQueue)
    let kitAwaited = try await measure {
        for i in 0..<count { try await broker.publish(Message(id: "m\(i)", payload: payload), to: kitAwaitedQueue) }
    }
    try await broker.deleteDestination(kitAwaitedQueue)
    rows.append(
        Row(
            name: "publish-awaited (msg/s)",
            kit: rate(count, kitAwaited),
            raw: rate(count, rawAwaited),
            ratio: rate(count, kitAwaited) / rate(count, rawAwaited)
        )
    )

    // publish-batched
    let rawBatchKey = "bench-raw-batched-\(run)-\(round)"
    let rawBatched = await onThread {
        let raw = Raw(host: host, port: port)
        let start = ContinuousClock.now
        raw.addAll(to: rawBatchKey)
        return ContinuousClock.now - start
    }
    let kitBatchQueue = "batched-\(run)-\(round)"
    try await broker.createQueue(kitBatchQueue)
    let kitBatched = try await measure {
        var i = 0
        while i < count {
            let n = min(batch, count - i)
            _ = try await broker.publish((0..<n).map { Message(id: "m\(i + $0)", payload: payload) }, to: kitBatchQueue)
            i += n
        }
    }
    rows.append(
        Row(
            name: "publish-batched (msg/s)",
            kit: rate(count, kitBatched),
            raw: rate(count, rawBatched),
            ratio: rate(count, kitBatched) / rate(count, rawBatched)
        )
    )

    // consume-ack: both sides drain what they published, acking every message (XACK + XDEL in
    // MULTI/EXEC, checked). BrokerKit acks asynchronously (recorded, then flushed in one round
    // trip per batch of acks), so the raw side does the best a hand-written hiredis consumer
    // does: read a batch of 100, ack the whole batch in one MULTI XACK … XDEL … EXEC, repeat.
    // "one handler": BrokerKit's `next()` + `ack()` loop; "16 handlers": its DeliveryProcessor.
    func rawConsume(_ key: String) async -> Duration {
        await onThread {
            let raw = Raw(host: host, port: port)
            raw.command(["XGROUP", "CREATE", key, "g", "0", "MKSTREAM"])
            let start = ContinuousClock.now
            var done = 0
            while done < count {
                raw.append([
                    Data("XREADGROUP".utf8), Data("GROUP".utf8), Data("g".utf8), Data("c".utf8), Data("COUNT".utf8),
                    Data("\(batch)".utf8), Data("BLOCK".utf8), Data("100".utf8), Data("STREAMS".utf8), Data(key.utf8),
                    Data(">".utf8),
                ])
                let ids = raw.reply().map { Data($0.utf8) }
                guard !ids.isEmpty else { continue }
                raw.append([Data("MULTI".utf8)])
                raw.append([Data("XACK".utf8), Data(key.utf8), Data("g".utf8)] + ids)
                raw.append([Data("XDEL".utf8), Data(key.utf8)] + ids)
                raw.append([Data("EXEC".utf8)])
                for _ in 0..<4 { raw.reply() }
                done += ids.count
            }
            let elapsed = ContinuousClock.now - start
            raw.command(["DEL", key])
            return elapsed
        }
    }

    func fill(raw key: String, queue: String) async throws {
        await onThread {
            Raw(host: host, port: port).addAll(to: key)
        }
        try await broker.createQueue(queue)
        var i = 0
        while i < count {
            let n = min(batch, count - i)
            _ = try await broker.publish((0..<n).map { Message(id: "m\(i + $0)", payload: payload) }, to: queue)
            i += n
        }
    }

    let rawSequential = await rawConsume(rawBatchKey)
    let consumer = try await broker.consumeQueue(kitBatchQueue, options: .init(prefetch: batch))
    let kitSequential = try await measure {
        for _ in 0..<count {
            guard let delivery = try await consumer.next() else { fatalError("consumer ended") }
            try await delivery.ack()
        }
    }
    await consumer.close()
    try await broker.deleteDestination(kitBatchQueue)
    rows.append(
        Row(
            name: "consume-ack, one handler (msg/s)",
            kit: rate(count, kitSequential),
            raw: rate(count, rawSequential),
            ratio: rate(count, kitSequential) / rate(count, rawSequential)
        )
    )

    let rawConcurrentKey = "bench-raw-concurrent-\(run)-\(round)"
    let kitConcurrentQueue = "concurrent-\(run)-\(round)"
    try await fill(raw: rawConcurrentKey, queue: kitConcurrentQueue)
    let rawConcurrent = await rawConsume(rawConcurrentKey)
    let handled = Counter()
    let concurrentConsumer = try await broker.consumeQueue(kitConcurrentQueue, options: .init(prefetch: batch))
    let processor = DeliveryProcessor(
        consumer: concurrentConsumer,
        options: .init(concurrency: 16, orderedByKey: false)
    ) { _ in
        handled.increment()
    }
    // Timed until the last message is handled, as the one-handler row (stopping the
    // processor and closing its consumer are not part of either).
    let (kitConcurrent, running) = try await Task.detached { () -> (Duration, Task<Void, any Error>) in
        let start = ContinuousClock.now
        let running = Task { try await processor.run() }
        while handled.value < count { try await Task.sleep(for: .milliseconds(1)) }
        return (ContinuousClock.now - start, running)
    }.value
    processor.stop()
    try await running.value
    try await broker.deleteDestination(kitConcurrentQueue)
    rows.append(
        Row(
            name: "consume-ack, 16 handlers (msg/s)",
            kit: rate(count, kitConcurrent),
            raw: rate(count, rawConcurrent),
            ratio: rate(count, kitConcurrent) / rate(count, rawConcurrent)
        )
    )

    // e2e latency: publish one message, wait for a blocked group reader to get it.
    let rawLatencyKey = "bench-raw-latency-\(run)-\(round)"
    let rawLatencies: [Duration] = await onThread {
        let producer = Raw(host: host, port: port)
        let reader = Raw(host: host, port: port)
        reader.command(["XGROUP", "CREATE", rawLatencyKey, "g", "$", "MKSTREAM"])
        var samples: [Duration] = []
        for i in 0..<latencySamples {
            reader.append([
                Data("XREADGROUP".utf8), Data("GROUP".utf8), Data("g".utf8), Data("c".utf8), Data("COUNT".utf8),
                Data("1".utf8),
                Data("BLOCK".utf8), Data("1000".utf8), Data("STREAMS".utf8), Data(rawLatencyKey.utf8), Data(">".utf8),
            ])
            // Flush the blocking read before publishing.
            var done: Int32 = 0
            while done == 0 { _ = redisBufferWrite(reader.context, &done) }
            let start = ContinuousClock.now
            producer.append([Data("XADD".utf8), Data(rawLatencyKey.utf8), Data("*".utf8)] + fields(i))
            producer.reply()
            let ids = reader.reply()
            samples.append(ContinuousClock.now - start)
            if let id = ids.first { reader.command(["XACK", rawLatencyKey, "g", id]) }
        }
        producer.command(["DEL", rawLatencyKey])
        return samples
    }
    let latencyQueue = "latency-\(run)-\(round)"
    try await broker.createQueue(latencyQueue)
    // The default prefetch (16), as an app has it: the consumer's next blocking read is already
    // under way when the next message is published, as the raw reader's is. (With prefetch 1 it
    // is sent only after the ack, so each sample also pays for re-arming the read.)
    let latencyConsumer = try await broker.consumeQueue(latencyQueue)
    let kitLatencies = try await sampleLatencies(latencySamples, consumer: latencyConsumer) { i in
        try await broker.publish(Message(id: "l\(i)", payload: payload), to: latencyQueue)
    }
    await latencyConsumer.close()
    try await broker.deleteDestination(latencyQueue)
    rows += latencyRows(kit: kitLatencies, raw: rawLatencies)
    return rows
}

// Rounds: this VM's figures swing between runs (other processes, CPU frequency), so every
// scenario runs `rounds` times, raw and BrokerKit back to back, and the table shows medians;
// each round's ratio compares two runs made under the same conditions.
var rounds: [[Row]] = []
for round in 1...roundCount {
    print("round \(round) of \(roundCount)…")
    rounds.append(try await measureRound(round))
}

// The front's own cost (BrokerClient against its driver called directly), on this Redis and
// on the embedded broker, where no network hides it.
let client = broker
let memory = try await Brokers.connect(url: "memory://bench-front-\(run)")
var frontRounds: [[Row]] = []
for round in 1...roundCount {
    let name = "front-\(run)-\(round)"
    let redisRows = try await frontCostRows(client, label: "redis", destination: name, count: count, payload: payload)
    let memoryRows = try await frontCostRows(
        memory,
        label: "memory",
        destination: name,
        count: count * 5,
        payload: payload
    )
    frontRounds.append(redisRows + memoryRows)
}
await memory.close()
await broker.close()

// The fixed cost every awaited call pays: a hop from a Swift task to a connection thread and back.
let hopThread = ConnectionThread(name: "bench-hop")
let hops = try await measure { for _ in 0..<count { _ = try await hopThread.run { 0 } } }
hopThread.shutdown()
print(
    "task → connection thread → task hop: \(String(format: "%.1f", hops.timeInterval / Double(count) * 1_000_000)) µs per call"
)
print("")
printRounds(rounds, rawName: "raw hiredis")
print("")
print("The front's cost: BrokerKit's publish against its driver's, called directly")
print("")
printRounds(frontRounds, rawName: "driver called directly")
