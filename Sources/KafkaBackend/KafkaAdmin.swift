@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation

/// Blocking librdkafka admin and metadata calls, run one at a time on a dedicated thread
/// (never on the cooperative pool) over a handle of its own.
final class KafkaAdmin: Sendable {
    let handle: RdKafkaHandle
    let settings: KafkaSettings
    let thread = ConnectionThread(name: "kafka-admin")

    init(handle: RdKafkaHandle, settings: KafkaSettings) {
        self.handle = handle
        self.settings = settings
    }

    func shutdown() { thread.shutdown() }

    private var timeoutMs: Int32 { RdKafka.milliseconds(settings.operationTimeout) }

    // MARK: - Metadata

    struct TopicMetadata: Sendable {
        let name: String
        let partitions: Int
        let error: rd_kafka_resp_err_t
    }

    /// Topics known to the cluster (all of them, or just `topic`).
    func metadata(topic: String? = nil, timeout: Duration? = nil) async throws -> [TopicMetadata] {
        let handle = self.handle
        let ms = timeout.map(RdKafka.milliseconds) ?? timeoutMs
        let server = settings.server
        return try await thread.run {
            let rk = handle.rk
            var md: UnsafePointer<rd_kafka_metadata>?
            var rkt: OpaquePointer?
            if let topic { rkt = rd_kafka_topic_new(rk, topic, nil) }
            defer { if let rkt { rd_kafka_topic_destroy(rkt) } }
            let err = rd_kafka_metadata(rk, topic == nil ? 1 : 0, rkt, &md, ms)
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let md else {
                throw RdKafka.brokerError(
                    err,
                    "cannot reach the Kafka cluster",
                    server: server,
                    detail: handle.lastErrorDetail.map { "\(RdKafka.errorText(err)); last error \($0)" }
                )
            }
            defer { rd_kafka_metadata_destroy(md) }
            return (0..<Int(md.pointee.topic_cnt)).map { i in
                let t = md.pointee.topics[i]
                return TopicMetadata(name: String(cString: t.topic), partitions: Int(t.partition_cnt), error: t.err)
            }
        }
    }

    /// Partition count of `topic`, or nil when it does not exist.
    func partitions(of topic: String) async throws -> Int? {
        // Asking for one topic by name is cheaper, but would create it when the producer
        // allows auto-creation (topic.creation=auto).
        let topics = settings.autoTopicCreation ? try await metadata() : try await metadata(topic: topic)
        let found = topics.first { $0.name == topic }
        guard let found, found.error == RD_KAFKA_RESP_ERR_NO_ERROR, found.partitions > 0 else { return nil }
        return found.partitions
    }

    /// Asks for `topic`'s metadata by name, which makes a broker with
    /// `auto.create.topics.enable` create it (the producer allows auto-creation in this mode).
    func touch(_ topic: String) async throws {
        _ = try await metadata(topic: topic)
    }

    // MARK: - Topics

    struct NewTopic: Sendable {
        let name: String
        let partitions: Int
        let replication: Int
        let configs: [String: String]
    }

    /// Creates topics; ones that already exist are fine. Other errors name the topic.
    func createTopics(_ topics: [NewTopic], destination: String) async throws {
        if topics.isEmpty { return }
        let handle = self.handle
        let ms = timeoutMs
        let server = settings.server
        try await thread.run {
            let rk = handle.rk
            var errstr = [CChar](repeating: 0, count: 512)
            var newTopics: [OpaquePointer?] = []
            defer { for t in newTopics { rd_kafka_NewTopic_destroy(t) } }
            for topic in topics {
                guard
                    let nt = rd_kafka_NewTopic_new(
                        topic.name,
                        Int32(topic.partitions),
                        Int32(topic.replication),
                        &errstr,
                        errstr.count
                    )
                else {
                    throw BrokerError(
                        .invalidConfiguration,
                        "cannot create topic '\(topic.name)': \(RdKafka.cString(errstr))",
                        backend: "kafka",
                        destination: destination
                    )
                }
                newTopics.append(nt)
                for (key, value) in topic.configs.sorted(by: { $0.key < $1.key }) {
                    _ = rd_kafka_NewTopic_set_config(nt, key, value)
                }
            }
            let results: [(String, rd_kafka_resp_err_t, String?)] = try Self.runAdmin(
                rk,
                timeoutMs: ms,
                server: server,
                what: "CreateTopics",
                destination: destination
            ) { options, queue in
                newTopics.withUnsafeMutableBufferPointer { buffer in
                    rd_kafka_CreateTopics(rk, buffer.baseAddress, buffer.count, options, queue)
                }
            } extract: { event in
                var count = 0
                guard let result = rd_kafka_event_CreateTopics_result(event),
                    let list = rd_kafka_CreateTopics_result_topics(result, &count)
                else { return [] }
                return Self.topicResults(list, count)
            }
            for (name, err, text) in results
            where err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS {
                throw RdKafka.brokerError(
                    err,
                    "cannot create topic '\(name)'",
                    server: server,
                    destination: destination,
                    detail: text
                )
            }
        }
    }

    /// Deletes topics; missing ones are fine.
    func deleteTopics(_ names: [String], destination: String) async throws {
        if names.isEmpty { return }
        let handle = self.handle
        let ms = timeoutMs
        let server = settings.server
        try await thread.run {
            let rk = handle.rk
            var deletes: [OpaquePointer?] = names.map { rd_kafka_DeleteTopic_new($0) }
            defer { for d in deletes { rd_kafka_DeleteTopic_destroy(d) } }
            let results: [(String, rd_kafka_resp_err_t, String?)] = try Self.runAdmin(
                rk,
                timeoutMs: ms,
                server: server,
                what: "DeleteTopics",
                destination: destination
            ) { options, queue in
                deletes.withUnsafeMutableBufferPointer { buffer in
                    rd_kafka_DeleteTopics(rk, buffer.baseAddress, buffer.count, options, queue)
                }
            } extract: { event in
                var count = 0
                guard let result = rd_kafka_event_DeleteTopics_result(event),
                    let list = rd_kafka_DeleteTopics_result_topics(result, &count)
                else { return [] }
                return Self.topicResults(list, count)
            }
            for (name, err, text) in results
            where err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
                throw RdKafka.brokerError(
                    err,
                    "cannot delete topic '\(name)'",
                    server: server,
                    destination: destination,
                    detail: text
                )
            }
        }
    }

    private static func topicResults(
        _ list: UnsafeMutablePointer<OpaquePointer?>,
        _ count: Int
    ) -> [(String, rd_kafka_resp_err_t, String?)] {
        (0..<count).compactMap { i in
            guard let r = list[i] else { return nil }
            return (
                String(cString: rd_kafka_topic_result_name(r)), rd_kafka_topic_result_error(r),
                rd_kafka_topic_result_error_string(r).map { String(cString: $0) }
            )
        }
    }

    /// Runs one admin request and waits for its result event on a private queue.
    private static func runAdmin<T>(
        _ rk: OpaquePointer,
        timeoutMs: Int32,
        server: String,
        what: String,
        destination: String?,
        call: (OpaquePointer?, OpaquePointer?) -> Void,
        extract: (OpaquePointer) throws -> T
    ) throws -> T {
        guard let queue = rd_kafka_queue_new(rk) else {
            throw BrokerError(.brokerError, "rd_kafka_queue_new failed", backend: "kafka")
        }
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY)
        defer { rd_kafka_AdminOptions_destroy(options) }
        var errstr = [CChar](repeating: 0, count: 256)
        _ = rd_kafka_AdminOptions_set_request_timeout(options, timeoutMs, &errstr, errstr.count)
        call(options, queue)
        guard let event = rd_kafka_queue_poll(queue, timeoutMs + 1000) else {
            throw BrokerError(
                .timeout,
                "\(what) got no answer within \(timeoutMs) ms (kafka \(server))",
                backend: "kafka",
                destination: destination
            )
        }
        defer { rd_kafka_event_destroy(event) }
        let err = rd_kafka_event_error(event)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            let text = rd_kafka_event_error_string(event).map { String(cString: $0) }
            throw RdKafka.brokerError(err, "\(what) failed", server: server, destination: destination, detail: text)
        }
        return try extract(event)
    }

    // MARK: - Offsets

    /// Low and high watermark of each partition of `topic` (partitions 0..<count).
    func watermarks(topic: String, partitions: Int) async throws -> [(low: Int64, high: Int64)] {
        let handle = self.handle
        let ms = timeoutMs
        let server = settings.server
        return try await thread.run {
            let rk = handle.rk
            return try (0..<partitions).map { p in
                var low: Int64 = 0
                var high: Int64 = 0
                let err = rd_kafka_query_watermark_offsets(rk, topic, Int32(p), &low, &high, ms)
                guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                    throw RdKafka.brokerError(
                        err,
                        "cannot read the offsets of '\(topic)' partition \(p)",
                        server: server,
                        destination: topic
                    )
                }
                return (low, high)
            }
        }
    }

    /// Committed offsets of `group` for the given partitions (nil: nothing committed).
    func committed(group: String, partitions: [TopicPartition]) async throws -> [TopicPartition: Int64] {
        if partitions.isEmpty { return [:] }
        let handle = self.handle
        let ms = timeoutMs
        let server = settings.server
        return try await thread.run {
            let rk = handle.rk
            let request = PartitionList(partitions.map { ($0, Int64(-1001)) })
            var ops: [OpaquePointer?] = [rd_kafka_ListConsumerGroupOffsets_new(group, request.list)]
            defer { for op in ops { rd_kafka_ListConsumerGroupOffsets_destroy(op) } }
            return try Self.runAdmin(
                rk,
                timeoutMs: ms,
                server: server,
                what: "ListConsumerGroupOffsets(\(group))",
                destination: nil
            ) { options, queue in
                ops.withUnsafeMutableBufferPointer { buffer in
                    rd_kafka_ListConsumerGroupOffsets(rk, buffer.baseAddress, buffer.count, options, queue)
                }
            } extract: { event in
                var count = 0
                guard let result = rd_kafka_event_ListConsumerGroupOffsets_result(event),
                    let groups = rd_kafka_ListConsumerGroupOffsets_result_groups(result, &count), count > 0,
                    let first = groups[0]
                else { return [:] }
                if let error = rd_kafka_group_result_error(first) {
                    throw RdKafka.brokerError(
                        rd_kafka_error_code(error),
                        "cannot read the offsets of group '\(group)'",
                        server: server,
                        detail: String(cString: rd_kafka_error_string(error))
                    )
                }
                guard let list = rd_kafka_group_result_partitions(first) else { return [:] }
                return Self.committedOffsets(list)
            }
        }
    }

    /// Committed offsets of many groups at once (requests in parallel on one queue).
    func committed(groups: [String], partitions: [TopicPartition]) async throws -> [String: [TopicPartition: Int64]] {
        if groups.isEmpty || partitions.isEmpty { return [:] }
        let handle = self.handle
        let ms = timeoutMs
        return try await thread.run {
            let rk = handle.rk
            guard let queue = rd_kafka_queue_new(rk) else {
                throw BrokerError(.brokerError, "rd_kafka_queue_new failed", backend: "kafka")
            }
            defer { rd_kafka_queue_destroy(queue) }
            let options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY)
            defer { rd_kafka_AdminOptions_destroy(options) }
            let request = PartitionList(partitions.map { ($0, Int64(-1001)) })
            for group in groups {
                var ops: [OpaquePointer?] = [rd_kafka_ListConsumerGroupOffsets_new(group, request.list)]
                ops.withUnsafeMutableBufferPointer { buffer in
                    rd_kafka_ListConsumerGroupOffsets(rk, buffer.baseAddress, buffer.count, options, queue)
                }
                rd_kafka_ListConsumerGroupOffsets_destroy(ops[0])
            }
            var found: [String: [TopicPartition: Int64]] = [:]
            for _ in groups {
                guard let event = rd_kafka_queue_poll(queue, ms + 1000) else { break }
                defer { rd_kafka_event_destroy(event) }
                var count = 0
                guard rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR_NO_ERROR,
                    let result = rd_kafka_event_ListConsumerGroupOffsets_result(event),
                    let list = rd_kafka_ListConsumerGroupOffsets_result_groups(result, &count), count > 0,
                    let first = list[0],
                    rd_kafka_group_result_error(first) == nil, let parts = rd_kafka_group_result_partitions(first)
                else { continue }
                found[String(cString: rd_kafka_group_result_name(first))] = Self.committedOffsets(parts)
            }
            return found
        }
    }

    /// The committed offsets in a group result (partitions without one left out).
    private static func committedOffsets(
        _ list: UnsafePointer<rd_kafka_topic_partition_list_t>
    ) -> [TopicPartition: Int64] {
        var offsets: [TopicPartition: Int64] = [:]
        for (tp, offset, err) in PartitionList.entries(of: list) where err == RD_KAFKA_RESP_ERR_NO_ERROR && offset >= 0
        {
            offsets[tp] = offset
        }
        return offsets
    }

    /// Sets `group`'s committed offsets (the group must have no active members).
    func commit(group: String, offsets: [TopicPartition: Int64]) async throws {
        if offsets.isEmpty { return }
        let handle = self.handle
        let ms = timeoutMs
        let server = settings.server
        try await thread.run {
            let rk = handle.rk
            let list = PartitionList(offsets.map { ($0.key, $0.value) })
            var ops: [OpaquePointer?] = [rd_kafka_AlterConsumerGroupOffsets_new(group, list.list)]
            defer { for op in ops { rd_kafka_AlterConsumerGroupOffsets_destroy(op) } }
            _ = try Self.runAdmin(
                rk,
                timeoutMs: ms,
                server: server,
                what: "AlterConsumerGroupOffsets(\(group))",
                destination: nil
            ) { options, queue in
                ops.withUnsafeMutableBufferPointer { buffer in
                    rd_kafka_AlterConsumerGroupOffsets(rk, buffer.baseAddress, buffer.count, options, queue)
                }
            } extract: { event in
                var count = 0
                guard let result = rd_kafka_event_AlterConsumerGroupOffsets_result(event),
                    let groups = rd_kafka_AlterConsumerGroupOffsets_result_groups(result, &count), count > 0,
                    let first = groups[0]
                else { return }
                if let error = rd_kafka_group_result_error(first) {
                    throw RdKafka.brokerError(
                        rd_kafka_error_code(error),
                        "cannot commit offsets of group '\(group)'",
                        server: server,
                        detail: String(cString: rd_kafka_error_string(error))
                    )
                }
                if let list = rd_kafka_group_result_partitions(first) {
                    for (tp, _, err) in PartitionList.entries(of: list) where err != RD_KAFKA_RESP_ERR_NO_ERROR {
                        throw RdKafka.brokerError(err, "cannot commit \(tp) for group '\(group)'", server: server)
                    }
                }
            }
        }
    }

    /// Every consumer group id on the cluster.
    func groups() async throws -> [String] {
        let handle = self.handle
        let ms = timeoutMs
        let server = settings.server
        return try await thread.run {
            let rk = handle.rk
            return try Self.runAdmin(rk, timeoutMs: ms, server: server, what: "ListConsumerGroups", destination: nil) {
                options,
                queue in
                rd_kafka_ListConsumerGroups(rk, options, queue)
            } extract: { event in
                var count = 0
                guard let result = rd_kafka_event_ListConsumerGroups_result(event),
                    let valid = rd_kafka_ListConsumerGroups_result_valid(result, &count)
                else { return [] }
                return (0..<count).compactMap { i in
                    valid[i].map { String(cString: rd_kafka_ConsumerGroupListing_group_id($0)) }
                }
            }
        }
    }
}
