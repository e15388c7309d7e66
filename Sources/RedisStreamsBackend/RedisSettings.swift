@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// Settings of the Redis Streams backend, read from a validated ``BrokerConfiguration``.
///
/// URL: `redis://[user:password@]host[:port][/db]`. `rediss://` (TLS) is rejected: the
/// Debian hiredis 0.14 this backend links has no TLS support.
///
/// Options (environment `REDIS_…`, config file `redis.…`, URL query):
/// - `consumer.block` (duration, `100ms`): how long one XREADGROUP BLOCK waits; also the
///   resolution at which due retries and delayed messages are moved back.
/// - `claim.interval` (duration, `1s`): how often consumers look for expired leases (XAUTOCLAIM).
/// - `stream.lease` (duration, `30s`): idle time after which a stream group member's
///   unacknowledged entries may be claimed by another member.
/// - `retention.maxlen` (int): streams are trimmed to about this many entries (`MAXLEN ~`).
/// - `retention.maxage` (duration): streams drop entries older than this (`MINID ~`).
/// Queues are never trimmed: trimming would drop undelivered work.
struct RedisSettings: Sendable {
    let endpoint: HiredisConnection.Endpoint
    let server: String
    let prefix: String
    let autoCreate: Bool
    let maxMessageBytes: Int
    let operationTimeout: Duration
    let consumerBlock: Duration
    let claimInterval: Duration
    let streamLease: Duration
    let retentionMaxLen: Int?
    let retentionMaxAge: Duration?

    static let options: [BrokerOption] = [
        BrokerOption("consumer.block", .duration, default: "100ms", "How long one XREADGROUP BLOCK waits."),
        BrokerOption(
            "claim.interval",
            .duration,
            default: "1s",
            "How often consumers claim entries whose lease expired."
        ),
        BrokerOption(
            "stream.lease",
            .duration,
            default: "30s",
            "Idle time before a stream member's unacked entries are claimed by another."
        ),
        BrokerOption("retention.maxlen", .int(1...Int.max), "Trim streams to about this many entries (MAXLEN ~)."),
        BrokerOption("retention.maxage", .duration, "Trim stream entries older than this (MINID ~)."),
    ]

    init(_ configuration: BrokerConfiguration) throws {
        let url = configuration.url
        if url.scheme == "rediss" {
            throw BrokerError.invalidConfiguration(
                "rediss:// (TLS) is not supported: the hiredis 0.14 this backend links has no TLS; use redis:// through a TLS tunnel (stunnel) or a private network",
                backend: "redis"
            )
        }
        guard url.hosts.count <= 1 else {
            throw BrokerError.invalidConfiguration(
                "redis:// takes one host, got '\(url.redacted)' (Redis Cluster is not supported)",
                backend: "redis"
            )
        }
        let host = url.hosts.first?.name ?? "127.0.0.1"
        let port = url.hosts.first?.port ?? 6379
        var database = 0
        if !url.path.isEmpty {
            guard let db = Int(url.path), db >= 0 else {
                throw BrokerError.invalidConfiguration(
                    "database '\(url.path)' in '\(url.redacted)' is not a number",
                    backend: "redis"
                )
            }
            database = db
        }
        let operationTimeout = configuration.operationTimeout
        endpoint = HiredisConnection.Endpoint(
            host: host,
            port: port,
            user: url.user,
            password: url.password,
            database: database,
            connectTimeout: configuration.connectTimeout,
            commandTimeout: operationTimeout
        )
        server = "\(host):\(port)/\(database)"
        prefix = configuration.prefix
        autoCreate = configuration.autoCreate
        maxMessageBytes = configuration.maxMessageBytes
        self.operationTimeout = operationTimeout
        consumerBlock = configuration.duration("consumer.block") ?? .milliseconds(100)
        claimInterval = configuration.duration("claim.interval") ?? .seconds(1)
        streamLease = configuration.duration("stream.lease") ?? .seconds(30)
        retentionMaxLen = configuration.int("retention.maxlen")
        retentionMaxAge = configuration.duration("retention.maxage")
    }
}
