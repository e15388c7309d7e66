@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization

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
    private let queue = Mutex<[Request]>([])
    let server: String
    let operationTimeout: Duration
    let logger: Logger

    init(endpoint: HiredisConnection.Endpoint, server: String, name: String, operationTimeout: Duration, logger: Logger)
    {
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

    /// One caller's commands waiting for the connection thread.
    private struct Request: Sendable {
        let commands: [[RedisArgument]]
        let retry: Bool
        let socketTimeout: Duration?
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<[RedisReply], any Error>
    }

    /// Runs `commands` in one round trip.
    ///
    /// Calls that arrive while the connection is busy are coalesced: the thread writes all
    /// waiting requests at once and reads all replies in one round trip (hiredis pipelining),
    /// so concurrent acks and publishes share round trips instead of queueing for them.
    func pipeline(
        _ commands: [[RedisArgument]],
        retry: Bool = true,
        socketTimeout: Duration? = nil
    ) async throws -> [RedisReply] {
        let deadline = ContinuousClock.now + operationTimeout
        return try await withCheckedThrowingContinuation { continuation in
            let request = Request(
                commands: commands,
                retry: retry,
                socketTimeout: socketTimeout,
                deadline: deadline,
                continuation: continuation
            )
            let first = queue.withLock { waiting -> Bool in
                waiting.append(request)
                return waiting.count == 1
            }
            if first {
                let accepted = thread.trySubmit { [self] in self.drain() }
                if !accepted {
                    let stranded = queue.withLock { waiting -> [Request] in
                        defer { waiting = [] }
                        return waiting
                    }
                    for request in stranded {
                        request.continuation.resume(
                            throwing: BrokerError.closed("redis connection to \(server)", backend: "redis")
                        )
                    }
                }
            }
        }
    }

    /// On the connection thread: takes every waiting request and runs them together.
    private func drain() {
        while true {
            let batch = queue.withLock { waiting -> [Request] in
                // Keep the first element in place until done so new arrivals don't schedule a second drain.
                waiting
            }
            if batch.isEmpty { return }
            // Requests with their own socket timeout (blocking reads) run alone.
            let group: [Request] =
                batch[0].socketTimeout != nil ? [batch[0]] : Array(batch.prefix { $0.socketTimeout == nil })
            let results = execute(group)
            let more = queue.withLock { waiting -> Bool in
                waiting.removeFirst(group.count)
                return !waiting.isEmpty
            }
            for (request, result) in zip(group, results) { request.continuation.resume(with: result) }
            if !more { return }
        }
    }

    private func execute(_ group: [Request]) -> [Result<[RedisReply], any Error>] {
        let connection = box.connection
        var delay = Duration.milliseconds(50)
        let commands = group.flatMap(\.commands)
        let retry = group.allSatisfy(\.retry)
        let deadline = group.map(\.deadline).min()!
        let socketTimeout = group.count == 1 ? group[0].socketTimeout : nil
        /// Sleeps before another try (doubling the pause) if retrying is allowed and the
        /// deadline leaves room; says whether to try again.
        func backOff(_ why: String) -> Bool {
            guard retry, ContinuousClock.now + delay < deadline else { return false }
            logger.warning("redis \(server): \(why); retrying in \(delay)")
            Thread.sleep(forTimeInterval: delay.timeInterval)
            delay = min(delay * 2, .seconds(1))
            return true
        }
        while true {
            do {
                if let socketTimeout, connection.isConnected { connection.setTimeout(socketTimeout) }
                defer { if socketTimeout != nil { connection.setTimeout(connection.endpoint.commandTimeout) } }
                let replies = try connection.pipeline(commands)
                // A restarted Redis answers every command with LOADING until its dataset is
                // back in memory: nothing ran, so the whole round trip is tried again.
                if !replies.isEmpty, replies.allSatisfy({ $0.errorText?.hasPrefix("LOADING") == true }),
                    backOff("loading its dataset")
                {
                    continue
                }
                var results: [Result<[RedisReply], any Error>] = []
                var offset = 0
                for request in group {
                    results.append(.success(Array(replies[offset..<(offset + request.commands.count)])))
                    offset += request.commands.count
                }
                return results
            } catch let failure as RedisFailure {
                guard case .io = failure, backOff("\(failure); reconnecting") else {
                    let error = RedisClient.map(failure, server: server, destination: nil)
                    return group.map { _ in .failure(error) }
                }
                do { try connection.connect() } catch let again as RedisFailure {
                    if case .server = again {
                        let error = RedisClient.map(again, server: server, destination: nil)
                        return group.map { _ in .failure(error) }
                    }
                } catch {
                    return group.map { _ in .failure(error) }
                }
            } catch {
                return group.map { _ in .failure(error) }
            }
        }
    }

    /// Runs `args` and throws a `BrokerError` for an error reply.
    func checked(_ args: [RedisArgument], destination: String? = nil) async throws -> RedisReply {
        let reply = try await send(args)
        if let error = reply.errorText {
            throw RedisClient.map(.server(error), server: server, destination: destination)
        }
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
            return BrokerError(
                .connectionFailed,
                "redis at \(server): \(text)",
                backend: "redis",
                destination: destination
            )
        case .server(let text):
            if text.hasPrefix("WRONGPASS") || text.hasPrefix("NOAUTH") || text.contains("invalid password")
                || text.contains("invalid username-password")
            {
                return BrokerError(
                    .authenticationFailed,
                    "redis at \(server) rejected the credentials: \(text)",
                    backend: "redis",
                    destination: destination
                )
            }
            if text.hasPrefix("WRONGTYPE") {
                return BrokerError(
                    .wrongDestinationKind,
                    "redis at \(server): key '\(destination ?? "?")' holds another type, not a stream: \(text)",
                    backend: "redis",
                    destination: destination
                )
            }
            if text.contains("invalid bulk length") || text.contains("Protocol error") {
                return BrokerError(
                    .messageTooLarge,
                    "redis at \(server) rejected the request (proto-max-bulk-len): \(text)",
                    backend: "redis",
                    destination: destination
                )
            }
            if text.hasPrefix("NOGROUP") || text.contains("no such key") {
                return BrokerError(
                    .unknownDestination,
                    "redis at \(server): \(text)",
                    backend: "redis",
                    destination: destination
                )
            }
            return BrokerError(.brokerError, "redis at \(server): \(text)", backend: "redis", destination: destination)
        }
    }
}
