import BrokerAPI
import Foundation

/// How the conformance suite reaches one backend.
///
/// ```swift
/// let harness = ConformanceHarness(name: "redis", url: "redis://127.0.0.1:6390", capabilities: backend.capabilities,
///                                  unreachableURL: "redis://127.0.0.1:1")
/// for testCase in ConformanceSuite.cases(for: harness.capabilities) {
///     try await ConformanceSuite.run(testCase, on: harness)
/// }
/// ```
public struct ConformanceHarness: Sendable {
    /// Label used in failure messages.
    public let name: String
    /// The URL every case connects to (all connections must share state, as clients of one server do).
    public let url: String
    /// The capabilities the backend claims; cases needing others are skipped.
    public let capabilities: BrokerCapabilities
    /// A URL of this backend where nothing listens, for the unreachable-broker case.
    public let unreachableURL: String?
    /// Extra options added to every connection (e.g. shorter timeouts for tests).
    public let options: [String: String]
    /// Registry holding the backend.
    public let registry: BrokerRegistry

    public init(
        name: String,
        url: String,
        capabilities: BrokerCapabilities,
        unreachableURL: String? = nil,
        options: [String: String] = [:],
        registry: BrokerRegistry = .shared
    ) {
        self.name = name
        self.url = url
        self.capabilities = capabilities
        self.unreachableURL = unreachableURL
        self.options = options
        self.registry = registry
    }

    /// A new connection, with `extra` options on top of ``options``.
    public func connect(_ extra: [String: String] = [:]) async throws -> any Broker {
        let merged = options.merging(extra) { $1 }
        return try await Brokers.connect(url: url, options: merged, registry: registry)
    }
}

/// A conformance assertion that did not hold.
public struct ConformanceFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What a case body gets: the harness, a connected broker, unique names and helpers.
public final class ConformanceContext: Sendable {
    public let harness: ConformanceHarness
    public let broker: any Broker
    public let caseName: String
    let runID: String
    private let arrivals = LockedBox<[String: Date]>([:])

    init(harness: ConformanceHarness, broker: any Broker, caseName: String) {
        self.harness = harness
        self.broker = broker
        self.caseName = caseName
        self.runID = String(UUID().uuidString.prefix(8)).lowercased()
    }

    /// A destination name unique to this run of this case.
    public func name(_ label: String) -> String {
        "bk-\(label)-\(runID)"
    }

    /// Throws a ``ConformanceFailure`` unless `condition` holds.
    public func expect(
        _ condition: Bool,
        _ message: @autoclosure () -> String,
        file: StaticString = #fileID,
        line: UInt = #line
    ) throws {
        if !condition { throw ConformanceFailure("[\(harness.name)] \(caseName): \(message()) (\(file):\(line))") }
    }

    /// Fails with `message`.
    public func fail(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> ConformanceFailure {
        ConformanceFailure("[\(harness.name)] \(caseName): \(message) (\(file):\(line))")
    }

    /// Receives `count` deliveries (acking each unless `ack` is false), failing if they do
    /// not arrive within `timeout`.
    public func receive(
        _ count: Int,
        from consumer: any MessageConsumer,
        ack: Bool = true,
        timeout: Duration = .seconds(15),
        file: StaticString = #fileID,
        line: UInt = #line
    ) async throws -> [Delivery] {
        var received: [Delivery] = []
        let deadline = ContinuousClock.now + timeout
        while received.count < count {
            let left = deadline - ContinuousClock.now
            guard left > .zero, let delivery = try await consumer.next(timeout: left) else {
                throw fail(
                    "expected \(count) deliveries within \(timeout), got \(received.count)",
                    file: file,
                    line: line
                )
            }
            arrivals.withLock { $0[delivery.message.id] = Date() }
            if ack { try await delivery.ack() }
            received.append(delivery)
        }
        return received
    }

    /// When `delivery` was received (recorded by ``receive(_:from:ack:timeout:file:line:)``).
    public func arrival(of delivery: Delivery) throws -> Date {
        guard let date = arrivals.withLock({ $0[delivery.message.id] }) else {
            throw fail("no arrival time recorded for \(delivery.message.id)")
        }
        return date
    }

    /// Waits until `condition` returns true, polling every 25 ms, failing after `timeout`.
    public func eventually(
        _ what: String,
        timeout: Duration = .seconds(15),
        file: StaticString = #fileID,
        line: UInt = #line,
        _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            if try await condition() { return }
            if ContinuousClock.now >= deadline {
                throw fail("timed out after \(timeout) waiting for \(what)", file: file, line: line)
            }
            try await Task.sleep(for: .milliseconds(25))
        }
    }

    /// Expects `body` to throw a ``BrokerError`` with `code`; returns it.
    @discardableResult
    public func expectError(
        _ code: BrokerError.Code,
        file: StaticString = #fileID,
        line: UInt = #line,
        _ body: () async throws -> Void
    ) async throws -> BrokerError {
        do {
            try await body()
        } catch let error as BrokerError {
            try expect(error.code == code, "expected BrokerError.\(code), got \(error)", file: file, line: line)
            return error
        } catch {
            throw fail("expected BrokerError.\(code), got \(type(of: error)): \(error)", file: file, line: line)
        }
        throw fail("expected BrokerError.\(code), but nothing was thrown", file: file, line: line)
    }
}

/// A thread-safe collector used by case bodies.
public final class Collector<Element: Sendable>: Sendable {
    private let storage = LockedBox<[Element]>([])
    public init() {}
    public func append(_ element: Element) { storage.withLock { $0.append(element) } }
    public var values: [Element] { storage.withLock { $0 } }
    public var count: Int { storage.withLock { $0.count } }
}

/// A one-way latch that case bodies open once; waiters poll it (they run in handlers, which
/// must stay cancellable).
public final class Latch: Sendable {
    private let isOpen = LockedBox(false)
    public init() {}
    public func open() { isOpen.withLock { $0 = true } }
    public var opened: Bool { isOpen.withLock { $0 } }
    /// Waits until the latch is open, at most `timeout`.
    public func wait(timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !opened, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }
}

/// A tiny lock box (Mutex cannot be stored in a class generic over a non-Sendable element).
final class LockedBox<Value: Sendable>: @unchecked Sendable {
    // Safe: every access goes through `lock`.
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func withLock<T>(_ body: (inout Value) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}
