import Logging
import Synchronization

/// The embedded in-memory backend (`memory://` or `memory://NAME`).
///
/// All brokers connected with the same name in one process share one store, like clients of
/// one server; `memory://` is the store named `default`. Nothing survives the process, and
/// nothing is shared between processes. It implements every BrokerKit feature, so it is both
/// the embedded default and a fast test double.
public struct MemoryBackend: BrokerBackend {
    public init() {}
    public var name: String { "memory" }
    public var schemes: [String] { ["memory"] }
    public var optionNamespace: String { "memory" }
    public var capabilities: BrokerCapabilities { MemoryBackend.capabilities }

    public static let capabilities: BrokerCapabilities = [
        .queues, .streams, .consumerGroups, .orderedPerKey, .replay, .newGroupSeesHistory,
        .timestampSeek, .delayedDelivery, .nativeDelay, .nativeDLQ, .perMessageAck, .leaseExpiry, .prefetch,
    ]

    public var options: [BrokerOption] {
        [
            BrokerOption(
                "partitions",
                .int(1...1024),
                default: "4",
                "Partitions of a stream created without an explicit count."
            ),
            BrokerOption(
                "max.messages",
                .int(1...Int.max),
                default: "1000000",
                "Most messages one destination holds; publishing beyond it fails (back-pressure)."
            ),
        ]
    }

    private static let stores = Mutex<[String: MemoryStore]>([:])

    /// The shared store for `name`.
    static func store(named name: String) -> MemoryStore {
        stores.withLock { table in
            if let store = table[name] { return store }
            let store = MemoryStore(name: name)
            table[name] = store
            return store
        }
    }

    /// Forgets the store named `name` (tests use fresh names instead).
    public static func reset(name: String) {
        _ = stores.withLock { $0.removeValue(forKey: name) }
    }

    public func connect(configuration: BrokerConfiguration, logger: Logger) async throws -> BrokerClient {
        let url = configuration.url
        if url.hosts.count > 1 {
            throw BrokerError.invalidConfiguration(
                "memory:// takes one store name, got '\(url.redacted)'",
                backend: name
            )
        }
        let storeName = url.hosts.first?.name ?? (url.path.isEmpty ? "default" : url.path)
        try DestinationName.validate(storeName, what: "memory store", backend: name)
        return BrokerClient(
            driver: MemoryBroker(
                store: MemoryBackend.store(named: storeName),
                configuration: configuration,
                logger: logger
            ),
            logger: logger
        )
    }
}
