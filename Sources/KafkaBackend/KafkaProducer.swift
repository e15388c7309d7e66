import BrokerAPI
import CRdKafka
import Foundation
import Logging
import Synchronization

/// Record layout on Kafka (documented in docs/kafka.md):
/// - key: ``Message/key`` as UTF-8 (no key: a null key, partitioned by librdkafka)
/// - value: the payload bytes, untouched
/// - headers: the message's headers as UTF-8, plus `x-brokerkit-id` (the message id)
/// - timestamp: ``Message/timestamp`` (CreateTime)
/// Retried and delayed copies also carry `x-brokerkit-attempt`, `x-brokerkit-first-failure-at`
/// and `x-brokerkit-deliver-at`; consumers strip those before the app sees the message.
enum KafkaRecordLayout {
    static let idHeader = "x-brokerkit-id"
    /// What a consumer hands the app: the message without the transport headers (id,
    /// attempt, first failure, deliver-at), and the attempt and first-failure time those
    /// carried (one pass over the headers).
    static func consumed(from record: KafkaRecord) -> (message: Message, attempt: Int?, firstFailureAt: Date?) {
        var headers: [String: String] = [:]
        var id: String?
        var attempt: Int?
        var firstFailureAt: Date?
        for (name, value) in record.headers {
            switch name {
            case idHeader: id = value
            case HeaderName.attempt: attempt = Int(value)
            case HeaderName.firstFailureAt: firstFailureAt = ISO8601.parse(value)
            case HeaderName.deliverAt: continue
            default: headers[name] = value
            }
        }
        return (message(of: record, id: id, headers: headers), attempt, firstFailureAt)
    }

    /// The message a record carries, every header but the id kept.
    static func message(from record: KafkaRecord) -> Message {
        var headers: [String: String] = [:]
        var id: String?
        for (name, value) in record.headers {
            if name == idHeader { id = value; continue }
            headers[name] = value
        }
        return message(of: record, id: id, headers: headers)
    }

    /// `record` as a message with `headers` (id from the header, else `topic-partition-offset`).
    private static func message(of record: KafkaRecord, id: String?, headers: [String: String]) -> Message {
        Message(
            id: id ?? "\(record.topic)-\(record.partition)-\(record.offset)",
            key: record.key.map { String(decoding: $0, as: UTF8.self) },
            payload: record.value, headers: headers, timestamp: record.timestamp ?? Date())
    }
}

/// One idempotent librdkafka producer per broker. `rd_kafka_producev` only enqueues (never
/// blocks), so publish calls run on the caller's task; delivery reports arrive on a dedicated
/// poll thread and resume the awaiting tasks.
final class KafkaProducer: Sendable {
    /// Resumes one awaiting publish; retained in the message opaque until its delivery report.
    final class Completion: Sendable {
        let body: @Sendable (Result<(Int32, Int64), BrokerError>) -> Void
        init(_ body: @escaping @Sendable (Result<(Int32, Int64), BrokerError>) -> Void) { self.body = body }
    }

    let handle: RdKafkaHandle
    let settings: KafkaConfiguration
    /// Poll-thread state, shared with the thread (noncopyable primitives live in a class).
    private final class PollState: Sendable {
        let running = Atomic<Bool>(true)
        let done = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
    }
    private let poll = PollState()
    private let enqueueThread = ConnectionThread(name: "kafka-producer")

    init(settings: KafkaConfiguration, logger: Logger) throws {
        self.settings = settings
        let callbacks = RdKafkaCallbacks(logger: logger, role: "producer")
        handle = try RdKafkaHandle(
            type: RD_KAFKA_PRODUCER, properties: settings.common.merging(settings.producer) { $1 }, callbacks: callbacks
        ) { conf in
            rd_kafka_conf_set_dr_msg_cb(conf) { _, message, _ in
                guard let message, let opaque = message.pointee._private else { return }
                let completion = Unmanaged<Completion>.fromOpaque(opaque).takeRetainedValue()
                let m = message.pointee
                if m.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                    completion.body(.success((m.partition, m.offset)))
                } else {
                    let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
                    completion.body(.failure(KafkaProducer.deliveryError(m.err, topic: topic)))
                }
            }
        }
        let handle = self.handle
        let poll = self.poll
        let thread = Thread {
            while poll.running.load(ordering: .relaxed) { rd_kafka_poll(handle.rk, 100) }
            let waiters = poll.done.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.done = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
        thread.name = "kafka-producer-poll"
        thread.start()
    }

    /// A failed delivery report (the server is added by ``produce(_:destination:)``).
    /// librdkafka's fatal error, once one happened (the producer must then be replaced).
    var fatalError: String? { handle.callbacks.fatal.withLock { $0 } }

    static func deliveryError(_ code: rd_kafka_resp_err_t, topic: String) -> BrokerError {
        let mapped = RdKafka.brokerError(code, "produce to topic '\(topic)' failed", server: "?", destination: topic)
        return BrokerError(mapped.code, mapped.message, backend: "kafka", destination: topic)
    }

    /// Produces `records` and waits for every delivery report. Receipts are in input order.
    /// The first failure is thrown after all reports are in (so nothing is left in flight).
    func produce(_ records: [OutgoingRecord], destination: String) async throws -> [(Int32, Int64)] {
        if records.isEmpty { return [] }
        if let fatal = handle.callbacks.fatal.withLock({ $0 }) {
            throw BrokerError(.brokerError, "the Kafka producer hit a fatal error and must be recreated: \(fatal)", backend: "kafka", destination: destination)
        }
        guard poll.running.load(ordering: .relaxed) else { throw BrokerError.closed("kafka producer", backend: "kafka", destination: destination) }
        let collector = BatchCollector(count: records.count)
        // rd_kafka_producev takes librdkafka's locks (and waits on a full queue), so the
        // enqueueing runs on the producer's own thread: one hop per publish call.
        try await enqueueThread.run { [self] in
            for (index, record) in records.enumerated() {
                let completion = Completion { result in collector.complete(index, result) }
                enqueue(record, completion: completion, destination: destination)
            }
        }
        do {
            return try await collector.wait()
        } catch let error as BrokerError {
            throw BrokerError(
                error.code, error.message.replacingOccurrences(of: "kafka ?)", with: "kafka \(settings.server))"),
                backend: "kafka", destination: destination)
        }
    }

    /// Enqueues one record (on the enqueue thread); on QUEUE_FULL waits for room. Errors
    /// complete the record's completion.
    private func enqueue(_ record: OutgoingRecord, completion: Completion, destination: String) {
        let opaque = Unmanaged.passRetained(completion).toOpaque()
        var attempts = 0
        while true {
            let err = tryEnqueue(record, opaque: opaque)
            if err == RD_KAFKA_RESP_ERR_NO_ERROR { return }
            if err == RD_KAFKA_RESP_ERR__QUEUE_FULL && attempts < 30_000 && poll.running.load(ordering: .relaxed) {
                attempts += 1
                usleep(1000)
                continue
            }
            Unmanaged<Completion>.fromOpaque(opaque).release()
            let error: BrokerError
            if err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE {
                error = BrokerError(
                    .messageTooLarge,
                    "record for '\(record.topic)' is \(record.value.count) bytes, more than librdkafka's message.max.bytes (\(settings.common["message.max.bytes"] ?? "?"))",
                    backend: "kafka", destination: destination)
            } else {
                error = RdKafka.brokerError(err, "cannot enqueue a record for topic '\(record.topic)'", server: settings.server, destination: destination)
            }
            completion.body(.failure(error))
            return
        }
    }

    /// One non-blocking `rd_kafka_producev`; headers are freed here when it fails.
    private func tryEnqueue(_ record: OutgoingRecord, opaque: UnsafeMutableRawPointer) -> rd_kafka_resp_err_t {
        let headers = record.makeHeaders()
        let err: rd_kafka_resp_err_t = record.value.withUnsafeBytes { value in
            let keyBytes = record.key ?? Data()
            return keyBytes.withUnsafeBytes { key in
                bk_produce(
                    handle.rk, record.topic, -1, value.baseAddress, value.count,
                    record.key == nil ? nil : key.baseAddress, record.key == nil ? 0 : key.count,
                    headers, record.timestampMilliseconds, opaque)
            }
        }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR, let headers { rd_kafka_headers_destroy(headers) }
        return err
    }

    /// Waits until every enqueued record has a delivery report (or `timeout` passes).
    func flush(timeout: Duration) async {
        let handle = self.handle
        let ms = RdKafka.milliseconds(timeout)
        _ = try? await RdKafka.offPool { _ = rd_kafka_flush(handle.rk, ms) }
    }

    /// Flushes, stops the poll thread and destroys the handle.
    func close(timeout: Duration) async {
        guard poll.running.load(ordering: .relaxed) else { return }
        enqueueThread.shutdown()
        await flush(timeout: timeout)
        poll.running.store(false, ordering: .relaxed)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let already = poll.done.withLock { state -> Bool in
                if state.done { return true }
                state.waiters.append(continuation)
                return false
            }
            if already { continuation.resume() }
        }
        let handle = self.handle
        _ = try? await RdKafka.offPool {
            // Reports still queued (timed out) are failed by rd_kafka_destroy's purge.
            rd_kafka_purge(handle.rk, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            _ = rd_kafka_poll(handle.rk, 0)
            handle.destroy()
        }
    }
}

/// A record to produce.
struct OutgoingRecord: Sendable {
    let topic: String
    let key: Data?
    let value: Data
    let headers: [(String, String)]
    let timestampMilliseconds: Int64

    init(topic: String, message: Message, extraHeaders: [String: String] = [:]) {
        self.topic = topic
        key = message.key.map { Data($0.utf8) }
        value = message.payload
        var headers: [(String, String)] = [(KafkaRecordLayout.idHeader, message.id)]
        for (name, value) in message.headers.sorted(by: { $0.key < $1.key }) where extraHeaders[name] == nil {
            headers.append((name, value))
        }
        for (name, value) in extraHeaders.sorted(by: { $0.key < $1.key }) { headers.append((name, value)) }
        self.headers = headers
        timestampMilliseconds = Int64((message.timestamp.timeIntervalSince1970 * 1000).rounded())
    }

    func makeHeaders() -> OpaquePointer? {
        guard !headers.isEmpty, let list = rd_kafka_headers_new(headers.count) else { return nil }
        for (name, value) in headers {
            var bytes = Array(value.utf8)
            if bytes.isEmpty { bytes = [0] ; _ = rd_kafka_header_add(list, name, -1, bytes, 0); continue }
            _ = rd_kafka_header_add(list, name, -1, bytes, bytes.count)
        }
        return list
    }
}

/// Gathers the delivery reports of one publish call.
private final class BatchCollector: Sendable {
    private struct State {
        var results: [(Int32, Int64)?]
        var failure: BrokerError?
        var left: Int
        var continuation: CheckedContinuation<[(Int32, Int64)], any Error>?
    }
    private let state: Mutex<State>

    init(count: Int) { state = Mutex(State(results: Array(repeating: nil, count: count), failure: nil, left: count, continuation: nil)) }

    /// Waits until every record has its report; throws the first failure.
    func wait() async throws -> [(Int32, Int64)] {
        try await withCheckedThrowingContinuation { continuation in
            let ready = state.withLock { s -> Result<[(Int32, Int64)], BrokerError>? in
                guard s.left == 0 else {
                    s.continuation = continuation
                    return nil
                }
                if let failure = s.failure { return .failure(failure) }
                return .success(s.results.map { $0! })
            }
            if let ready { continuation.resume(with: ready.mapError { $0 as any Error }) }
        }
    }

    func complete(_ index: Int, _ result: Result<(Int32, Int64), BrokerError>) {
        let finished = state.withLock { s -> (CheckedContinuation<[(Int32, Int64)], any Error>, Result<[(Int32, Int64)], BrokerError>)? in
            switch result {
            case .success(let value): s.results[index] = value
            case .failure(let error): if s.failure == nil { s.failure = error }
            }
            s.left -= 1
            guard s.left == 0, let continuation = s.continuation else { return nil }
            s.continuation = nil
            if let failure = s.failure { return (continuation, .failure(failure)) }
            return (continuation, .success(s.results.map { $0! }))
        }
        if let (continuation, result) = finished { continuation.resume(with: result.mapError { $0 as any Error }) }
    }
}
