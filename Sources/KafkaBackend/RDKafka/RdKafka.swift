@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation
import Logging
import Metrics
import Synchronization

/// Errors, configuration and callbacks shared by every librdkafka handle.
enum RdKafka {
    static func errorName(_ code: rd_kafka_resp_err_t) -> String { String(cString: rd_kafka_err2name(code)) }
    static func errorText(_ code: rd_kafka_resp_err_t) -> String { String(cString: rd_kafka_err2str(code)) }

    /// Maps a librdkafka error to a ``BrokerError`` naming `what` happened and where.
    static func brokerError(
        _ code: rd_kafka_resp_err_t,
        _ what: String,
        server: String,
        destination: String? = nil,
        detail: String? = nil
    ) -> BrokerError {
        let text = "\(what): \(detail ?? errorText(code)) (\(errorName(code)), kafka \(server))"
        let mapped: BrokerError.Code
        switch code {
        case RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__RESOLVE,
            RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
            mapped = .connectionFailed
        case RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
            mapped = .timeout
        case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
            RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
            mapped = .unknownDestination
        case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
            mapped = .messageTooLarge
        case RD_KAFKA_RESP_ERR__AUTHENTICATION, RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED,
            RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
            RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED, RD_KAFKA_RESP_ERR_ILLEGAL_SASL_STATE,
            RD_KAFKA_RESP_ERR_UNSUPPORTED_SASL_MECHANISM:
            mapped = .authenticationFailed
        case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
            mapped = .invalidDestination
        case RD_KAFKA_RESP_ERR__DESTROY:
            mapped = .closed
        case RD_KAFKA_RESP_ERR__INVALID_ARG, RD_KAFKA_RESP_ERR_INVALID_CONFIG, RD_KAFKA_RESP_ERR_INVALID_PARTITIONS,
            RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR:
            mapped = .invalidConfiguration
        default:
            mapped = .brokerError
        }
        return BrokerError(mapped, text, backend: "kafka", destination: destination)
    }

    /// Builds a `rd_kafka_conf_t`; an unknown or invalid property is an error naming it.
    static func makeConf(_ properties: [String: String]) throws -> OpaquePointer {
        guard let conf = rd_kafka_conf_new() else {
            throw BrokerError(.brokerError, "rd_kafka_conf_new failed", backend: "kafka")
        }
        var errstr = [CChar](repeating: 0, count: 512)
        for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
            let result = rd_kafka_conf_set(conf, key, value, &errstr, errstr.count)
            if result != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                let reason = RdKafka.cString(errstr)
                let shown = BrokerOption.looksSecret(key) ? "***" : "'\(value)'"
                throw BrokerError.invalidConfiguration(
                    "librdkafka property '\(key)' = \(shown) rejected: \(reason)",
                    backend: "kafka"
                )
            }
        }
        return conf
    }

    /// Runs `body` on a thread of its own: for librdkafka calls that take its locks or create
    /// threads (`rd_kafka_new`, `rd_kafka_destroy`), never on the cooperative pool.
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await DedicatedThread.run(name: "kafka-setup", body)
    }

    static func cString(_ buffer: [CChar]) -> String {
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func milliseconds(_ duration: Duration) -> Int32 {
        Int32(clamping: KafkaSettings.milliseconds(duration))
    }
}

/// What librdkafka's callbacks reach through the handle's opaque pointer: the logger, the
/// metrics, and (for consumers) the rebalance handler.
final class RdKafkaCallbacks: @unchecked Sendable {
    let logger: Logger
    let role: String
    /// Set once before the handle is created; called on the consumer's poll thread.
    var rebalance:
        ((OpaquePointer, rd_kafka_resp_err_t, UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) -> Void)?
    /// The last error reported by the error callback (connection problems show up here).
    let lastError = Mutex<(code: rd_kafka_resp_err_t, reason: String)?>(nil)
    let fatal = Mutex<String?>(nil)
    private let gauges: [String: Gauge]

    init(logger: Logger, role: String) {
        self.logger = logger
        self.role = role
        var gauges: [String: Gauge] = [:]
        for name in ["msg_cnt", "msg_size", "tx", "rx", "txmsgs", "rxmsgs", "replyq"] {
            gauges[name] = Gauge(label: "brokerkit_kafka_\(name)", dimensions: [("role", role)])
        }
        self.gauges = gauges
    }

    /// The consumer group's state in the last statistics (`cgrp`), for errors such as a join
    /// that never completes: "group state up, join state wait-join, 2 rebalance(s) so far
    /// (last reason: ...), 0 partition(s) assigned".
    let groupState = Mutex<String?>(nil)

    func recordStatistics(_ json: Data) {
        guard let object = try? JSONSerialization.jsonObject(with: json) as? [String: Any] else { return }
        if let group = object["cgrp"] as? [String: Any] {
            let state = group["state"] as? String ?? "?"
            let join = group["join_state"] as? String ?? "?"
            let count = (group["rebalance_cnt"] as? NSNumber)?.intValue ?? 0
            let reason = (group["rebalance_reason"] as? String).flatMap { $0.isEmpty ? nil : $0 }
            let assigned = (group["assignment_size"] as? NSNumber)?.intValue ?? 0
            var summary = "group state \(state), join state \(join), \(count) rebalance(s) so far"
            if let reason { summary += " (last reason: \(reason))" }
            summary += ", \(assigned) partition(s) assigned"
            groupState.withLock { $0 = summary }
        }
        for (name, gauge) in gauges {
            if let value = object[name] as? NSNumber { gauge.record(value.doubleValue) }
        }
    }

    /// Registers the C callbacks on `conf` and makes `self` its opaque pointer.
    func install(on conf: OpaquePointer) {
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(self).toOpaque())
        rd_kafka_conf_set_log_cb(conf) { rk, level, facility, buffer in
            guard let rk, let opaque = rd_kafka_opaque(rk) else { return }
            let callbacks = Unmanaged<RdKafkaCallbacks>.fromOpaque(opaque).takeUnretainedValue()
            let text = buffer.map { String(cString: $0) } ?? ""
            let fac = facility.map { String(cString: $0) } ?? ""
            let logLevel: Logger.Level
            switch level {
            case 0...3: logLevel = .error
            case 4: logLevel = .warning
            case 5, 6: logLevel = .info
            default: logLevel = .debug
            }
            callbacks.logger.log(
                level: logLevel,
                "librdkafka \(fac): \(text)",
                metadata: ["kafka.role": "\(callbacks.role)"]
            )
        }
        rd_kafka_conf_set_error_cb(conf) { rk, code, reason, opaque in
            guard let opaque else { return }
            let callbacks = Unmanaged<RdKafkaCallbacks>.fromOpaque(opaque).takeUnretainedValue()
            let text = reason.map { String(cString: $0) } ?? ""
            let err = rd_kafka_resp_err_t(rawValue: code)
            callbacks.lastError.withLock { $0 = (err, text) }
            if err == RD_KAFKA_RESP_ERR__FATAL, let rk {
                var buffer = [CChar](repeating: 0, count: 512)
                let original = rd_kafka_fatal_error(rk, &buffer, buffer.count)
                let message = "\(RdKafka.errorName(original)): \(RdKafka.cString(buffer))"
                callbacks.fatal.withLock { $0 = message }
                callbacks.logger.critical("librdkafka fatal error: \(message)")
            } else {
                callbacks.logger.debug("librdkafka error \(RdKafka.errorName(err)): \(text)")
            }
        }
        rd_kafka_conf_set_stats_cb(conf) { _, json, length, opaque in
            guard let opaque, let json else { return 0 }
            let callbacks = Unmanaged<RdKafkaCallbacks>.fromOpaque(opaque).takeUnretainedValue()
            callbacks.recordStatistics(Data(bytes: json, count: length))
            return 0
        }
    }
}

/// A `rd_kafka_t` of either kind, destroyed exactly once.
final class RdKafkaHandle: @unchecked Sendable {
    let rk: OpaquePointer
    let callbacks: RdKafkaCallbacks
    private let destroyed = Mutex(false)

    init(
        type: rd_kafka_type_t,
        properties: [String: String],
        callbacks: RdKafkaCallbacks,
        configure: (OpaquePointer) -> Void = { _ in }
    ) throws {
        let conf = try RdKafka.makeConf(properties)
        callbacks.install(on: conf)
        configure(conf)
        var errstr = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(type, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            throw BrokerError.invalidConfiguration(
                "librdkafka rejected the configuration: \(RdKafka.cString(errstr))",
                backend: "kafka"
            )
        }
        self.rk = rk
        self.callbacks = callbacks
    }

    /// Dropped without ``destroy()`` (its owner was dropped without being closed):
    /// `rd_kafka_destroy` blocks, so it runs on a thread of its own, which keeps the
    /// callbacks alive until librdkafka's last log line.
    deinit {
        guard !isDestroyed else { return }
        let doomed = Doomed(rk: rk, callbacks: callbacks)
        DedicatedThread.start(name: "kafka-destroy") {
            withExtendedLifetime(doomed.callbacks) { rd_kafka_destroy(doomed.rk) }
        }
    }

    /// A handle on its way to `rd_kafka_destroy`; nothing else touches it any more.
    private struct Doomed: @unchecked Sendable {
        let rk: OpaquePointer
        let callbacks: RdKafkaCallbacks
    }

    /// Destroys the handle (blocking: call it on a dedicated thread). Idempotent.
    func destroy() {
        let first = destroyed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        if first { rd_kafka_destroy(rk) }
    }

    var isDestroyed: Bool { destroyed.withLock { $0 } }

    /// A readable summary of the last connection-level error, for error messages.
    var lastErrorDetail: String? {
        callbacks.lastError.withLock { $0.map { "\(RdKafka.errorName($0.code)): \($0.reason)" } }
    }

    /// A connection-level error that does not heal by retrying, with librdkafka's reason:
    /// rejected credentials (SASL authentication failed) or a failed TLS handshake (a server
    /// certificate the CA does not vouch for, or one naming another host).
    enum PermanentFailure {
        case authentication(String)
        case tlsHandshake(String)
    }

    var permanentFailure: PermanentFailure? {
        callbacks.lastError.withLock { last in
            guard let last else { return nil }
            switch last.code {
            case RD_KAFKA_RESP_ERR__AUTHENTICATION, RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
                return .authentication(last.reason)
            // A certificate the client rejects stays rejected; other TLS errors (a reset
            // mid-handshake) may heal, and are retried until the connect timeout.
            case RD_KAFKA_RESP_ERR__SSL where last.reason.contains("certificate"): return .tlsHandshake(last.reason)
            default: return nil
            }
        }
    }
}

/// A topic-partition pair.
struct TopicPartition: Hashable, Sendable, CustomStringConvertible {
    let topic: String
    let partition: Int32
    var description: String { "\(topic)[\(partition)]" }
}

/// Owned `rd_kafka_topic_partition_list_t`, built from Swift values.
final class PartitionList {
    let list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>

    init(_ entries: [(TopicPartition, Int64)]) {
        list = rd_kafka_topic_partition_list_new(Int32(max(1, entries.count)))
        for (tp, offset) in entries {
            let element = rd_kafka_topic_partition_list_add(list, tp.topic, tp.partition)
            element?.pointee.offset = offset
        }
    }

    init(taking list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) { self.list = list }

    deinit { rd_kafka_topic_partition_list_destroy(list) }

    static func entries(
        of list: UnsafePointer<rd_kafka_topic_partition_list_t>
    ) -> [(TopicPartition, Int64, rd_kafka_resp_err_t)] {
        (0..<Int(list.pointee.cnt)).map { i in
            let element = list.pointee.elems[i]
            return (
                TopicPartition(topic: String(cString: element.topic), partition: element.partition), element.offset,
                element.err
            )
        }
    }

    var entries: [(TopicPartition, Int64, rd_kafka_resp_err_t)] { Self.entries(of: list) }
}

/// Topic names by librdkafka topic handle, for a consumer's poll thread: records come in
/// runs of one topic, so the last handle is compared first and the table is hashed only
/// when the topic changes. Clear it when topic handles may have been freed (a rebalance).
struct TopicNames {
    private var last: OpaquePointer?
    private var lastName = ""
    private var known: [OpaquePointer: String] = [:]

    mutating func name(of rkt: OpaquePointer) -> String {
        if rkt == last { return lastName }
        let name: String
        if let known = known[rkt] {
            name = known
        } else {
            name = String(cString: rd_kafka_topic_name(rkt))
            known[rkt] = name
        }
        last = rkt
        lastName = name
        return name
    }

    mutating func removeAll() {
        last = nil
        known = [:]
    }
}

/// Message fields of a consumed record, copied out of librdkafka's buffers. A class: a
/// record moves through the poll batch, the ready list and its settler, one retain a move.
final class KafkaRecord: Sendable {
    let topic: String
    let partition: Int32
    let offset: Int64
    let key: Data?
    let value: Data
    let headers: [(String, String)]
    let timestamp: Date?
    /// What makes the record unusable (a key or header that is not UTF-8, too many headers),
    /// or `nil`; the consumer dead-letters it with this reason (``Delivery/defect``).
    let defect: String?

    var topicPartition: TopicPartition { TopicPartition(topic: topic, partition: partition) }

    convenience init(_ message: UnsafePointer<rd_kafka_message_t>) {
        self.init(message, topic: message.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "")
    }

    /// `topic`: the record's topic name (the poll thread looks it up through ``TopicNames``).
    convenience init(_ message: UnsafePointer<rd_kafka_message_t>, topic: String) {
        let m = message.pointee
        var hdrs: OpaquePointer?
        if rd_kafka_message_headers(message, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR { hdrs = nil }
        var type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ms = rd_kafka_message_timestamp(message, &type)
        self.init(
            topic: topic,
            partition: m.partition,
            offset: m.offset,
            key: m.key.map { UnsafeRawBufferPointer(start: $0, count: m.key_len) },
            value: m.payload.map { UnsafeRawBufferPointer(start: $0, count: m.len) },
            headers: hdrs,
            timestampMillis: ms
        )
    }

    /// Decodes a record from its parts: `headers` is a librdkafka header list (read with
    /// `rd_kafka_header_get_all`), `timestampMillis` negative when there is none. Everything
    /// here came from the broker and is untrusted (the fuzz target `kafka` runs this).
    init(
        topic: String,
        partition: Int32,
        offset: Int64,
        key: UnsafeRawBufferPointer?,
        value: UnsafeRawBufferPointer?,
        headers hdrs: OpaquePointer?,
        timestampMillis ms: Int64
    ) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key.map { Data($0) }
        self.value = value.map { Data($0) } ?? Data()
        var defect: String?
        if let key, String(validating: key, as: UTF8.self) == nil {
            defect = "the key is not valid UTF-8"
        }
        var headers: [(String, String)] = []
        if let hdrs {
            var index = 0
            while true {
                var name: UnsafePointer<CChar>?
                var valuePointer: UnsafeRawPointer?
                var size = 0
                guard rd_kafka_header_get_all(hdrs, index, &name, &valuePointer, &size) == RD_KAFKA_RESP_ERR_NO_ERROR
                else { break }
                var text = ""
                if let valuePointer {
                    let bytes = UnsafeRawBufferPointer(start: valuePointer, count: size)
                    if let valid = String(validating: bytes, as: UTF8.self) {
                        text = valid
                    } else {
                        text = String(decoding: bytes, as: UTF8.self)
                        if defect == nil {
                            defect = "header '\(name.map { String(cString: $0) } ?? "")' is not valid UTF-8"
                        }
                    }
                }
                // Every BrokerKit record carries the id header: its name is not built anew.
                let headerName =
                    name.map { name in
                        let isID = KafkaMessageMapping.idHeaderCString.withUnsafeBufferPointer {
                            strcmp(name, $0.baseAddress!) == 0
                        }
                        return isID ? KafkaMessageMapping.idHeader : String(cString: name)
                    } ?? ""
                headers.append((headerName, text))
                index += 1
            }
        }
        if headers.count > PublishValidation.maxHeaderCount, defect == nil {
            defect = "\(headers.count) headers, more than \(PublishValidation.maxHeaderCount)"
        }
        self.headers = headers
        self.defect = defect
        timestamp = ms >= 0 ? Date(timeIntervalSince1970: TimeInterval(ms) / 1000) : nil
    }
}
