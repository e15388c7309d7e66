@_spi(BrokerBackend) import BrokerAPI
import CHiredis
import Logging

/// The Redis Streams backend over hiredis, for `redis://[user:password@]host[:port][/db]`.
///
/// ```swift
/// RedisStreamsBackend.register()
/// let broker = try await Brokers.connect(url: "redis://localhost:6379/0")
/// ```
///
/// Queues and streams are Redis streams read through consumer groups; retries and delayed
/// messages wait in sorted sets; dead letters go to `<name>:dlq` streams. Every hiredis
/// context lives on its own thread (see `ConnectionThread`).
public struct RedisStreamsBackend: BrokerBackend {
    public init() {}

    /// Registers the backend for `redis://` (and `rediss://`, which is rejected with a clear error).
    public static func register(in registry: BrokerRegistry = .shared) {
        registry.register(RedisStreamsBackend())
    }

    /// The linked hiredis version, e.g. `0.14.1`.
    public static var libraryVersion: String { "\(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)" }

    public var name: String { "redis" }
    public var schemes: [String] { ["redis", "rediss"] }
    public var optionNamespace: String { "redis" }
    public var capabilities: BrokerCapabilities { Self.capabilities }
    public var options: [BrokerOption] { RedisSettings.options }

    /// Not claimed: `nativeDelay` (consumers move due entries from a sorted set) and
    /// `nativeDLQ` (the client writes `<name>:dlq`). `persistent` holds when the server runs
    /// with `appendonly yes` (or RDB snapshots, with their loss window).
    public static let capabilities: BrokerCapabilities = [
        .queues, .streams, .consumerGroups, .orderedPerKey, .replay, .newGroupSeesHistory, .timestampSeek,
        .delayedDelivery, .persistent, .perMessageAck, .leaseExpiry, .crossProcess, .prefetch,
    ]

    public func connect(configuration: BrokerConfiguration, logger: Logger) async throws -> BrokerClient {
        let settings = try RedisSettings(configuration)
        let client = RedisClient(
            endpoint: settings.endpoint,
            server: settings.server,
            name: "main",
            operationTimeout: settings.operationTimeout,
            logger: logger
        )
        do {
            try await client.connect()
        } catch {
            client.close()
            throw error
        }
        // The server's bulk limit, so oversized payloads fail before they reach the socket.
        var maxBulk = 512 * 1024 * 1024
        if let reply = try? await client.send(["CONFIG", "GET", "proto-max-bulk-len"], retry: false),
            let value = reply.array?.last?.integer
        {
            maxBulk = Int(value)
        }
        return BrokerClient(
            driver: RedisBroker(
                configuration: configuration,
                settings: settings,
                client: client,
                maxBulkLength: maxBulk,
                logger: logger
            ),
            logger: logger
        )
    }
}
