@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation
import Logging
import Synchronization

/// One idempotent librdkafka producer per broker. One thread of its own (``ProducerThread``)
/// enqueues batches and serves delivery reports, which resume the awaiting tasks. Enqueueing
/// a batch stays off the cooperative pool because it can wait: for a new topic's metadata
/// (``learnNewTopics(_:)``) and for room in a full queue (``enqueue(_:slot:destination:gaveUpOnRoom:)``);
/// `rd_kafka_producev` itself only takes librdkafka's locks and never waits, so a single
/// record to a known topic is enqueued on the caller's thread, and goes to the producer's
/// thread only when the queue is full.
final class KafkaPublisher: Sendable {
    let handle: RdKafkaHandle
    let settings: KafkaSettings
    private let thread: ProducerThread
    /// Topics whose metadata this producer asked for before its first record to them.
    private let askedTopics = Mutex<Set<String>>([])

    init(settings: KafkaSettings, logger: Logger) throws {
        self.settings = settings
        let callbacks = RdKafkaCallbacks(logger: logger, role: "producer")
        handle = try RdKafkaHandle(
            type: RD_KAFKA_PRODUCER,
            properties: settings.producerProperties,
            callbacks: callbacks
        ) { conf in
            rd_kafka_conf_set_dr_msg_cb(conf) { _, message, _ in
                guard let message, let opaque = message.pointee._private else { return }
                let m = message.pointee
                if m.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                    BatchCollector.report(opaque, .success((m.partition, m.offset)))
                } else {
                    let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
                    BatchCollector.report(opaque, .failure(KafkaPublisher.deliveryError(m.err, topic: topic)))
                }
            }
        }
        thread = ProducerThread(handle: handle)
    }

    /// Dropped without ``close(timeout:)`` (its broker was never closed): the thread ends and
    /// the handle is destroyed in the background (``RdKafkaHandle``). No publish call is
    /// waiting then, because each one holds the producer.
    deinit { thread.stopAccepting() }

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
            throw BrokerError(
                .brokerError,
                "the Kafka producer hit a fatal error and must be recreated: \(fatal)",
                backend: "kafka",
                destination: destination
            )
        }
        let collector = BatchCollector(count: records.count)
        if records.count == 1, askedTopics.withLock({ $0.contains(records[0].topic) }) {
            // One record to a topic whose metadata was asked for already: enqueued here, which
            // spares the hop to the producer's thread (≈ 25 µs of latency on the test VM), as a
            // raw librdkafka producer or swift-kafka-client's `send` enqueues on the caller's
            // thread. A full queue, where enqueueing must wait, still goes to that thread.
            switch thread.whileAccepting({ tryEnqueue(records[0], opaque: collector.slot(0)) }) {
            case RD_KAFKA_RESP_ERR_NO_ERROR?:
                return try await delivered(collector, destination: destination)
            case nil:
                collector.abandon()
                throw ProducerThread.closed(destination: destination)
            default:
                break  // full, or failed: the producer's thread waits, or reports the error
            }
        }
        // One hop to the producer's thread per publish call.
        do {
            try await thread.run(destination: destination) { [self] in
                learnNewTopics(records)
                var gaveUpOnRoom = false
                for index in records.indices {
                    enqueue(
                        records[index],
                        slot: collector.slot(index),
                        destination: destination,
                        gaveUpOnRoom: &gaveUpOnRoom
                    )
                }
            }
        } catch {
            collector.abandon()
            throw error
        }
        return try await delivered(collector, destination: destination)
    }

    /// Waits for `collector`'s reports; a failure names this producer's server.
    private func delivered(_ collector: BatchCollector, destination: String) async throws -> [(Int32, Int64)] {
        do {
            return try await collector.wait()
        } catch let error as BrokerError {
            throw BrokerError(
                error.code,
                error.message.replacingOccurrences(of: "kafka ?)", with: "kafka \(settings.server))"),
                backend: "kafka",
                destination: destination
            )
        }
    }

    /// Asks for the metadata of topics this producer has not produced to yet (on the
    /// producer's thread). Left alone, librdkafka learns a new topic's partitions only at its next
    /// once-a-second topic scan, so the first record to every topic (a queue's first retry
    /// topic, say) waited up to a second, and with it every handler awaiting that produce.
    /// Asked once per topic; a failure leaves the record to librdkafka's own lookup.
    private func learnNewTopics(_ records: [OutgoingRecord]) {
        // A batch nearly always goes to one topic: look each run of equal topics up once.
        var fresh: [String] = []
        askedTopics.withLock { asked in
            var previous: String?
            for index in records.indices where records[index].topic != previous {  // by index: no copy of each record
                previous = records[index].topic
                if asked.insert(records[index].topic).inserted { fresh.append(records[index].topic) }
            }
        }
        let timeout = Int32(min(2_000, max(100, RdKafka.milliseconds(settings.operationTimeout))))
        for topic in fresh {
            guard let rkt = rd_kafka_topic_new(handle.rk, topic, nil) else { continue }
            var metadata: UnsafePointer<rd_kafka_metadata>?
            _ = rd_kafka_metadata(handle.rk, 0, rkt, &metadata, timeout)
            if let metadata { rd_kafka_metadata_destroy(metadata) }
            rd_kafka_topic_destroy(rkt)
        }
    }

    /// Enqueues one record (on the producer's thread). On QUEUE_FULL it serves delivery
    /// reports, which make room, for up to `operation.timeout` (as long as librdkafka's
    /// `message.timeout.ms` gives a record to be delivered, by default); a record that got no
    /// room by then fails with a `timeout` error, and so does every later record of the same
    /// publish call that finds the queue full (`gaveUpOnRoom`), at once instead of after a wait
    /// of its own. Errors complete the record's slot.
    private func enqueue(
        _ record: borrowing OutgoingRecord,
        slot opaque: UnsafeMutableRawPointer,
        destination: String,
        gaveUpOnRoom: inout Bool
    ) {
        var waitingSince: ContinuousClock.Instant?
        while true {
            let err = tryEnqueue(record, opaque: opaque)
            if err == RD_KAFKA_RESP_ERR_NO_ERROR { return }
            if err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !gaveUpOnRoom {
                // This thread serves the reports, so it polls while it waits.
                let now = ContinuousClock.now
                let since = waitingSince ?? now
                waitingSince = since
                if now - since < settings.operationTimeout {
                    rd_kafka_poll(handle.rk, 1)
                    continue
                }
                gaveUpOnRoom = true
            }
            let error: BrokerError
            if err == RD_KAFKA_RESP_ERR__QUEUE_FULL {
                let properties = settings.producerProperties
                error = BrokerError(
                    .timeout,
                    "record for topic '\(record.topic)' not sent: the producer's local queue stayed full for \(settings.operationTimeout) (operation.timeout; queue.buffering.max.messages = \(properties["queue.buffering.max.messages"] ?? "100000"), queue.buffering.max.kbytes = \(properties["queue.buffering.max.kbytes"] ?? "1048576")), so the broker is unreachable or takes records slower than they are published; the rest of this publish call's records that found the queue full were not sent either (kafka \(settings.server))",
                    backend: "kafka",
                    destination: destination
                )
            } else if err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE {
                error = BrokerError(
                    .messageTooLarge,
                    "record for '\(record.topic)' is \(record.value.count) bytes, more than librdkafka's message.max.bytes (\(settings.common["message.max.bytes"] ?? "?"))",
                    backend: "kafka",
                    destination: destination
                )
            } else {
                error = RdKafka.brokerError(
                    err,
                    "cannot enqueue a record for topic '\(record.topic)'",
                    server: settings.server,
                    destination: destination
                )
            }
            BatchCollector.report(opaque, .failure(error))
            return
        }
    }

    /// One non-blocking `rd_kafka_producev`; headers are freed here when it fails.
    private func tryEnqueue(_ record: borrowing OutgoingRecord, opaque: UnsafeMutableRawPointer) -> rd_kafka_resp_err_t
    {
        let headers = record.makeHeaders()
        let hasKey = record.hasKey
        let timestamp = record.timestampMilliseconds
        let err: rd_kafka_resp_err_t = record.value.withUnsafeBytes { value in
            record.key.withUnsafeBytes { key in
                bk_produce(
                    handle.rk,
                    record.topic,
                    -1,
                    value.baseAddress,
                    value.count,
                    hasKey ? key.baseAddress : nil,
                    hasKey ? key.count : 0,
                    headers,
                    timestamp,
                    opaque
                )
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

    /// Lets publish calls already accepted enqueue their records, stops the producer's
    /// thread, flushes (`rd_kafka_flush` serves the remaining reports) and destroys the handle.
    func close(timeout: Duration) async {
        guard await thread.stop() else { return }
        await flush(timeout: timeout)
        let handle = self.handle
        _ = try? await RdKafka.offPool {
            // Reports still queued (timed out) are failed by rd_kafka_destroy's purge.
            rd_kafka_purge(handle.rk, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            _ = rd_kafka_poll(handle.rk, 0)
            handle.destroy()
        }
    }
}

/// The producer's one thread. It runs publish calls' enqueue jobs in submission order and,
/// between them, serves librdkafka's main queue (`rd_kafka_poll`: delivery reports, logs,
/// errors). With nothing to do it waits in `rd_kafka_poll` for up to 100 ms; a new job cuts
/// that wait short with `rd_kafka_queue_yield`.
///
/// Enqueueing and serving reports on one thread is what a raw librdkafka producer does, and
/// it matters for speed: librdkafka allocates each record on the thread that enqueues it and
/// frees it on the thread that serves its report. With two threads every free took the
/// enqueuing thread's malloc arena lock (a `perf` profile of batched produce showed both
/// threads waiting on it).
private final class ProducerThread: Sendable {
    private struct State {
        var jobs: [@Sendable () -> Void] = []
        /// Cleared by ``stop()``: no job is accepted after it.
        var accepting = true
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    /// Set while the thread is about to wait, or waits, in `rd_kafka_poll` with no job:
    /// a submitter then yields the main queue to wake it.
    private let idle = Atomic<Bool>(false)
    private let handle: RdKafkaHandle
    /// The main queue (the one `rd_kafka_poll` serves), to yield it. Only touched under
    /// `state`'s lock while jobs are accepted; the thread destroys it, under that lock, when
    /// it ends.
    private nonisolated(unsafe) let mainQueue: OpaquePointer

    init(handle: RdKafkaHandle) {
        self.handle = handle
        mainQueue = rd_kafka_queue_get_main(handle.rk)
        DedicatedThread.start(name: "kafka-producer") { [self] in loop() }
    }

    /// Runs `body` on the thread. Throws ``BrokerError/Code/closed`` after ``stop()``.
    func run(destination: String, _ body: @escaping @Sendable () -> Void) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let accepted = state.withLock { state -> Bool in
                guard state.accepting else { return false }
                state.jobs.append {
                    body()
                    continuation.resume()
                }
                // The thread sets `idle` before it checks for jobs under this lock: either it
                // sees this job before it waits, or this sees it idle and wakes it.
                if idle.load(ordering: .sequentiallyConsistent) { rd_kafka_queue_yield(mainQueue) }
                return true
            }
            if !accepted {
                continuation.resume(throwing: Self.closed(destination: destination))
            }
        }
    }

    /// What a publish call gets once the producer is stopped, whichever way it came.
    static func closed(destination: String) -> BrokerError {
        BrokerError.closed("kafka producer", backend: "kafka", destination: destination)
    }

    /// Runs `body` on the calling thread while jobs are accepted, under the lock ``stop()``
    /// takes, so the handle cannot be closed meanwhile; `nil` after ``stop()``. For
    /// `rd_kafka_producev` of one record, which never waits.
    func whileAccepting<R>(_ body: () -> R) -> R? {
        state.withLock { state in state.accepting ? body() : nil }
    }

    /// Stops accepting jobs and waits until the thread has run the accepted ones and ended.
    /// Returns `false` (at once) to every caller but the first.
    func stop() async -> Bool {
        guard stopAccepting() else { return false }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let already = state.withLock { state -> Bool in
                if state.finished { return true }
                state.waiters.append(continuation)
                return false
            }
            if already { continuation.resume() }
        }
        return true
    }

    /// Stops accepting jobs and wakes the thread, which runs the accepted ones and ends.
    /// Returns at once: `true` for the first caller only.
    @discardableResult
    func stopAccepting() -> Bool {
        state.withLock { state -> Bool in
            guard state.accepting else { return false }
            state.accepting = false
            rd_kafka_queue_yield(mainQueue)
            return true
        }
    }

    private func loop() {
        let rk = handle.rk
        while true {
            let (jobs, accepting) = state.withLock { state in
                defer { state.jobs.removeAll(keepingCapacity: true) }
                return (state.jobs, state.accepting)
            }
            if !jobs.isEmpty {
                for job in jobs { job() }
                rd_kafka_poll(rk, 0)
                continue
            }
            guard accepting else { break }
            idle.store(true, ordering: .sequentiallyConsistent)
            if state.withLock({ $0.jobs.isEmpty && $0.accepting }) { rd_kafka_poll(rk, 100) }
            idle.store(false, ordering: .sequentiallyConsistent)
        }
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            rd_kafka_queue_destroy(mainQueue)
            state.finished = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// A record to produce.
struct OutgoingRecord: Sendable {
    let topic: String
    /// The key's UTF-8 bytes; empty when ``hasKey`` is false (a null key).
    let key: Data
    let hasKey: Bool
    let value: Data
    /// The message id, sent as the first header (`x-brokerkit-id`).
    let id: String
    /// Every other header, in the order they are sent (usually none: no array then).
    let headers: [(String, String)]
    let timestampMilliseconds: Int64

    init(topic: String, message: Message, extraHeaders: [String: String] = [:]) {
        self.topic = topic
        key = message.key.map(Data.init(utf8Of:)) ?? Data()
        hasKey = message.key != nil
        value = message.payload
        id = message.id
        var headers: [(String, String)] = []
        if !message.headers.isEmpty || !extraHeaders.isEmpty {
            headers.reserveCapacity(message.headers.count + extraHeaders.count)
            for (name, value) in message.headers.sorted(by: { $0.key < $1.key }) where extraHeaders[name] == nil {
                headers.append((name, value))
            }
            for (name, value) in extraHeaders.sorted(by: { $0.key < $1.key }) { headers.append((name, value)) }
        }
        self.headers = headers
        timestampMilliseconds = EpochMillis.of(message.timestamp)
    }

    func makeHeaders() -> OpaquePointer? {
        guard let list = rd_kafka_headers_new(1 + headers.count) else { return nil }
        Self.add(KafkaMessageMapping.idHeader, id, to: list)
        for (name, value) in headers { Self.add(name, value, to: list) }
        return list
    }

    private static func add(_ name: String, _ value: String, to list: OpaquePointer) {
        // Both passed with their sizes, as UTF-8 bytes (short strings are copied on the stack).
        // Handing the name to librdkafka as a C string instead built a heap-allocated C array of
        // it for every header (seen in a `perf` profile of batched produce).
        var name = name
        var value = value
        name.withUTF8 { nameBytes in
            value.withUTF8 { valueBytes in
                withUnsafeBytes(of: UInt8(0)) { empty in
                    // librdkafka copies both; empty ones still need non-null pointers.
                    let namePointer = nameBytes.baseAddress.map { UnsafeRawPointer($0) } ?? empty.baseAddress!
                    let valuePointer = valueBytes.baseAddress.map { UnsafeRawPointer($0) } ?? empty.baseAddress!
                    _ = rd_kafka_header_add(
                        list,
                        namePointer.assumingMemoryBound(to: CChar.self),
                        nameBytes.count,
                        valuePointer,
                        valueBytes.count
                    )
                }
            }
        }
    }
}

/// Gathers the delivery reports of one publish call.
///
/// Each record's librdkafka opaque points at its slot in one buffer per call, `(collector,
/// index, position)`, instead of at an object per record: the collector is retained once for
/// the whole call (released by its last report, or by ``abandon()`` for records never
/// enqueued).
///
/// A report writes its position into its own slot and counts down an atomic; only the last
/// one (and a failure) takes the lock, to hand the results to the waiting call. Taking the
/// lock for every report showed in a `perf` profile of batched produce.
final class BatchCollector: Sendable {
    private struct Handoff {
        var failure: BrokerError?
        var done = false
        var continuation: CheckedContinuation<[(Int32, Int64)], any Error>?
    }
    private struct Slot {
        let collector: Unmanaged<BatchCollector>
        let index: Int
        /// Written by the record's one report, read after the last report is in.
        var position: (Int32, Int64) = (-1, -1)
    }
    private let handoff = Mutex(Handoff())
    /// Reports still to come. Counted down with acquire-release ordering, so whoever takes it
    /// to zero sees every slot written before.
    private let left: Atomic<Int>
    /// Initialized by `init`; each slot's position is written by that record's report only.
    private nonisolated(unsafe) let slots: UnsafeMutablePointer<Slot>
    private let count: Int

    init(count: Int) {
        self.count = count
        left = Atomic(count)
        slots = .allocate(capacity: count)
        // Each outstanding record's report needs the collector alive: one retain for all of
        // them, dropped when the last report arrives.
        let retained = Unmanaged.passUnretained(self)
        for index in 0..<count { (slots + index).initialize(to: Slot(collector: retained, index: index)) }
        _ = Unmanaged.passRetained(self)
    }

    deinit {
        slots.deinitialize(count: count)
        slots.deallocate()
    }

    /// The opaque for record `index`.
    func slot(_ index: Int) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(slots + index) }

    /// Records the report for the record whose opaque is `opaque`.
    static func report(_ opaque: UnsafeMutableRawPointer, _ result: Result<(Int32, Int64), BrokerError>) {
        let slot = opaque.assumingMemoryBound(to: Slot.self)
        let collector = slot.pointee.collector.takeUnretainedValue()
        switch result {
        case .success(let position): slot.pointee.position = position
        case .failure(let error): collector.handoff.withLock { if $0.failure == nil { $0.failure = error } }
        }
        collector.countDown()
    }

    /// The records were never handed to librdkafka (the producer's thread is gone): no report
    /// will come, so the collector's own retain is dropped here.
    func abandon() {
        guard left.exchange(0, ordering: .acquiringAndReleasing) > 0 else { return }
        finish()
    }

    /// Waits until every record has its report; throws the first failure.
    func wait() async throws -> [(Int32, Int64)] {
        try await withCheckedThrowingContinuation { continuation in
            let done = handoff.withLock { h -> Bool in
                if h.done { return true }
                h.continuation = continuation
                return false
            }
            if done { continuation.resume(with: outcome()) }
        }
    }

    private func countDown() {
        if left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { finish() }
    }

    /// After the last report: wakes the waiting call, if it waits already, and drops the
    /// reports' retain.
    private func finish() {
        let waiting = handoff.withLock { h -> CheckedContinuation<[(Int32, Int64)], any Error>? in
            h.done = true
            defer { h.continuation = nil }
            return h.continuation
        }
        waiting?.resume(with: outcome())
        Unmanaged.passUnretained(self).release()
    }

    /// The positions in input order, or the first failure. Only once `done` is set.
    private func outcome() -> Result<[(Int32, Int64)], any Error> {
        if let failure = handoff.withLock({ $0.failure }) { return .failure(failure) }
        return .success((0..<count).map { slots[$0].position })
    }
}
