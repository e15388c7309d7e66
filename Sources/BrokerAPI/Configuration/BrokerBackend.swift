import Logging
import Synchronization

/// A backend plugs into BrokerKit by registering one of these for its URL schemes.
///
/// ```swift
/// BrokerRegistry.shared.register(RedisStreamsBackend())
/// let broker = try await Brokers.connect(url: "redis://localhost:6379")
/// ```
public protocol BrokerBackend: Sendable {
    /// Display name (`memory`, `kafka`, `amqp`, `redis`).
    var name: String { get }
    /// URL schemes it serves (`amqp`, `amqps`).
    var schemes: [String] { get }
    /// Prefix for its options in the environment and config files (`KAFKA_…`, `kafka.…`).
    var optionNamespace: String { get }
    /// What it supports.
    var capabilities: BrokerCapabilities { get }
    /// Its own options (``BrokerOption/common`` are added automatically).
    var options: [BrokerOption] { get }
    /// Connects and returns the backend's driver behind the one front every backend shares;
    /// throws ``BrokerError/Code/connectionFailed`` within `connect.timeout` when the broker
    /// is unreachable.
    func connect(configuration: BrokerConfiguration, logger: Logger) async throws -> BrokerClient
}

/// The backends BrokerKit can pick from by URL scheme. `memory://` is always registered.
public final class BrokerRegistry: Sendable {
    /// The process-wide registry.
    public static let shared = BrokerRegistry()

    private let backends = Mutex<[String: any BrokerBackend]>([:])

    public init() {
        register(MemoryBackend())
    }

    /// Registers `backend` for its schemes, replacing an earlier one.
    public func register(_ backend: any BrokerBackend) {
        backends.withLock { table in
            for scheme in backend.schemes { table[scheme.lowercased()] = backend }
        }
    }

    /// The backend for `scheme`.
    public func backend(for scheme: String) -> (any BrokerBackend)? {
        backends.withLock { $0[scheme.lowercased()] }
    }

    /// Every registered backend, once each, sorted by name.
    public var all: [any BrokerBackend] {
        backends.withLock { table in
            var seen = Set<String>()
            return table.values.filter { seen.insert($0.name).inserted }.sorted { $0.name < $1.name }
        }
    }

    /// Registered schemes, sorted.
    public var schemes: [String] { backends.withLock { $0.keys.sorted() } }
}
