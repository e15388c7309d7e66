@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Counters an example's consumers update from many tasks at once.
final class ExampleTally<Counts: Sendable>: Sendable {
    private let counts: Mutex<Counts>

    init(_ initial: Counts) { counts = Mutex(initial) }

    func update<R: Sendable>(_ body: (inout Counts) -> R) -> R {
        counts.withLock { body(&$0) }
    }

    var snapshot: Counts { counts.withLock { $0 } }
}

/// Helpers shared by the example apps.
enum ExampleSupport {
    /// Creates `name` as `kind`, or accepts it when it already exists with that kind.
    static func ensureDestination(
        _ name: String,
        kind: DestinationKind,
        options: DestinationOptions = DestinationOptions(),
        on broker: any Broker
    ) async throws {
        do {
            try await broker.createDestination(name, kind: kind, options: options)
        } catch {
            // Some brokers refuse to re-create; an existing destination of the right kind is fine.
            let existing = try? await broker.listDestinations().first { $0.name == name }
            guard let existing, existing.kind == kind else { throw error }
        }
    }

    /// A short random id that tells this run's messages from those of earlier runs.
    static func newRunID() -> String {
        String(UUID().uuidString.lowercased().prefix(8))
    }

    /// How far the work got: whether it is done, and a human-readable status.
    struct Progress: Sendable {
        var done: Bool
        var status: String
    }

    /// Polls `check` until it reports done; throws ``ExampleError/timedOut(example:after:progress:)``
    /// with the last status when `timeout` passes. Errors of `check` (a broker briefly
    /// unavailable) are retried until the deadline.
    static func waitUntilDone(
        example: String,
        timeout: Duration,
        poll: Duration = .milliseconds(25),
        check: @Sendable () async throws -> Progress
    ) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var lastStatus = "nothing checked yet"
        while true {
            do {
                let progress = try await check()
                if progress.done { return }
                lastStatus = progress.status
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                lastStatus = "\(lastStatus) (last check failed: \(error))"
            }
            if clock.now >= deadline {
                throw ExampleError.timedOut(example: example, after: timeout, progress: lastStatus)
            }
            try await Task.sleep(for: poll)
        }
    }

    /// Lag of `group` on `stats` (nil when the broker does not list the group).
    static func lag(of group: String, in stats: DestinationStats) -> Int? {
        stats.groups.first { $0.group == group }?.lag
    }

    /// Runs `services` in a `ServiceGroup` while `body` runs, then shuts them down gracefully
    /// (each drains its in-flight work) and returns `body`'s result. A service that stops on its
    /// own before `body` finished ends the run with an error.
    static func withServices<T: Sendable>(
        _ services: [(name: String, service: any Service)],
        example: String,
        logger: Logger,
        body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services.map {
                    ServiceGroupConfiguration.ServiceConfiguration(service: $0.service, serviceName: $0.name)
                },
                logger: logger
            )
        )
        return try await withThrowingTaskGroup(of: ServicesOutcome<T>.self) { tasks in
            tasks.addTask {
                try await group.run()
                return .servicesEnded
            }
            tasks.addTask {
                do { return .body(.success(try await body())) } catch { return .body(.failure(error)) }
            }
            guard let first = try await tasks.next() else {
                throw ExampleError.servicesStopped(example: example, reason: "nothing ran")
            }
            switch first {
            case .servicesEnded:
                tasks.cancelAll()
                throw ExampleError.servicesStopped(
                    example: example,
                    reason: "consumers and workers stopped before the work was done"
                )
            case .body(let result):
                await group.triggerGracefulShutdown()
                var shutdownError: (any Error)?
                do { try await tasks.waitForAll() } catch { shutdownError = error }
                let value = try result.get()  // the body's own error wins
                if let shutdownError { throw shutdownError }
                return value
            }
        }
    }

    private enum ServicesOutcome<T: Sendable>: Sendable {
        case body(Result<T, any Error>)
        case servicesEnded
    }

    /// JSON with ISO 8601 dates and sorted keys, as other languages read it.
    static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(value)
    }

    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(type, from: data)
    }

    /// `value` seconds with two decimals.
    static func seconds(_ duration: Duration) -> String {
        String(format: "%.2f s", duration.timeInterval)
    }
}

/// A ``DeliveryProcessor`` as a swift-service-lifecycle `Service`: graceful shutdown stops
/// fetching and lets running handlers finish.
final class ProcessorService: Service, Sendable {
    let processor: DeliveryProcessor

    init(_ processor: DeliveryProcessor) { self.processor = processor }

    func run() async throws {
        let processor = self.processor
        try await withGracefulShutdownHandler {
            try await processor.run()
        } onGracefulShutdown: {
            processor.stop()
        }
    }
}
