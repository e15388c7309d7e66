@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation

/// Reads fixed offset ranges (the DLQ backlog) with a short-lived consumer that is assigned
/// partitions directly: it joins no group and commits nothing. Runs on its own thread.
enum KafkaReader {
    static func read(
        ranges: [(TopicPartition, Int64, Int64)],
        limit: Int,
        broker: KafkaBroker
    ) async throws -> [KafkaRecord] {
        if ranges.isEmpty || limit <= 0 { return [] }
        let settings = broker.settings
        var properties = settings.consumerProperties
        properties["group.id"] = settings.clientID + ".reader"
        let callbacks = RdKafkaCallbacks(logger: broker.logger, role: "reader")
        let timeout = settings.operationTimeout
        let frozen = properties
        return try await RdKafka.offPool {
            let handle = try RdKafkaHandle(type: RD_KAFKA_CONSUMER, properties: frozen, callbacks: callbacks)
            defer { handle.destroy() }
            return try readBlocking(
                handle: handle,
                ranges: ranges,
                limit: limit,
                timeout: timeout,
                server: settings.server
            )
        }
    }

    private static func readBlocking(
        handle: RdKafkaHandle,
        ranges: [(TopicPartition, Int64, Int64)],
        limit: Int,
        timeout: Duration,
        server: String
    ) throws -> [KafkaRecord] {
        let rk = handle.rk
        let assignment = PartitionList(ranges.map { ($0.0, $0.1) })
        let err = rd_kafka_assign(rk, assignment.list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw RdKafka.brokerError(err, "cannot read \(ranges.map(\.0))", server: server)
        }
        defer { _ = rd_kafka_assign(rk, nil) }
        var ends: [TopicPartition: Int64] = [:]
        for (tp, _, end) in ranges { ends[tp] = end }
        var records: [KafkaRecord] = []
        let deadline = ContinuousClock.now + timeout
        while !ends.isEmpty && records.count < limit {
            guard ContinuousClock.now < deadline else {
                throw BrokerError(
                    .timeout,
                    "reading \(ends.keys.sorted { $0.description < $1.description }) did not finish within \(timeout) (kafka \(server))",
                    backend: "kafka"
                )
            }
            guard let message = rd_kafka_consumer_poll(rk, 100) else { continue }
            defer { rd_kafka_message_destroy(message) }
            if message.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR { continue }
            let record = KafkaRecord(message)
            guard let end = ends[record.topicPartition], record.offset < end else { continue }
            records.append(record)
            if record.offset + 1 >= end { ends.removeValue(forKey: record.topicPartition) }
        }
        return records.sorted { ($0.timestamp ?? .distantPast, $0.offset) < ($1.timestamp ?? .distantPast, $1.offset) }
    }
}
