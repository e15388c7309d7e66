@_spi(BrokerBackend) import BrokerAPI
import BrokerConformance
import Foundation

/// Finds the real servers a test run was given, and decides what happens when one is missing:
/// under `CI=true` a missing server is a failure; locally the test is skipped with a reason.
///
/// The project's `scripts/brokers.sh start` exports `BROKERKIT_TEST_REDIS_URL`,
/// `BROKERKIT_TEST_AMQP_URL`, `BROKERKIT_TEST_AMQPS_URL` (with `BROKERKIT_TEST_TLS_DIR`) and
/// `BROKERKIT_TEST_KAFKA_URL` (and `BROKERKIT_TEST_KAFKA_TLS_URL`, `BROKERKIT_TEST_KAFKA_SASL_URL`).
public enum TestEnvironment {
    public enum Server: String, Sendable, CaseIterable {
        case redis = "REDIS"
        case amqp = "AMQP"
        /// RabbitMQ's TLS listener (`amqps://`); its certificates are in `BROKERKIT_TEST_TLS_DIR`.
        case amqps = "AMQPS"
        case kafka = "KAFKA"
        /// A Kafka-protocol broker behind TLS (`kafka+ssl://`), demanding a client certificate;
        /// the certificates are in `BROKERKIT_TEST_TLS_DIR`.
        case kafkaTLS = "KAFKA_TLS"
        /// A Kafka-protocol broker demanding SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); the
        /// URL carries the user and password.
        case kafkaSASL = "KAFKA_SASL"

        /// The environment variable holding the server's URL.
        public var variable: String { "BROKERKIT_TEST_\(rawValue)_URL" }
    }

    /// Whether this is a CI run (`CI` set to `true` or `1`).
    public static var isCI: Bool {
        let value = ProcessInfo.processInfo.environment["CI"]?.lowercased()
        return value == "true" || value == "1"
    }

    /// The server's URL, if the run has one.
    public static func url(_ server: Server) -> String? {
        guard let value = ProcessInfo.processInfo.environment[server.variable], !value.isEmpty else { return nil }
        return value
    }

    /// Use as `.enabled(if: TestEnvironment.shouldRun(.redis))`: true when the server is
    /// there, and always true under CI so that the test runs and fails loudly without it.
    public static func shouldRun(_ server: Server) -> Bool {
        if url(server) != nil || isCI { return true }
        print(
            "skipping \(server.rawValue.lowercased()) tests: \(server.variable) is not set (run scripts/brokers.sh start, or make test)"
        )
        return false
    }

    /// Tests that restart a server or change its configuration run in a separate, serial
    /// pass (`BROKERKIT_RESTART_TESTS=1`, as `scripts/test.sh` does after the main pass), so
    /// that they never pull a server away from tests running in parallel.
    public static var restartPass: Bool { ProcessInfo.processInfo.environment["BROKERKIT_RESTART_TESTS"] == "1" }

    /// Use as `.enabled(if: TestEnvironment.shouldRunRestartTests(.redis))`.
    public static func shouldRunRestartTests(_ server: Server) -> Bool {
        guard restartPass else { return false }
        return shouldRun(server)
    }

    /// The server's URL or an error saying how to get one.
    public static func requireURL(_ server: Server) throws -> String {
        guard let url = url(server) else {
            throw ConformanceFailure(
                "\(server.variable) is not set\(isCI ? " under CI=true" : ""): the \(server.rawValue.lowercased()) server is missing. Start it with scripts/brokers.sh start (make test does)."
            )
        }
        return url
    }

    /// The throw-away CA's files that `scripts/brokers.sh` writes to `BROKERKIT_TEST_TLS_DIR`.
    public struct TLSFiles: Sendable {
        public let dir: String
        public var ca: String { dir + "/ca.pem" }
        /// A CA the servers' certificates do not chain to.
        public var otherCA: String { dir + "/other-ca.pem" }
        public var cert: String { dir + "/client.pem" }
        public var key: String { dir + "/client.key" }
    }

    public static func tlsFiles() throws -> TLSFiles {
        guard let dir = ProcessInfo.processInfo.environment["BROKERKIT_TEST_TLS_DIR"], !dir.isEmpty else {
            throw ConformanceFailure("BROKERKIT_TEST_TLS_DIR is not set (scripts/brokers.sh start writes it)")
        }
        return TLSFiles(dir: dir)
    }

    /// Host and port of a server URL (`scheme://[user:pass@]host:port/...`).
    public static func hostAndPort(_ url: String) -> (host: String, port: Int32)? {
        guard let start = url.range(of: "://") else { return nil }
        var rest = url[start.upperBound...]
        if let at = rest.firstIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard let colon = rest.lastIndex(of: ":"), let port = Int32(rest[rest.index(after: colon)...]) else {
            return nil
        }
        return (String(rest[..<colon]), port)
    }

    /// Restarts a test server with the command scripts/brokers.sh exports in `variable`
    /// (`BROKERKIT_TEST_REDIS_RESTART`, `BROKERKIT_TEST_KAFKA_RESTART`): stop, `pause`
    /// seconds, start on the same data. system() waits with waitpid (Foundation's Process can
    /// miss the exit of a shell whose child daemonizes), on a thread of its own.
    public static func restartServer(_ variable: String, pause: Double) async throws {
        guard let command = ProcessInfo.processInfo.environment[variable] else {
            throw ConformanceFailure("\(variable) is not set (scripts/brokers.sh start exports it)")
        }
        let status = try await blocking { system("\(command) \(pause) >/dev/null 2>&1") }
        guard status == 0 else { throw ConformanceFailure("\(command) failed (status \(status))") }
    }

    /// Runs blocking work (a C client call) on a dedicated thread, off the cooperative pool.
    public static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await DedicatedThread.run(name: "test-blocking", body)
    }
}
