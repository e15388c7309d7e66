import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RabbitBackend
import Synchronization
import Testing

extension ConformanceCase: CustomTestStringConvertible {
    public var testDescription: String { name }
}

/// Shared setup of the RabbitMQ tests: a registry holding the backend, and the test server's
/// URL read lazily so that a missing `BROKERKIT_TEST_AMQP_URL` fails inside a test under CI.
enum RabbitTestSupport {
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        RabbitBackend.register(in: registry)
        return registry
    }()

    static func url() throws -> String { try TestEnvironment.requireURL(.amqp) }

    /// The test URL with `path` as the vhost and `user`/`password` replaced.
    static func url(user: String? = nil, password: String? = nil, vhost: String? = nil) throws -> String {
        let base = try url()
        guard let (host, port) = TestEnvironment.hostAndPort(base) else {
            throw ConformanceFailure("cannot parse \(base)")
        }
        let parsed = try BrokerURL(base)
        let u = user ?? parsed.user ?? "guest"
        let p = password ?? parsed.password ?? "guest"
        let v = vhost ?? parsed.path
        return "amqp://\(u):\(p)@\(host):\(port)/\(v)"
    }

    static func harness(
        capabilities: BrokerCapabilities = RabbitBackend().capabilities,
        prefix: String = ""
    ) throws -> ConformanceHarness {
        ConformanceHarness(
            name: "amqp",
            url: try url(),
            capabilities: capabilities,
            unreachableURL: "amqp://guest:guest@127.0.0.1:1/",
            options: prefix.isEmpty ? [:] : ["prefix": prefix],
            registry: registry
        )
    }

    /// Runs a conformance case under its own destination prefix and deletes what it created
    /// afterwards, so repeated runs do not pile up queues on the test server.
    static func runCase(
        _ testCase: ConformanceCase,
        capabilities: BrokerCapabilities = RabbitBackend().capabilities
    ) async throws {
        let prefix = "t\(UUID().uuidString.prefix(6).lowercased())-"
        let harness = try harness(capabilities: capabilities, prefix: prefix)
        try await RabbitServerGate.shared.withShared {
            do {
                try await ConformanceSuite.run(testCase, on: harness)
            } catch {
                await cleanUp(prefix: prefix)
                throw error
            }
            await cleanUp(prefix: prefix)
        }
    }

    /// Deletes every destination (and the catalog) under `prefix`.
    static func cleanUp(prefix: String) async {
        guard let broker = try? await connect(["prefix": prefix]) else { return }
        if let destinations = try? await broker.listDestinations() {
            for destination in destinations { try? await broker.deleteDestination(destination.name) }
        }
        try? await broker.deleteDestination("__brokerkit.catalog")
        await broker.close()
    }

    static func connect(_ options: [String: String] = [:]) async throws -> any Broker {
        try await Brokers.connect(url: try url(), options: options, registry: registry)
    }

    /// The node name for `rabbitmqctl -n` (from `BROKERKIT_TEST_AMQP_NODE`).
    static var node: String? {
        let value = ProcessInfo.processInfo.environment["BROKERKIT_TEST_AMQP_NODE"]
        return value?.isEmpty == false ? value : nil
    }

    /// Runs a program, returning its exit status and output.
    @discardableResult
    /// Runs a command on a thread of its own (never blocking the cooperative pool).
    static func run(
        _ executable: String,
        _ arguments: [String],
        input: String? = nil
    ) async throws -> (status: Int32, output: String) {
        try await TestEnvironment.blocking { try runBlocking(executable, arguments, input: input) }
    }

    private static func runBlocking(
        _ executable: String,
        _ arguments: [String],
        input: String? = nil
    ) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [executable] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        if let input {
            let inputPipe = Pipe()
            process.standardInput = inputPipe
            try process.run()
            inputPipe.fileHandleForWriting.write(Data(input.utf8))
            try inputPipe.fileHandleForWriting.close()
        } else {
            try process.run()
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func rabbitmqctl(_ arguments: [String]) async throws -> String {
        guard let node else {
            throw ConformanceFailure("BROKERKIT_TEST_AMQP_NODE is not set (scripts/brokers.sh start writes it)")
        }
        let result = try await run("rabbitmqctl", ["-q", "-n", node] + arguments)
        guard result.status == 0 else {
            throw ConformanceFailure("rabbitmqctl \(arguments.joined(separator: " ")) failed: \(result.output)")
        }
        return result.output
    }
}

/// Keeps the broker restart test from running while other RabbitMQ tests use the server:
/// every test holds a shared turn; the restart test takes the server alone.
actor RabbitServerGate {
    static let shared = RabbitServerGate()
    private var users = 0
    private var exclusive = false
    private var exclusiveWaiting = 0

    func withShared<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        while exclusive || exclusiveWaiting > 0 { try await Task.sleep(for: .milliseconds(50)) }
        users += 1
        defer { users -= 1 }
        return try await body()
    }

    func withExclusive<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        exclusiveWaiting += 1
        while exclusive || users > 0 { try await Task.sleep(for: .milliseconds(50)) }
        exclusiveWaiting -= 1
        exclusive = true
        defer { exclusive = false }
        return try await body()
    }
}

extension RabbitTestSupport {
    /// Runs `body` and returns its result, or nil when it has not finished within `limit`.
    /// Unlike a task-group race, a `body` that never returns (a call that ignores
    /// cancellation) is left behind instead of keeping the test waiting.
    static func within<T: Sendable>(
        _ limit: Duration,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T? {
        let race = Race<T>()
        let outcome: Result<T, any Error>? = await withCheckedContinuation { continuation in
            race.slot.withLock { $0 = continuation }
            Task {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                race.finish(result)
            }
            Task {
                try? await Task.sleep(for: limit)
                race.finish(nil)
            }
        }
        return try outcome?.get()
    }

    private final class Race<T: Sendable>: Sendable {
        let slot = Mutex<CheckedContinuation<Result<T, any Error>?, Never>?>(nil)
        func finish(_ result: Result<T, any Error>?) { slot.withLock { $0.take() }?.resume(returning: result) }
    }
}
