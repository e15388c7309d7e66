@_spi(BrokerBackend) import BrokerAPI
import CRdKafka
import Foundation
import Logging
import Synchronization

/// A connection to a Kafka cluster serving BrokerKit queues and streams (see ``KafkaBackend``).
///
/// Topics, for a destination `name` (after the `prefix` option; `:` becomes `.`):
/// - `name` — the topic (queues and streams)
/// - `name.dlq` — dead letters; the group `name.dlq.replayed` marks how far they were replayed
/// - queues only: `name.delay` (publish with `deliverAt`) and `name.retry.1` … `name.retry.N`
///   (non-blocking retries), all read by the queue's group `name.workers` (or `group.id`)
/// A destination is a queue when its `.delay` topic exists, else a stream.
final class KafkaBroker: BrokerDriver {
    let configuration: BrokerConfiguration
    let settings: KafkaSettings
    /// The current producer; replaced when librdkafka declares it fatally broken.
    private let producerBox: Mutex<KafkaPublisher>
    /// The producer the broker started with (its callbacks explain connect failures).
    private let firstProducer: KafkaPublisher
    let admin: KafkaAdmin
    let logger: Logger
    let observer = DeliveryObserver.shared(for: "kafka")
    private let state = Mutex<
        (
            closed: Bool, kinds: [String: DestinationKind], dlqs: Set<String>,
            consumers: [ObjectIdentifier: KafkaConsumer], groupsSeen: Set<String>
        )
    >((false, [:], [], [:], []))

    var backendName: String { "kafka" }
    var capabilities: BrokerCapabilities { KafkaBackend.capabilities }

    private init(
        configuration: BrokerConfiguration,
        settings: KafkaSettings,
        producer: KafkaPublisher,
        adminHandle: RdKafkaHandle,
        logger: Logger
    ) {
        self.configuration = configuration
        self.settings = settings
        self.producerBox = Mutex(producer)
        self.firstProducer = producer
        self.admin = KafkaAdmin(handle: adminHandle, settings: settings)
        self.logger = logger
    }

    static func connect(configuration: BrokerConfiguration, logger: Logger) async throws -> KafkaBroker {
        let settings = try KafkaSettings(configuration)
        let producer = try await RdKafka.offPool { try KafkaPublisher(settings: settings, logger: logger) }
        // Admin and metadata calls get a handle of their own, so a producer replaced after a
        // fatal error never takes them down with it.
        var adminProperties = settings.common
        adminProperties.removeValue(forKey: "statistics.interval.ms")
        // Metadata requests by name must not create topics, unless that is the chosen way.
        adminProperties["allow.auto.create.topics"] = settings.autoTopicCreation ? "true" : "false"
        let frozenAdmin = adminProperties
        let adminHandle: RdKafkaHandle
        do {
            adminHandle = try await RdKafka.offPool {
                try RdKafkaHandle(
                    type: RD_KAFKA_PRODUCER,
                    properties: frozenAdmin,
                    callbacks: RdKafkaCallbacks(logger: logger, role: "admin")
                )
            }
        } catch {
            await producer.close(timeout: .seconds(1))
            throw error
        }
        let broker = KafkaBroker(
            configuration: configuration,
            settings: settings,
            producer: producer,
            adminHandle: adminHandle,
            logger: logger
        )
        // One metadata round trip proves the cluster answers (and the credentials work). It
        // is asked in short slices so that rejected credentials and failed TLS handshakes,
        // which librdkafka only reports through its error callback while it keeps retrying,
        // fail at once instead of after the whole connect timeout.
        let deadline = ContinuousClock.now + settings.connectTimeout
        while true {
            let slice = min(max(deadline - ContinuousClock.now, .milliseconds(1)), .milliseconds(500))
            let asked = ContinuousClock.now
            do {
                _ = try await broker.admin.metadata(topic: nil, timeout: slice)
                return broker
            } catch let error as BrokerError {
                switch adminHandle.permanentFailure ?? producer.handle.permanentFailure {
                case .authentication(let reason):
                    await broker.close()
                    let user = settings.common["sasl.username"].map { "user '\($0)'" } ?? "the client"
                    let mechanism = settings.common["sasl.mechanism"] ?? "SASL"
                    throw BrokerError(
                        .authenticationFailed,
                        "kafka \(settings.server) rejected the credentials of \(user) (\(mechanism)): \(reason)",
                        backend: "kafka"
                    )
                case .tlsHandshake(let reason):
                    await broker.close()
                    throw BrokerError(
                        .connectionFailed,
                        "TLS handshake with kafka \(settings.server) failed (check ssl.ca.location, ssl.certificate.location and ssl.key.location): \(reason)",
                        backend: "kafka"
                    )
                case nil:
                    break
                }
                if ContinuousClock.now < deadline {
                    // An immediate failure (connection refused): pause rather than spin.
                    if ContinuousClock.now - asked < .milliseconds(100) {
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                    continue
                }
                await broker.close()
                var code = error.code
                if code == .timeout || code == .brokerError { code = .connectionFailed }
                // The metadata call's error is generic (transport failure) and names the admin
                // handle's last error only; the producer's may say why (refused, TLS alert).
                let last =
                    adminHandle.lastErrorDetail == nil
                    ? producer.handle.lastErrorDetail.map { "; last error \($0)" } ?? "" : ""
                throw BrokerError(
                    code,
                    "cannot connect to kafka \(settings.server) within \(settings.connectTimeout): \(error.message)\(last)",
                    backend: "kafka"
                )
            }
        }
    }

    // MARK: - Names and kinds

    func checkOpen(_ destination: String? = nil) throws {
        if state.withLock({ $0.closed }) {
            throw BrokerError.closed("kafka broker \(settings.server)", backend: backendName, destination: destination)
        }
    }

    func validate(_ destination: String) throws {
        try checkOpen(destination)
    }

    /// The kind of an existing destination (a queue has a `.delay` topic), nil if its topic
    /// does not exist.
    private func existingKind(of destination: String) async throws -> DestinationKind? {
        guard try await admin.partitions(of: settings.topic(destination)) != nil else { return nil }
        return try await admin.partitions(of: settings.delayTopic(destination)) != nil ? .queue : .stream
    }

    func kind(of destination: String, for use: DestinationUse) async throws -> DestinationKind? {
        try validate(destination)
        return try await kind(of: destination, createAs: use.createdKind)
    }

    /// The kind of `destination`, creating it as `createAs` when missing and auto-create is on.
    func kind(of destination: String, createAs: DestinationKind?) async throws -> DestinationKind {
        if let known = state.withLock({ $0.kinds[destination] }) { return known }
        let topic = settings.topic(destination)
        if let kind = try await existingKind(of: destination) {
            state.withLock { $0.kinds[destination] = kind }
            return kind
        }
        guard let createAs, settings.autoCreate else {
            throw BrokerError(
                .unknownDestination,
                "topic '\(topic)' does not exist on kafka \(settings.server) and auto.create is off",
                backend: backendName,
                destination: destination
            )
        }
        try await create(destination, kind: createAs, options: DestinationOptions())
        return createAs
    }

    private func topicConfigs(_ options: DestinationOptions, kind: DestinationKind) -> [String: String] {
        var configs: [String: String] = ["max.message.bytes": settings.common["message.max.bytes"] ?? "1048588"]
        if kind == .stream, let retention = options.retention {
            if let age = retention.maxAge { configs["retention.ms"] = String(KafkaSettings.milliseconds(age)) }
            if let bytes = retention.maxBytes { configs["retention.bytes"] = String(bytes) }
        }
        for (key, value) in options.backendSettings { configs[key] = value }
        return configs
    }

    private func create(_ destination: String, kind: DestinationKind, options: DestinationOptions) async throws {
        let partitions = options.partitions ?? settings.defaultPartitions
        let replication = options.replicationFactor ?? settings.defaultReplication
        var topics = [
            KafkaAdmin.NewTopic(
                name: settings.topic(destination),
                partitions: partitions,
                replication: replication,
                configs: topicConfigs(options, kind: kind)
            )
        ]
        let companionConfigs = ["max.message.bytes": settings.common["message.max.bytes"] ?? "1048588"]
        if kind == .queue {
            for name in [settings.delayTopic(destination)] + settings.retryTopics(destination) {
                topics.append(.init(name: name, partitions: 1, replication: replication, configs: companionConfigs))
            }
        }
        topics.append(
            .init(
                name: settings.dlqTopic(destination),
                partitions: 1,
                replication: replication,
                configs: companionConfigs
            )
        )
        if settings.autoTopicCreation {
            for topic in topics { try await admin.touch(topic.name) }
        } else {
            try await admin.createTopics(topics, destination: destination)
        }
        // Topic creation propagates asynchronously: wait until metadata shows every topic.
        let deadline = ContinuousClock.now + settings.operationTimeout
        for topic in topics {
            while try await admin.partitions(of: topic.name) == nil {
                guard ContinuousClock.now < deadline else {
                    throw BrokerError(
                        .timeout,
                        "topic '\(topic.name)' was created but never appeared in the metadata",
                        backend: backendName,
                        destination: destination
                    )
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        state.withLock { s in
            s.kinds[destination] = kind
            s.dlqs.insert(destination)
        }
    }

    /// Makes sure the destination's DLQ topic exists (e.g. for topics created by other tools).
    func ensureDLQ(_ destination: String) async throws {
        if state.withLock({ $0.dlqs.contains(destination) }) { return }
        let dlq = settings.dlqTopic(destination)
        if try await admin.partitions(of: dlq) == nil {
            if settings.autoTopicCreation {
                try await admin.touch(dlq)
            } else {
                try await admin.createTopics(
                    [.init(name: dlq, partitions: 1, replication: settings.defaultReplication, configs: [:])],
                    destination: destination
                )
            }
            while try await admin.partitions(of: dlq) == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        state.withLock { _ = $0.dlqs.insert(destination) }
    }

    // MARK: - Publishing

    /// The producer to use. After a fatal error (e.g. the idempotent producer's sequence
    /// numbers no longer match the broker's), librdkafka requires a new producer: it is
    /// created here, and the broken one is closed in the background. Records that were in
    /// flight on the broken one failed with an error their callers saw.
    func activeProducer() async throws -> KafkaPublisher {
        let current = producerBox.withLock { $0 }
        guard let fatal = current.fatalError else { return current }
        try checkOpen()
        let settings = self.settings
        let logger = self.logger
        let fresh = try await RdKafka.offPool { try KafkaPublisher(settings: settings, logger: logger) }
        let (winner, replaced) = producerBox.withLock { box -> (KafkaPublisher, Bool) in
            if box === current {
                box = fresh
                return (fresh, true)
            }
            return (box, false)
        }
        if replaced {
            logger.warning("kafka producer replaced after a fatal error: \(fatal)")
            Task { await current.close(timeout: .seconds(5)) }
        } else {
            Task { await fresh.close(timeout: .seconds(1)) }
        }
        return winner
    }

    func publish(
        checked prepared: [Message],
        to destination: String,
        kind: DestinationKind?,
        options: PublishOptions
    ) async throws -> [PublishReceipt] {
        try validate(destination)
        var topic = settings.topic(destination)
        var extra: [String: String] = [:]
        var delayed = false
        if let deliverAt = options.deliverAt, deliverAt > Date() {
            topic = settings.delayTopic(destination)
            extra[HeaderName.deliverAt] = ISO8601.format(deliverAt)
            delayed = true
        }
        let records = prepared.indices.map { OutgoingRecord(topic: topic, message: prepared[$0], extraHeaders: extra) }
        let positions: [(Int32, Int64)]
        do {
            positions = try await activeProducer().produce(records, destination: destination)
        } catch let error as BrokerError where error.code == .messageTooLarge {
            throw BrokerError(
                .messageTooLarge,
                "\(error.message) (message ids \(prepared.map(\.id).joined(separator: ", ")))",
                backend: backendName,
                destination: destination
            )
        }
        // By index: zipping the two arrays copied every message just to read its id.
        return prepared.indices.map { index in
            PublishReceipt(
                messageID: prepared[index].id,
                destination: destination,
                position: delayed ? nil : Position(partition: Int(positions[index].0), offset: positions[index].1)
            )
        }
    }

    // MARK: - Consumers

    func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        try validate(queue)
        return try await start(
            RdKafka.offPool { try KafkaConsumer(broker: self, destination: queue, mode: .queue(options)) }
        )
    }

    func openStreamConsumer(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer {
        try validate(stream)
        return try await start(
            RdKafka.offPool {
                try KafkaConsumer(broker: self, destination: stream, mode: .stream(group: group, options))
            }
        )
    }

    private func start(_ consumer: KafkaConsumer) async throws -> KafkaConsumer {
        state.withLock { s in
            s.consumers[ObjectIdentifier(consumer)] = consumer
            s.groupsSeen.insert(consumer.groupID)
        }
        do {
            try await consumer.start()
        } catch {
            untrack(consumer)
            throw error
        }
        return consumer
    }

    func untrack(_ consumer: KafkaConsumer) {
        state.withLock { _ = $0.consumers.removeValue(forKey: ObjectIdentifier(consumer)) }
    }

    private func localConsumers(of destination: String) -> [KafkaConsumer] {
        state.withLock { s in s.consumers.values.filter { $0.destination == destination } }
    }

    // MARK: - Admin

    func createDestination(_ name: String, kind: DestinationKind, options: DestinationOptions) async throws {
        try validate(name)
        if let existing = try await existingKind(of: name) {
            guard existing == kind else {
                throw BrokerError(
                    .wrongDestinationKind,
                    "'\(name)' already exists as a \(existing), cannot create it as a \(kind)",
                    backend: backendName,
                    destination: name
                )
            }
            if kind == .queue {
                // Make sure every companion topic exists (topics created by older versions or by hand).
                try await create(name, kind: kind, options: options)
            }
            state.withLock { $0.kinds[name] = existing }
            return
        }
        try await create(name, kind: kind, options: options)
    }

    func deleteDestination(_ name: String) async throws {
        try validate(name)
        let topic = settings.topic(name)
        let names = [topic, settings.dlqTopic(name), settings.delayTopic(name)] + settings.retryTopics(name)
        let existing = Set(try await admin.metadata().map(\.name))
        try await admin.deleteTopics(names.filter(existing.contains), destination: name)
        state.withLock { s in
            s.kinds.removeValue(forKey: name)
            s.dlqs.remove(name)
        }
    }

    func listDestinations() async throws -> [DestinationInfo] {
        try checkOpen()
        let topics = try await admin.metadata()
        let names = Set(topics.map(\.name))
        let prefix = settings.topic("")
        return topics.compactMap { topic -> DestinationInfo? in
            guard topic.name.hasPrefix(prefix), !topic.name.hasPrefix("__"), !KafkaSettings.isCompanion(topic.name)
            else { return nil }
            let kind: DestinationKind = names.contains(topic.name + ".delay") ? .queue : .stream
            return DestinationInfo(
                name: String(topic.name.dropFirst(prefix.count)),
                kind: kind,
                partitions: topic.partitions
            )
        }.sorted { $0.name < $1.name }
    }

    /// Lag of `group` on `topic`: high watermark − committed offset (low watermark when none).
    private func lag(
        topic: String,
        partitions: Int,
        committed: [TopicPartition: Int64],
        marks: [(low: Int64, high: Int64)]
    ) -> Int {
        var total: Int64 = 0
        for p in 0..<partitions {
            let mark = marks[p]
            let from = max(committed[TopicPartition(topic: topic, partition: Int32(p))] ?? mark.low, mark.low)
            total += max(0, mark.high - from)
        }
        return Int(total)
    }

    func stats(for destination: String) async throws -> DestinationStats {
        try validate(destination)
        let topic = settings.topic(destination)
        guard let partitions = try await admin.partitions(of: topic) else {
            throw BrokerError(
                .unknownDestination,
                "topic '\(topic)' does not exist on kafka \(settings.server)",
                backend: backendName,
                destination: destination
            )
        }
        let kind = try await kind(of: destination, createAs: nil)
        let marks = try await admin.watermarks(topic: topic, partitions: partitions)
        let deadLettered = try await dlqBacklog(destination).count
        let local = localConsumers(of: destination)
        if kind == .queue {
            let group = settings.queueGroup(destination)
            let companions = [settings.delayTopic(destination)] + settings.retryTopics(destination)
            var tps = (0..<partitions).map { TopicPartition(topic: topic, partition: Int32($0)) }
            var companionParts: [(String, Int)] = []
            for name in companions {
                let count = try await admin.partitions(of: name) ?? 0
                companionParts.append((name, count))
                tps += (0..<count).map { TopicPartition(topic: name, partition: Int32($0)) }
            }
            let committed = try await admin.committed(group: group, partitions: tps)
            let mainLag = lag(topic: topic, partitions: partitions, committed: committed, marks: marks)
            var delayed = 0
            for (name, count) in companionParts where count > 0 {
                let companionMarks = try await admin.watermarks(topic: name, partitions: count)
                delayed += lag(topic: name, partitions: count, committed: committed, marks: companionMarks)
            }
            let inFlight = local.reduce(0) { $0 + $1.unsettled }
            let positions = (0..<partitions).compactMap { p -> Position? in
                committed[TopicPartition(topic: topic, partition: Int32(p))].map { Position(partition: p, offset: $0) }
            }
            return DestinationStats(
                name: destination,
                kind: .queue,
                depth: max(0, mainLag - inFlight),
                inFlight: inFlight,
                delayed: max(0, delayed),
                deadLettered: deadLettered,
                groups: [
                    GroupStats(
                        group: group,
                        lag: mainLag,
                        pending: inFlight,
                        consumers: local.count,
                        committed: positions
                    )
                ]
            )
        }
        let depth = Int(marks.reduce(Int64(0)) { $0 + max(0, $1.high - $1.low) })
        let tps = (0..<partitions).map { TopicPartition(topic: topic, partition: Int32($0)) }
        let groupPrefix = settings.streamGroupPrefix(destination)
        // Groups the cluster lists, plus the ones this client used (brokers without ListGroups).
        var listed = Set(state.withLock { $0.groupsSeen })
        do {
            listed.formUnion(try await admin.groups())
        } catch {
            logger.debug("ListConsumerGroups failed (\(error)); stats show the groups this client used")
        }
        let candidates = listed.filter { $0.hasPrefix(groupPrefix) }.sorted()
        let offsets = try await admin.committed(groups: candidates, partitions: tps)
        var groups: [GroupStats] = []
        for (groupID, committed) in offsets.sorted(by: { $0.key < $1.key }) where !committed.isEmpty {
            let name = String(groupID.dropFirst(groupPrefix.count))
            let members = local.filter { $0.groupID == groupID }
            let positions = committed.sorted { $0.key.partition < $1.key.partition }.map {
                Position(partition: Int($0.key.partition), offset: $0.value)
            }
            groups.append(
                GroupStats(
                    group: name,
                    lag: lag(topic: topic, partitions: partitions, committed: committed, marks: marks),
                    pending: members.reduce(0) { $0 + $1.unsettled },
                    consumers: members.count,
                    committed: positions
                )
            )
        }
        return DestinationStats(
            name: destination,
            kind: .stream,
            depth: depth,
            inFlight: local.reduce(0) { $0 + $1.unsettled },
            delayed: 0,
            deadLettered: deadLettered,
            groups: groups
        )
    }

    // MARK: - Dead letters

    /// Where the DLQ's unreplayed entries start and end, per partition.
    private func dlqBacklog(
        _ destination: String
    ) async throws -> (ranges: [(TopicPartition, Int64, Int64)], count: Int) {
        let dlq = settings.dlqTopic(destination)
        guard let partitions = try await admin.partitions(of: dlq) else { return ([], 0) }
        let marks = try await admin.watermarks(topic: dlq, partitions: partitions)
        let tps = (0..<partitions).map { TopicPartition(topic: dlq, partition: Int32($0)) }
        let committed = try await admin.committed(group: settings.dlqGroup(destination), partitions: tps)
        var ranges: [(TopicPartition, Int64, Int64)] = []
        var count: Int64 = 0
        for (p, tp) in tps.enumerated() {
            let from = max(committed[tp] ?? marks[p].low, marks[p].low)
            if marks[p].high > from {
                ranges.append((tp, from, marks[p].high))
                count += marks[p].high - from
            }
        }
        return (ranges, Int(count))
    }

    func readDeadLetters(of destination: String, limit: Int) async throws -> [DeadLetterRecord] {
        try await dlqRecords(of: destination, limit: limit).map {
            DeadLetterRecord(
                message: KafkaMessageMapping.message(from: $0),
                position: Position(partition: Int($0.partition), offset: $0.offset)
            )
        }
    }

    func moveDeadLetters(
        of destination: String,
        limit: Int,
        replay: @Sendable (DeadLetterRecord) -> DeadLetterReplay
    ) async throws -> Int {
        let records = try await dlqRecords(of: destination, limit: limit)
        if records.isEmpty { return 0 }
        var outgoing: [OutgoingRecord] = []
        var next: [TopicPartition: Int64] = [:]
        var targets: Set<String> = []
        for record in records {
            next[record.topicPartition] = max(next[record.topicPartition] ?? 0, record.offset + 1)
            let copy = replay(
                DeadLetterRecord(
                    message: KafkaMessageMapping.message(from: record),
                    position: Position(partition: Int(record.partition), offset: record.offset)
                )
            )
            targets.insert(copy.destination)
            outgoing.append(OutgoingRecord(topic: settings.topic(copy.destination), message: copy.message))
        }
        for target in targets.sorted() where target != destination {
            _ = try await kind(of: target, createAs: .queue)
        }
        // The DLQ group commits past the records only after every copy was acknowledged.
        _ = try await activeProducer().produce(outgoing, destination: destination)
        try await admin.commit(group: settings.dlqGroup(destination), offsets: next)
        return outgoing.count
    }

    private func dlqRecords(of destination: String, limit: Int) async throws -> [KafkaRecord] {
        try validate(destination)
        let backlog = try await dlqBacklog(destination)
        return try await KafkaReader.read(ranges: backlog.ranges, limit: limit, broker: self)
    }

    // MARK: - Close

    /// The client closed the consumers first.
    func close() async {
        let first = state.withLock { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        guard first else { return }
        admin.shutdown()
        await producerBox.withLock { $0 }.close(timeout: settings.operationTimeout)
        let handle = admin.handle
        _ = try? await RdKafka.offPool { handle.destroy() }
    }
}
