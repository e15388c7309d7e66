import Foundation

/// Runs `operation`, cancelling it and throwing ``BrokerError/Code/jobTimeout`` if it takes
/// longer than `timeout`.
@_spi(BrokerBackend) public func withBrokerTimeout<T: Sendable>(
    _ timeout: Duration,
    what: String,
    backend: String? = nil,
    destination: String? = nil,
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw BrokerError(
                .jobTimeout,
                "\(what) exceeded its timeout of \(timeout)",
                backend: backend,
                destination: destination
            )
        }
        return value
    }
}
