@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

/// Topology, catalog, stats and dead letters over the broker's admin connection.
///
/// Names, for a destination `orders` (after `prefix`):
/// - `orders`: the work queue (durable quorum queue, or classic with `queue.type=classic`),
///   dead-lettering natively to `orders.dlq`; or the stream queue (`x-queue-type=stream`).
/// - `orders.dlq`: the dead-letter queue.
/// - `orders.wait.<ms>.quorum`: one wait queue per retry / delivery delay (rounded up to two
///   significant digits), with `x-message-ttl=<ms>` and a dead-letter route back to `orders`,
///   and `x-expires` so unused ones disappear. A quorum queue that dead-letters at least once
///   (`x-dead-letter-strategy=at-least-once`, which needs `x-overflow=reject-publish`): a
///   classic wait queue dead-letters at most once, and a node that restarted expired its due
///   messages before the quorum queue they go back to was up, dropping them. With
///   `queue.type=classic` the work queue is classic too and the wait queue is the classic
///   `orders.wait.<ms>`.
/// - `orders.offsets.<group>`: a stream group's committed offset (one message, `x-max-length=1`).
/// - `orders.lock.<group>`: an exclusive, auto-deleted queue held by the active member of a
///   stream group.
/// - `__brokerkit.catalog`: a stream where BrokerKit records the destinations, groups and wait
///   queues it creates, since AMQP 0-9-1 cannot list queues (that needs the management plugin).
final class RabbitAdmin: @unchecked Sendable {
    // `@unchecked Sendable` is safe: `catalog` and `nextChannel` are only touched on the
    // connection's thread (inside its jobs); the caches are Mutex-protected.
    let connection: AMQPConnection
    let settings: RabbitSettings
    let publisher: RabbitPublisher
    private static let rpcChannel: UInt16 = 1

    private let known = Mutex<[String: DestinationKind?]>([:])
    private let waitDeclared = Mutex<[String: ContinuousClock.Instant]>([:])
    private let recorded = Mutex<Set<String>>([])
    /// Names whose kind this process looked up in the catalog (see ``catalogKind(_:)``).
    private let catalogChecked = Mutex<Set<String>>([])
    private var catalog = CatalogState()
    private var nextChannel: UInt16 = 2

    struct CatalogState: Sendable {
        var kinds: [String: DestinationKind] = [:]
        var groups: [String: Set<String>] = [:]
        var waits: [String: Set<Int>] = [:]
        var nextOffset: Int64?
        var seenMarkers: Set<String> = []
    }

    init(connection: AMQPConnection, settings: RabbitSettings, publisher: RabbitPublisher) {
        self.connection = connection
        self.settings = settings
        self.publisher = publisher
        connection.onOpen = {}
    }

    /// Dropped with a broker that was never closed: the connection closes in the background.
    deinit { connection.closeInBackground() }

    // MARK: - Names

    static func dlqName(_ full: String) -> String { deadLetterName(for: full) }
    static func waitName(_ full: String, ms: Int, quorum: Bool) -> String {
        quorum ? "\(full).wait.\(ms).quorum" : "\(full).wait.\(ms)"
    }
    func waitName(_ full: String, ms: Int) -> String {
        Self.waitName(full, ms: ms, quorum: settings.queueType == "quorum")
    }
    static func offsetsName(_ full: String, group: String) -> String { "\(full).offsets.\(group)" }
    static func lockName(_ full: String, group: String) -> String { "\(full).lock.\(group)" }
    var catalogName: String { settings.prefix + "__brokerkit.catalog" }

    /// A delay in whole milliseconds, rounded up to two significant digits, so that jittered
    /// backoffs share a bounded set of wait queues and nothing is delivered early.
    static func delayBucket(_ delay: Duration) -> Int {
        let ms = Int((delay.timeInterval * 1000).rounded(.up))
        guard ms >= 100 else { return max(1, ms) }
        var magnitude = 1
        while ms / magnitude >= 100 { magnitude *= 10 }
        return ((ms + magnitude - 1) / magnitude) * magnitude
    }

    /// A fresh channel number for a short-lived operation (probes, DLQ reads).
    private func allocateChannel() -> UInt16 {
        nextChannel = nextChannel >= 2000 ? 2 : nextChannel + 1
        return nextChannel
    }

    /// Runs `body` on the admin connection; while the connection is down (a broker restart)
    /// it waits for the reconnect and tries again, until `operation.timeout`.
    @discardableResult
    func call<T: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + settings.operationTimeout
        var backoff: Duration = .milliseconds(50)
        while true {
            do {
                return try await connection.run(body)
            } catch let error as BrokerError
                where (error.code == .connectionFailed || error.message.contains(": 541 ")) && !connection.isClosed
            {
                // Down (restart) or RabbitMQ's 541 INTERNAL_ERROR (e.g. a quorum queue that
                // could not start in time under load): both are worth another try.
                if ContinuousClock.now + backoff >= deadline { throw error }
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(1))
            }
        }
    }

    // MARK: - Arguments

    func queueArguments(_ full: String, extra: [String: String] = [:]) -> AMQPTable {
        var arguments = AMQPTable()
        if settings.queueType == "quorum" { arguments["x-queue-type"] = .text("quorum") }
        arguments["x-dead-letter-exchange"] = .text("")
        arguments["x-dead-letter-routing-key"] = .text(Self.dlqName(full))
        if settings.deliveryLimit > 0 { arguments["x-delivery-limit"] = .int64(Int64(settings.deliveryLimit)) }
        for (key, value) in extra.sorted(by: { $0.key < $1.key }) { arguments[key] = Self.argument(value) }
        return arguments
    }

    private var dlqArguments: AMQPTable {
        settings.queueType == "quorum" ? AMQPTable(["x-queue-type": .text("quorum")]) : AMQPTable()
    }

    static func argument(_ text: String) -> AMQPValue {
        if let number = Int64(text) { return .int64(number) }
        if text == "true" || text == "false" { return .bool(text == "true") }
        return .text(text)
    }

    static func streamArguments(_ options: DestinationOptions) throws -> AMQPTable {
        var arguments = AMQPTable(["x-queue-type": .text("stream")])
        if let retention = options.retention {
            if let maxAge = retention.maxAge {
                arguments["x-max-age"] = .text("\(max(1, Int(maxAge.timeInterval.rounded(.up))))s")
            }
            if let maxBytes = retention.maxBytes { arguments["x-max-length-bytes"] = .int64(Int64(maxBytes)) }
            if retention.maxMessages != nil {
                throw BrokerError(
                    .unsupported,
                    "RabbitMQ streams retain by age or bytes, not by message count (retention.maxMessages)",
                    backend: AMQPError.backend
                )
            }
        }
        for (key, value) in options.backendSettings.sorted(by: { $0.key < $1.key }) { arguments[key] = argument(value) }
        return arguments
    }

    // MARK: - Declaring

    /// The kind BrokerKit knows for `full` (declared here or read from the catalog).
    func knownKind(_ full: String) -> DestinationKind? { known.withLock { $0[full] ?? nil } }

    /// The kind of `full` when another process declared it: RabbitMQ cannot tell a stream from
    /// a queue by a passive declare, so the catalog is read, once per name per process.
    ///
    /// A name is marked looked up only once a read succeeded: a read that failed (a broker
    /// busy past `operation.timeout`) answers "kind unknown" this time and is tried again on
    /// the next use, and callers that race each read the catalog.
    func catalogKind(_ full: String) async -> DestinationKind? {
        if let kind = knownKind(full) { return kind }
        if catalogChecked.withLock({ $0.contains(full) }) { return nil }
        guard let catalog = try? await refreshCatalog() else { return nil }
        catalogChecked.withLock { _ = $0.insert(full) }
        guard let kind = catalog.kinds[full] else { return nil }
        known.withLock { $0[full] = .some(kind) }
        return kind
    }

    /// Declares `full` as `kind` (with its DLQ) and records it in the catalog.
    func create(_ full: String, user: String, kind: DestinationKind, options: DestinationOptions) async throws {
        let arguments =
            kind == .queue ? queueArguments(full, extra: options.backendSettings) : try Self.streamArguments(options)
        let dlqArguments = self.dlqArguments
        do {
            try await call { c in
                try c.declareQueue(Self.rpcChannel, full, arguments: arguments, destination: user)
                try c.declareQueue(Self.rpcChannel, Self.dlqName(full), arguments: dlqArguments, destination: user)
            }
            if kind == .stream { try await awaitStreamReady(full, destination: user) }
        } catch let error as BrokerError
            where error.code == .invalidConfiguration && kind == .stream
            && error.message.contains("inequivalent arg") && !error.message.contains("'x-max-")
        {
            // A stream declared over a queue: the first differing argument is the queue's
            // dead-letter setting, not x-queue-type.
            throw BrokerError(
                .wrongDestinationKind,
                "'\(user)' already exists as a queue, cannot create it as a stream (\(error.message))",
                backend: AMQPError.backend,
                destination: user
            )
        }
        known.withLock { $0[full] = kind }
        try await record(["op": kind.rawValue, "name": full], once: "\(kind.rawValue):\(full)")
    }

    /// Makes sure `full` exists for a consumer of `kind`: declares it (auto.create) or checks
    /// it (passive). Nothing to do when its kind is known (the client compares the kinds).
    func ensure(_ full: String, user: String, kind: DestinationKind) async throws {
        if knownKind(full) != nil { return }
        if settings.autoCreate {
            try await create(full, user: user, kind: kind, options: DestinationOptions())
        } else {
            try await requireExists(full, user: user)
            if kind == .stream { known.withLock { $0[full] = .stream } }
        }
    }

    /// Makes sure something named `full` exists before publishing to it (auto.create declares
    /// a work queue; a stream must be created first).
    func ensureForPublish(_ full: String, user: String) async throws {
        if known.withLock({ $0[full] != nil }) { return }
        do {
            try await call { c in _ = try c.declareQueue(Self.rpcChannel, full, passive: true, destination: user) }
            known.withLock { if $0[full] == nil { $0[full] = .some(nil) } }
        } catch let error as BrokerError where error.code == .unknownDestination && settings.autoCreate {
            try await create(full, user: user, kind: .queue, options: DestinationOptions())
        } catch let error as BrokerError where error.code == .unknownDestination {
            throw BrokerError(
                .unknownDestination,
                "'\(user)' does not exist and auto.create is off",
                backend: AMQPError.backend,
                destination: user
            )
        }
    }

    /// Forgets a cached declaration (the queue was deleted behind our back).
    func forget(_ full: String) {
        _ = known.withLock { $0.removeValue(forKey: full) }
        _ = catalogChecked.withLock { $0.remove(full) }
    }

    func requireExists(_ full: String, user: String) async throws {
        do {
            try await call { c in _ = try c.declareQueue(Self.rpcChannel, full, passive: true, destination: user) }
        } catch let error as BrokerError where error.code == .unknownDestination {
            throw BrokerError(
                .unknownDestination,
                settings.autoCreate ? "'\(user)' does not exist" : "'\(user)' does not exist and auto.create is off",
                backend: AMQPError.backend,
                destination: user
            )
        }
    }

    /// Forgets that the wait queue `name` was declared (a publish to it came back unroutable).
    func forgetWaitQueue(_ name: String) {
        _ = waitDeclared.withLock { $0.removeValue(forKey: name) }
    }

    /// Declares the wait queue for `ms` (redeclared before its `x-expires` lease runs out).
    func ensureWaitQueue(_ full: String, user: String, ms: Int) async throws -> String {
        let name = waitName(full, ms: ms)
        let expires = 2 * ms + 600_000
        let now = ContinuousClock.now
        if let declared = waitDeclared.withLock({ $0[name] }), now - declared < .milliseconds(expires / 2) {
            return name
        }
        var arguments = AMQPTable([
            "x-message-ttl": .int64(Int64(ms)), "x-dead-letter-exchange": .text(""),
            "x-dead-letter-routing-key": .text(full),
            "x-expires": .int64(Int64(expires)),
        ])
        if settings.queueType == "quorum" {
            arguments["x-queue-type"] = .text("quorum")
            arguments["x-dead-letter-strategy"] = .text("at-least-once")
            arguments["x-overflow"] = .text("reject-publish")
        }
        let declared = arguments
        try await call { c in try c.declareQueue(Self.rpcChannel, name, arguments: declared, destination: user) }
        waitDeclared.withLock { $0[name] = now }
        try await record(["op": "wait", "name": full, "ms": String(ms)], once: "wait:\(name)")
        return name
    }

    /// Declares `<full>.dlq` (once per process) before a dead letter is published to it.
    func ensureDLQ(_ full: String, user: String) async throws -> String {
        let name = Self.dlqName(full)
        if recorded.withLock({ $0.contains("dlq:\(name)") }) { return name }
        let arguments = dlqArguments
        try await call { c in try c.declareQueue(Self.rpcChannel, name, arguments: arguments, destination: user) }
        recorded.withLock { _ = $0.insert("dlq:\(name)") }
        return name
    }

    /// Forgets that `<full>.dlq` was declared (it was deleted behind this process's back: a
    /// publish to it came back unroutable), so the next ``ensureDLQ(_:user:)`` declares it again.
    func forgetDLQ(_ full: String) {
        let name = Self.dlqName(full)
        recorded.withLock { _ = $0.remove("dlq:\(name)") }
    }

    func ensureOffsetsQueue(_ full: String, group: String) async throws -> String {
        let name = Self.offsetsName(full, group: group)
        if recorded.withLock({ $0.contains("group:\(name)") }) { return name }
        try await call { c in
            try c.declareQueue(Self.rpcChannel, name, arguments: AMQPTable(["x-max-length": .int64(1)]))
        }
        try await record(["op": "group", "name": full, "group": group], once: "group:\(name)")
        return name
    }

    /// The committed offset of `group` on stream `full`, if it has one.
    func committedOffset(_ full: String, group: String) async throws -> Int64? {
        let name = Self.offsetsName(full, group: group)
        return try await call { c -> Int64? in
            let channel = self.allocateChannel()
            defer { c.closeChannel(channel) }
            do {
                _ = try c.declareQueue(channel, name, passive: true)
            } catch let error as BrokerError where error.code == .unknownDestination {
                return nil
            }
            guard let message = try c.get(channel, queue: name, noAck: false) else { return nil }
            try c.nack(channel, tag: message.deliveryTag, requeue: true)
            return Int64(String(decoding: message.body, as: UTF8.self))
        }
    }

    // MARK: - Deleting and listing

    func delete(_ full: String, user: String) async throws {
        try await requireExists(full, user: user)
        let state = try await refreshCatalog()
        // Both kinds: a wait queue an earlier version declared classic under the old name too.
        let waits = (state.waits[full] ?? []).flatMap {
            [Self.waitName(full, ms: $0, quorum: true), Self.waitName(full, ms: $0, quorum: false)]
        }
        let offsets = (state.groups[full] ?? []).map { Self.offsetsName(full, group: $0) }
        try await call { c in
            try c.deleteQueue(Self.rpcChannel, full, destination: user)
            for name in [Self.dlqName(full)] + waits + offsets {
                try c.deleteQueue(Self.rpcChannel, name, destination: user)
            }
        }
        known.withLock { $0[full] = nil }
        _ = catalogChecked.withLock { $0.remove(full) }
        waitDeclared.withLock { table in for name in waits { table[name] = nil } }
        recorded.withLock { set in set = set.filter { !$0.hasSuffix(":\(full)") && !$0.contains(":\(full).") } }
        try await record(["op": "delete", "name": full], once: nil)
    }

    /// Destinations from the catalog that still exist.
    func list() async throws -> [DestinationInfo] {
        let state = try await refreshCatalog()
        let candidates = state.kinds.filter { $0.key.hasPrefix(settings.prefix) }.sorted { $0.key < $1.key }
        let names = candidates.map(\.key)
        let present = try await call { c -> Set<String> in
            let channel = self.allocateChannel()
            defer { c.closeChannel(channel) }
            var present = Set<String>()
            for name in names {
                do {
                    _ = try c.declareQueue(channel, name, passive: true)
                    present.insert(name)
                } catch let error as BrokerError where error.code == .unknownDestination {
                    continue
                }
            }
            return present
        }
        return candidates.filter { present.contains($0.key) }.map {
            DestinationInfo(name: String($0.key.dropFirst(settings.prefix.count)), kind: $0.value, partitions: 1)
        }
    }

    // MARK: - Stats

    func stats(
        _ full: String,
        user: String,
        inFlight: Int,
        groupPending: [String: (pending: Int, consumers: Int)]
    ) async throws -> DestinationStats {
        let state = try await refreshCatalog()
        let kind = knownKind(full) ?? state.kinds[full] ?? .queue
        let waits = (state.waits[full] ?? []).map { waitName(full, ms: $0) }
        let (ready, consumers, dead, delayed) = try await call { c -> (Int, Int, Int, Int) in
            let channel = self.allocateChannel()
            defer { c.closeChannel(channel) }
            let main: (messages: Int, consumers: Int)
            do {
                main = try c.declareQueue(channel, full, passive: true, destination: user)
            } catch let error as BrokerError where error.code == .unknownDestination {
                throw BrokerError(
                    .unknownDestination,
                    "'\(user)' does not exist",
                    backend: AMQPError.backend,
                    destination: user
                )
            }
            func count(_ name: String) throws -> Int {
                do { return try c.declareQueue(channel, name, passive: true).messages } catch let error as BrokerError
                    where error.code == .unknownDestination
                {
                    return 0
                }
            }
            let dead = try count(Self.dlqName(full))
            var delayed = 0
            for wait in waits { delayed += try count(wait) }
            return (main.messages, main.consumers, dead, delayed)
        }
        switch kind {
        case .queue:
            let group = GroupStats(
                group: "queue",
                lag: ready + delayed,
                pending: inFlight,
                consumers: consumers,
                committed: []
            )
            return DestinationStats(
                name: user,
                kind: .queue,
                depth: ready,
                inFlight: inFlight,
                delayed: delayed,
                deadLettered: dead,
                groups: [group]
            )
        case .stream:
            let bounds = try await streamBounds(full)
            let depth = bounds.map { Int($0.end.subtractingReportingOverflow($0.first).partialValue) } ?? 0
            var groups: [GroupStats] = []
            for group in (state.groups[full] ?? []).sorted() {
                let committed = try await committedOffset(full, group: group)
                let start = committed ?? bounds?.first ?? 0
                let end = bounds?.end ?? start
                let local = groupPending[group]
                groups.append(
                    GroupStats(
                        group: group,
                        lag: Int(max(0, end.subtractingReportingOverflow(start).partialValue)),
                        pending: local?.pending ?? 0,
                        consumers: local?.consumers ?? 0,
                        committed: committed.map { [Position(partition: 0, offset: $0)] } ?? []
                    )
                )
            }
            let pending = groups.reduce(0) { $0 + $1.pending }
            return DestinationStats(
                name: user,
                kind: .stream,
                depth: depth,
                inFlight: pending,
                delayed: 0,
                deadLettered: dead,
                groups: groups
            )
        }
    }

    /// First offset and end offset (last + 1) of stream `full`, or `nil` when it is empty.
    ///
    /// AMQP 0-9-1 reports no offsets for streams, so this attaches two short-lived consumers:
    /// one at `first` (one message) and one at `last` (the last chunk, read until it pauses).
    func streamBounds(_ full: String) async throws -> (first: Int64, end: Int64)? {
        try await call { c -> (first: Int64, end: Int64)? in
            func probe(_ offset: AMQPValue, prefetch: Int, readAll: Bool) throws -> Int64? {
                let channel = self.allocateChannel()
                defer { c.closeChannel(channel) }
                try c.qos(channel, prefetch: prefetch)
                _ = try c.consume(
                    channel,
                    queue: full,
                    tag: "bk-probe-\(channel)",
                    arguments: AMQPTable(["x-stream-offset": offset])
                )
                var found: Int64?
                var wait: Duration = .milliseconds(150)
                while let delivery = try c.nextDelivery(on: channel, timeout: wait) {
                    if let offset = delivery.properties.headers[RabbitMessageMapping.streamOffsetHeader]?.intValue {
                        found = max(found ?? offset, offset)
                    }
                    try c.ack(channel, tag: delivery.deliveryTag)
                    if !readAll { break }
                    wait = .milliseconds(40)
                }
                return found
            }
            guard let first = try probe(.text("first"), prefetch: 1, readAll: false) else { return nil }
            let last = try probe(.text("last"), prefetch: 2000, readAll: true) ?? first
            return (first, max(first, last) + 1)
        }
    }

    // MARK: - Dead letters

    func deadLetters(_ full: String, user: String, limit: Int) async throws -> [DeadLetterRecord] {
        try await requireExists(full, user: user)
        let prefix = settings.prefix
        let dlq = Self.dlqName(full)
        let messages = try await call { c -> [AMQPDelivery] in
            // Browse: take without ack, then close the channel so the broker puts them back.
            let channel = self.allocateChannel()
            defer { c.closeChannel(channel) }
            var taken: [AMQPDelivery] = []
            do {
                while taken.count < limit, let message = try c.get(channel, queue: dlq, noAck: false) {
                    taken.append(message)
                }
            } catch let error as BrokerError where error.code == .unknownDestination {
                return []
            }
            return taken
        }
        return messages.enumerated().map { index, delivery in
            DeadLetterRecord(
                message: Self.envelope(delivery, origin: user, prefix: prefix).message,
                position: Position(offset: Int64(index))
            )
        }
    }

    /// The envelope of a DLQ message: BrokerKit's headers, or (for a message RabbitMQ itself
    /// dead-lettered, e.g. after `queue.delivery.limit`) one built from `x-first-death-*`.
    static func envelope(_ delivery: AMQPDelivery, origin: String, prefix: String) -> DeadLetterEnvelope {
        let (message, _) = RabbitMessageMapping.message(from: delivery)
        if let envelope = DeadLetterEnvelope(dlqMessage: message) { return envelope }
        let headers = delivery.properties.headers
        let reason = headers["x-first-death-reason"]?.stringValue ?? "unknown"
        let queue = headers["x-first-death-queue"]?.stringValue.map {
            $0.hasPrefix(prefix) ? String($0.dropFirst(prefix.count)) : $0
        }
        let attempts =
            Int(
                min(
                    max(0, headers[RabbitMessageMapping.deliveryCountHeader]?.intValue ?? 0),
                    Int64(Delivery.maxAttempt)
                )
            ) + 1
        return DeadLetterEnvelope(
            original: message,
            originalDestination: queue ?? origin,
            attempts: attempts,
            lastError: "dead-lettered by RabbitMQ (\(reason))",
            failedAt: message.timestamp
        )
    }

    /// Takes up to `limit` DLQ messages (unacked) on a dedicated channel; `finish` acks or
    /// returns them.
    func takeDeadLetters(_ full: String, limit: Int) async throws -> (channel: UInt16, messages: [AMQPDelivery]) {
        let dlq = Self.dlqName(full)
        return try await call { c -> (UInt16, [AMQPDelivery]) in
            let channel = self.allocateChannel()
            var taken: [AMQPDelivery] = []
            do {
                while taken.count < limit, let message = try c.get(channel, queue: dlq, noAck: false) {
                    taken.append(message)
                }
            } catch let error as BrokerError where error.code == .unknownDestination {
                c.closeChannel(channel)
                return (channel, [])
            }
            return (channel, taken)
        }
    }

    /// Acks `tags` on `channel` (moved messages) and closes it (returning the others).
    func finishDeadLetters(channel: UInt16, ack tags: [UInt64]) async throws {
        try await call { c in
            defer { c.closeChannel(channel) }
            for tag in tags { try c.ack(channel, tag: tag) }
        }
    }

    // MARK: - Catalog

    /// Appends a record to the catalog stream (`once`: only the first time in this process).
    func record(_ fields: [String: String], once key: String?) async throws {
        if let key, !recorded.withLock({ $0.insert(key).inserted }) { return }
        try await ensureCatalog()
        let body = try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
        var properties = AMQPProperties()
        properties.deliveryMode = 2
        let errors = await publisher.publish(
            [AMQPOutgoing(routingKey: catalogName, properties: properties, body: body)],
            destination: nil
        )
        if let error = errors.first ?? nil {
            if let key { recorded.withLock { _ = $0.remove(key) } }
            throw error
        }
    }

    private func ensureCatalog() async throws {
        let name = catalogName
        if recorded.withLock({ $0.contains("catalog") }) { return }
        try await call { c in
            try c.declareQueue(Self.rpcChannel, name, arguments: AMQPTable(["x-queue-type": .text("stream")]))
        }
        try await awaitStreamReady(name, destination: nil)
        recorded.withLock { _ = $0.insert("catalog") }
    }

    /// Waits until a consumer can attach to the stream `name`.
    ///
    /// RabbitMQ 3.10 answers `queue.declare` of a stream that another client created a moment
    /// earlier before the stream's writer is registered. In that window a publish or a consume
    /// can crash the channel on the server (541 INTERNAL_ERROR, which closes the whole
    /// connection and fails everything in flight on it), or a consume fails with 506 "Stream
    /// not found" / 406 "does not have a replica on the local node". Found with four brokers
    /// using a fresh catalog at once. A throw-away connection attaches a consumer until that
    /// succeeds, so no crash can reach the connections that carry the application's work.
    private func awaitStreamReady(_ name: String, destination: String?) async throws {
        let deadline = ContinuousClock.now + settings.operationTimeout
        var attempts = 0
        while true {
            attempts += 1
            let probe = AMQPConnection(endpoint: settings.endpoint, name: "stream-probe", logger: connection.logger)
            do {
                try await probe.start()
                try await probe.run { c in
                    try c.qos(1, prefetch: 1)
                    let tag = try c.consume(
                        1,
                        queue: name,
                        tag: "bk-ready",
                        arguments: AMQPTable(["x-stream-offset": .text("next")]),
                        destination: destination
                    )
                    try c.cancel(1, tag: tag)
                }
                await probe.close()
                if attempts > 1 { connection.logger.debug("stream '\(name)' ready after \(attempts) probes") }
                return
            } catch let error as BrokerError where Self.streamNotReady(error) {
                await probe.close()
                guard ContinuousClock.now < deadline else {
                    throw BrokerError(
                        .timeout,
                        "stream '\(name)' did not become ready within operation.timeout (\(error.message))",
                        backend: AMQPError.backend,
                        destination: destination
                    )
                }
                try await Task.sleep(for: .milliseconds(50))
            } catch {
                await probe.close()
                throw error
            }
        }
    }

    /// The answers of a stream that exists but has no running writer / local replica yet.
    static func streamNotReady(_ error: BrokerError) -> Bool {
        error.message.contains(" 506 ") || error.message.contains(" 541 ")
            || error.message.contains("does not have a replica on the local node")
    }

    /// Reads the catalog up to a marker this call appends, so it sees every earlier record.
    func refreshCatalog() async throws -> CatalogState {
        let marker = UUID().uuidString
        try await record(["op": "mark", "id": marker], once: nil)
        let name = catalogName
        let timeout = settings.operationTimeout
        return try await call { c -> CatalogState in
            let admin = self
            if admin.catalog.seenMarkers.remove(marker) != nil { return admin.catalog }
            let channel = admin.allocateChannel()
            defer { c.closeChannel(channel) }
            try c.qos(channel, prefetch: 1000)
            let start: AMQPValue = admin.catalog.nextOffset.map { .int64($0) } ?? .text("first")
            _ = try c.consume(
                channel,
                queue: name,
                tag: "bk-catalog-\(channel)",
                arguments: AMQPTable(["x-stream-offset": start])
            )
            let deadline = ContinuousClock.now + timeout
            var unacked = 0
            while ContinuousClock.now < deadline {
                guard let delivery = try c.nextDelivery(on: channel, timeout: deadline - ContinuousClock.now) else {
                    break
                }
                unacked += 1
                if unacked >= 200 {
                    try c.ack(channel, tag: delivery.deliveryTag, multiple: true)
                    unacked = 0
                }
                if let offset = delivery.properties.headers[RabbitMessageMapping.streamOffsetHeader]?.intValue {
                    if let next = admin.catalog.nextOffset, offset < next { continue }
                    admin.catalog.nextOffset = offset + 1
                }
                if let id = admin.apply(delivery.body), id == marker { return admin.catalog }
            }
            throw BrokerError(
                .timeout,
                "reading the destination catalog '\(name)' did not finish within operation.timeout",
                backend: AMQPError.backend
            )
        }
    }

    /// Applies one catalog record; returns the marker id for `mark` records.
    private func apply(_ body: Data) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: String], let op = object["op"]
        else { return nil }
        let name = object["name"] ?? ""
        switch op {
        case "queue": catalog.kinds[name] = .queue
        case "stream": catalog.kinds[name] = .stream
        case "delete":
            catalog.kinds[name] = nil
            catalog.groups[name] = nil
            catalog.waits[name] = nil
        case "group": if let group = object["group"] { catalog.groups[name, default: []].insert(group) }
        case "wait": if let ms = object["ms"].flatMap(Int.init) { catalog.waits[name, default: []].insert(ms) }
        case "mark":
            if let id = object["id"] {
                if catalog.seenMarkers.count > 1000 { catalog.seenMarkers.removeAll() }
                catalog.seenMarkers.insert(id)
                return id
            }
        default: break
        }
        return nil
    }
}
