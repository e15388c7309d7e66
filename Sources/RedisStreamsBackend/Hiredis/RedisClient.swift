import BrokerAPI
import Foundation
import Logging

/// A hiredis connection on its own thread, with reconnect. Every call hops to the
/// connection's `ConnectionThread`, so blocking socket I/O never runs on the cooperative pool.
///
/// I/O failures (Redis restarted, network blip) drop the connection; the next call
/// reconnects with backoff for up to `operation.timeout` and retries the command, so a
/// publish is either acknowledged by Redis or reported as failed (at-least-once, never lost).
final class RedisClient: Sendable {
    /// `@unchecked Sendable` is safe: the connection is only touched from `thread`.
    private final class Box: @unchecked Sendable {
        let connection: HiredisConnection
        init(_ connection: HiredisConnection) { self.connection = connection }
    }

    private let box: Box
    private let thread: ConnectionThread
    let server: String
    let operationTimeout: Duration
    let logger: Logger

    init(endpoint: HiredisConnection.Endpoint, server: String, name: String, operationTimeout: Duration, logger: Logger) {
        self.box = Box(HiredisConnection(endpoint: endpoint))
        self.thread = ConnectionThread(name: "redis-\(name)")
        self.server = server
        self.operationTimeout = operationTimeout
        self.logger = logger
    }

    /// Connects now, so a bad address or password fails at connect time.
    func connect() async throws {
        let box = self.box
        let server = self.server
        try await thread.run {
            do { try box.connection.connect() } catch let failure as RedisFailure {
                throw RedisClient.map(failure, server: server, destination: nil)
            }
        }
    }

    /// Runs `args`; error replies come back as `.error`.
    func send(_ args: [RedisArgument], retry: Bool = true) async throws -> RedisReply {
        try await pipeline([args], retry: retry)[0]
    }

    /// Runs `commands` in one round trip.
    func pipeline(_ commands: [[RedisArgument]], retry: Bool = true, socketTimeout: Duration? = nil) async throws -> [RedisReply] {
        let box = self.box
        let server = self.server
        let deadline = ContinuousClock.now + operationTimeout
        let logger = self.logger
        return try await thread.run {
            var delay = Duration.milliseconds(50)
            while true {
                do {
                    if let socketTimeout, box.connection.isConnected { box.connection.setTimeout(socketTimeout) }
                    defer { if socketTimeout != nil { box.connection.setTimeout(box.connection.endpoint.commandTimeout) } }
                    return try box.connection.pipeline(commands)
                } catch let failure as RedisFailure {
                    guard case .io = failure, retry, ContinuousClock.now + delay < deadline else {
                        throw RedisClient.map(failure, server: server, destination: nil)
                    }
                    logger.warning("redis \(server): \(failure); reconnecting in \(delay)")
                    Thread.sleep(forTimeInterval: delay.timeInterval)
                    delay = min(delay * 2, .seconds(1))
                    do { try box.connection.connect() } catch let again as RedisFailure {
                        if case .server = again { throw RedisClient.map(again, server: server, destination: nil) }
                    }
                }
            }
        }
    }

    /// Runs `args` and throws a `BrokerError` for an error reply.
    func checked(_ args: [RedisArgument], destination: String? = nil) async throws -> RedisReply {
        let reply = try await send(args)
        if let error = reply.errorText { throw RedisClient.map(.server(error), server: server, destination: destination) }
        return reply
    }

    func close() {
        let box = self.box
        thread.submit { box.connection.close() }
        thread.shutdown()
    }

    static func map(_ failure: RedisFailure, server: String, destination: String?) -> BrokerError {
        switch failure {
        case .io(let text):
            return BrokerError(.connectionFailed, "redis at \(server): \(text)", backend: "redis", destination: destination)
        case .server(let text):
            if text.hasPrefix("WRONGPASS") || text.hasPrefix("NOAUTH") || text.contains("invalid password")
                || text.contains("invalid username-password")
            {
                return BrokerError(.authenticationFailed, "redis at \(server) rejected the credentials: \(text)", backend: "redis", destination: destination)
            }
            if text.hasPrefix("WRONGTYPE") {
                return BrokerError(
                    .wrongDestinationKind, "redis at \(server): key '\(destination ?? "?")' holds another type, not a stream: \(text)",
                    backend: "redis", destination: destination)
            }
            if text.contains("invalid bulk length") || text.contains("Protocol error") {
                return BrokerError(.messageTooLarge, "redis at \(server) rejected the request (proto-max-bulk-len): \(text)", backend: "redis", destination: destination)
            }
            if text.hasPrefix("NOGROUP") || text.contains("no such key") {
                return BrokerError(.unknownDestination, "redis at \(server): \(text)", backend: "redis", destination: destination)
            }
            return BrokerError(.brokerError, "redis at \(server): \(text)", backend: "redis", destination: destination)
        }
    }
}
