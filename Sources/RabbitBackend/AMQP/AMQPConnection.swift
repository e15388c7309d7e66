@_spi(BrokerBackend) import BrokerAPI
import CRabbitMQ
import Foundation
import Logging
import Synchronization

/// Where and how to connect: host, credentials, vhost, TLS, negotiated limits and timeouts.
struct AMQPEndpoint: Sendable {
    struct TLS: Sendable {
        var caPath: String?
        var certPath: String?
        var keyPath: String?
        var verify: Bool
    }
    var host: String
    var port: Int
    var vhost: String
    var user: String
    var password: String
    var tls: TLS?
    /// Heartbeat interval in seconds (0: off).
    var heartbeat: Int
    var frameMax: Int
    var channelMax: Int
    var connectTimeout: Duration
    var operationTimeout: Duration
    /// The broker URL with the password replaced, for messages.
    var redactedURL: String
}

/// One rabbitmq-c connection, confined to its own ``ConnectionThread``.
///
/// rabbitmq-c connections are not thread-safe, and most of their calls block. Every call into
/// rabbitmq-c therefore runs as a job on `thread`, never on Swift's cooperative pool. Between
/// jobs a *pump* reads what the broker pushes (deliveries, publisher confirms, returns,
/// channel closes, heartbeats): it waits in `poll(2)` on the socket and on a wake-up pipe, so
/// a new job interrupts the wait at once and jobs never queue behind a blocking read.
///
/// When the connection drops (broker restart, network), the pump reconnects with exponential
/// backoff and calls ``onOpen`` again, so owners redeclare their channels, confirm mode,
/// prefetch and consumers; ``generation`` counts the sessions so that owners can tell stale
/// delivery tags from live ones.
///
/// `@unchecked Sendable` is safe: the mutable state below the "thread-confined" mark is only
/// touched by jobs on `thread`; the rest is atomics, immutable values, or the pipe's file
/// descriptors, whose writes are thread-safe.
final class AMQPConnection: @unchecked Sendable {
    let endpoint: AMQPEndpoint
    let name: String
    let logger: Logger
    private let thread: ConnectionThread
    private let pendingJobs = Atomic<Int>(0)
    private let closing = Atomic<Bool>(false)
    private let up = Atomic<Bool>(false)
    private let sessions = Atomic<UInt64>(0)
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// True while the pump waits in `poll(2)` (see ``isWaiting``).
    private let waiting = Atomic<Bool>(false)
    /// True between RabbitMQ's `connection.blocked` and `connection.unblocked` (a resource
    /// alarm: the broker has stopped reading what this connection publishes).
    private let blocked = Atomic<Bool>(false)
    /// A duplicate of the session's socket descriptor, for ``abortSocket()`` from another
    /// thread; -1 without a session. Our own descriptor: rabbitmq-c closes its own on an RPC
    /// or heartbeat timeout before we hear of it, and a shutdown through a number the system
    /// had handed to someone else meanwhile would hit the wrong socket. `shutdown(2)` on the
    /// duplicate acts on the socket itself.
    private let socketFD = Mutex<Int32>(-1)

    // MARK: Thread-confined

    private var state: amqp_connection_state_t?
    private var openChannels = Set<UInt16>()
    private var reconnectAt: ContinuousClock.Instant?
    private var reconnectFailures = 0
    private var lastTick = ContinuousClock.now
    private var lostError: BrokerError?

    /// Called on the thread for everything the broker pushes.
    var onIncoming: ((AMQPIncoming) -> Void)?
    /// Called on the thread after every successful (re)connect: open channels, confirm mode,
    /// prefetch, consumers. Throwing drops the session and retries later.
    var onOpen: (() throws -> Void)?
    /// Called on the thread when the session breaks.
    var onLost: ((BrokerError) -> Void)?
    /// Called on the thread about every ``tickInterval`` while the pump runs.
    var onTick: (() -> Void)?
    /// Called on the thread on every turn of the pump: `idle` is true when nothing is left to
    /// read and the pump is about to wait. Owners write what they batched up (acks) here; a
    /// returned duration shortens that wait (to write what is batched meanwhile soon).
    var onTurn: ((_ idle: Bool) -> Duration?)?
    var tickInterval: Duration = .milliseconds(100)

    init(endpoint: AMQPEndpoint, name: String, logger: Logger) {
        self.endpoint = endpoint
        self.name = name
        var logger = logger
        logger[metadataKey: "amqp.connection"] = "\(name)"
        self.logger = logger
        // rabbitmq-c 0.11 decodes nested tables and arrays recursively with no depth limit
        // (0.14 added one), about 26,000 levels in a 128 KiB frame: a stack in proportion to
        // the frame size, so that a crafted header cannot overflow it.
        self.thread = ConnectionThread(name: "amqp-\(name)", stackSize: max(16 << 20, endpoint.frameMax * 64))
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        if wakeRead >= 0 { Glibc.close(wakeRead) }
        if wakeWrite >= 0 { Glibc.close(wakeWrite) }
        socketFD.withLock { fd in if fd >= 0 { Glibc.close(fd) } }
    }

    /// The current session number (1 after the first connect; +1 per reconnect).
    var generation: UInt64 { sessions.load(ordering: .acquiring) }
    /// Whether a session is open right now.
    var isConnected: Bool { up.load(ordering: .acquiring) }
    var isClosed: Bool { closing.load(ordering: .acquiring) }

    // MARK: - Jobs

    /// Connects (no retry: the first failure is the caller's error), runs ``onOpen`` and
    /// starts the pump.
    func start() async throws {
        try await run { connection in
            try connection.connectNow()
            do {
                try connection.onOpen?()
            } catch {
                connection.teardown()
                throw error
            }
            connection.thread.submit { connection.pump() }
        }
    }

    /// Runs `body` on the connection's thread, interrupting the pump's wait.
    ///
    /// The job is queued *before* the pump is told about it: told first, the pump would hand
    /// the thread back to a queue that does not hold the job yet and go round again, spinning
    /// on a core while the caller — possibly preempted on the other one — has still to queue
    /// it (measured: publisher confirms with a 3–5 ms tail on 2 cores).
    @discardableResult
    func run<T: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let accepted = thread.trySubmit { [self] in
                pendingJobs.subtract(1, ordering: .acquiringAndReleasing)
                continuation.resume(with: Result { try body(self) })
            }
            if accepted {
                pendingJobs.add(1, ordering: .acquiringAndReleasing)
                wake()
            } else {
                continuation.resume(throwing: BrokerError.closed("connection thread '\(thread.name)'"))
            }
        }
    }

    /// Fire-and-forget variant of ``run(_:)``: false when the thread no longer takes jobs
    /// (the connection is closed), and then `body` never runs.
    @discardableResult
    func submit(_ body: @escaping @Sendable (AMQPConnection) -> Void) -> Bool {
        let accepted = thread.trySubmit { [self] in
            pendingJobs.subtract(1, ordering: .acquiringAndReleasing)
            body(self)
        }
        if accepted {
            pendingJobs.add(1, ordering: .acquiringAndReleasing)
            wake()
        }
        return accepted
    }

    /// Whether RabbitMQ has blocked publishing on this connection (resource alarm).
    var isBlocked: Bool { blocked.load(ordering: .acquiring) }

    /// Closes the session politely and ends the thread. Idempotent.
    ///
    /// Bounded: a job stuck in a send (rabbitmq-c waits for the socket without a deadline,
    /// and a broker in a resource alarm stops reading) has the socket shut down under it
    /// after `operation.timeout`, so the send fails and the close goes on.
    func close() async {
        guard !closing.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let done = OneShot()
        let accepted = submit { connection in
            connection.teardown()
            done.fire()
        }
        if accepted {
            let abort = DispatchWorkItem { [weak self] in
                guard let self else { return }
                logger.warning(
                    "closing \(endpoint.redactedURL): a call has not returned within operation.timeout \(endpoint.operationTimeout); shutting the socket down"
                )
                abortSocket()
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + endpoint.operationTimeout.timeInterval, execute: abort)
            await done.wait()
            abort.cancel()
        }
        thread.shutdown()
    }

    /// Shuts the session's socket down from any thread: a call blocked on it fails at once
    /// (and the session is dropped as broken). For calls that would otherwise never return.
    func abortSocket() {
        socketFD.withLock { fd in
            if fd >= 0 { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Starts what ``close()`` does and returns at once: for an owner dropped without being
    /// closed. The pump stops, a last job closes the session, and the thread ends.
    func closeInBackground() {
        guard !closing.exchange(true, ordering: .acquiringAndReleasing) else { return }
        submit { connection in connection.teardown() }
        thread.shutdown()
    }

    /// Whether the pump is waiting for the socket (or about to, after its idle ``onTurn``).
    /// Set before that `onTurn` runs, so an owner that batches work under its own lock, and
    /// checks this after adding to the batch, either has its work taken by that `onTurn` or
    /// sees `true` and calls ``nudge()``.
    var isWaiting: Bool { waiting.load(ordering: .sequentiallyConsistent) }

    /// Interrupts the pump's wait, so that it goes round (and calls ``onTurn``) at once.
    func nudge() { wake() }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func drainWake() {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { buffer in
            while read(wakeRead, buffer.baseAddress, buffer.count) > 0 {}
        }
    }

    // MARK: - Pump (on the thread)

    private func pump() {
        while !closing.load(ordering: .acquiring) {
            if pendingJobs.load(ordering: .acquiring) > 0 {
                thread.submit { [self] in pump() }
                return
            }
            guard let state else {
                reconnectStep()
                continue
            }
            do {
                if amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0 {
                    _ = onTurn?(false)
                    try readFrame(timeout: .zero)
                } else {
                    waiting.store(true, ordering: .sequentiallyConsistent)
                    let limit = onTurn?(true).map { max(0, Int($0.milliseconds)) } ?? 100
                    let ready = bk_poll_two(amqp_get_sockfd(state), wakeRead, Int32(min(100, limit)))
                    waiting.store(false, ordering: .sequentiallyConsistent)
                    if ready & 2 != 0 { drainWake() }
                    if ready & 1 != 0 || ContinuousClock.now - lastTick >= tickInterval {
                        // A zero-timeout read also lets rabbitmq-c send and check heartbeats.
                        try readFrame(timeout: .zero)
                    }
                }
            } catch let error as BrokerError {
                markBroken(error)
            } catch {
                markBroken(BrokerError(.connectionFailed, "\(error)", backend: AMQPError.backend))
            }
            if ContinuousClock.now - lastTick >= tickInterval {
                lastTick = ContinuousClock.now
                onTick?()
            }
        }
    }

    private func reconnectStep() {
        let now = ContinuousClock.now
        let at = reconnectAt ?? now
        if now < at {
            if bk_poll_two(wakeRead, -1, Int32(max(1, min(100, (at - now).milliseconds)))) != 0 { drainWake() }
            if now - lastTick >= tickInterval {
                lastTick = now
                onTick?()
            }
            return
        }
        do {
            try connectNow()
            try onOpen?()
            logger.info("reconnected to \(endpoint.redactedURL) after \(reconnectFailures + 1) attempt(s)")
            reconnectFailures = 0
            reconnectAt = nil
        } catch {
            let brokerError =
                error as? BrokerError ?? BrokerError(.connectionFailed, "\(error)", backend: AMQPError.backend)
            reconnectFailures += 1
            if state != nil { markBroken(brokerError) }
            let backoff = min(5_000, 100 * (1 << min(reconnectFailures, 6)))
            reconnectAt = ContinuousClock.now + .milliseconds(Int.random(in: backoff / 2...backoff))
            if reconnectFailures == 1 || reconnectFailures % 10 == 0 {
                logger.warning(
                    "reconnect to \(endpoint.redactedURL) failed (attempt \(reconnectFailures)): \(brokerError.message)"
                )
            }
        }
    }

    /// Drops the session after an I/O or protocol failure; the pump reconnects later.
    func markBroken(_ error: BrokerError) {
        guard let state else { return }
        forgetSocket()
        amqp_destroy_connection(state)
        self.state = nil
        openChannels = []
        up.store(false, ordering: .releasing)
        lostError = error
        if reconnectAt == nil { reconnectAt = ContinuousClock.now + .milliseconds(50) }
        if !closing.load(ordering: .acquiring) {
            logger.warning("connection to \(endpoint.redactedURL) lost: \(error.message)")
        }
        onLost?(error)
    }

    private func teardown() {
        guard let state else { return }
        var quick = timeval(tv_sec: 2, tv_usec: 0)
        amqp_set_rpc_timeout(state, &quick)
        if up.load(ordering: .acquiring) { _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS) }
        forgetSocket()
        amqp_destroy_connection(state)
        self.state = nil
        openChannels = []
        up.store(false, ordering: .releasing)
    }

    private func forgetSocket() {
        socketFD.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
        blocked.store(false, ordering: .releasing)
    }

    // MARK: - Connecting (on the thread)

    private func connectNow() throws {
        let url = endpoint.redactedURL
        guard let connection = amqp_new_connection() else {
            throw BrokerError(
                .connectionFailed,
                "cannot allocate a rabbitmq-c connection for \(url)",
                backend: AMQPError.backend
            )
        }
        var keep = false
        defer { if !keep { amqp_destroy_connection(connection) } }
        let socket: OpaquePointer?
        if let tls = endpoint.tls {
            socket = amqp_ssl_socket_new(connection)
            guard let socket else {
                throw BrokerError(
                    .connectionFailed,
                    "cannot create a TLS socket for \(url)",
                    backend: AMQPError.backend
                )
            }
            if let ca = tls.caPath {
                let status = amqp_ssl_socket_set_cacert(socket, ca)
                if status != AMQP_STATUS_OK.rawValue {
                    throw BrokerError.invalidConfiguration(
                        "option 'tls.ca' of amqp: cannot load CA file '\(ca)': \(AMQPError.statusText(status))",
                        backend: AMQPError.backend
                    )
                }
            }
            if let cert = tls.certPath, let key = tls.keyPath {
                let status = amqp_ssl_socket_set_key(socket, cert, key)
                if status != AMQP_STATUS_OK.rawValue {
                    throw BrokerError.invalidConfiguration(
                        "options 'tls.cert'/'tls.key' of amqp: cannot load '\(cert)' / '\(key)': \(AMQPError.statusText(status))",
                        backend: AMQPError.backend
                    )
                }
            }
            amqp_ssl_socket_set_verify_peer(socket, tls.verify ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(socket, tls.verify ? 1 : 0)
        } else {
            socket = amqp_tcp_socket_new(connection)
        }
        guard let socket else {
            throw BrokerError(.connectionFailed, "cannot create a socket for \(url)", backend: AMQPError.backend)
        }
        var timeout = timeval(endpoint.connectTimeout)
        let opened = amqp_socket_open_noblock(socket, endpoint.host, Int32(endpoint.port), &timeout)
        guard opened == AMQP_STATUS_OK.rawValue else {
            throw BrokerError(
                .connectionFailed,
                "cannot connect to \(url) (connect.timeout \(endpoint.connectTimeout)): \(AMQPError.statusText(opened))",
                backend: AMQPError.backend
            )
        }
        var handshake = timeval(endpoint.connectTimeout)
        amqp_set_handshake_timeout(connection, &handshake)
        let arena = AMQPArena()
        // `connection.blocked`: RabbitMQ tells a client that says it understands it when a
        // resource alarm stops it reading what the connection publishes (rabbitmq-c merges
        // these capabilities into its own).
        var properties = arena.table(
            AMQPTable([
                "connection_name": .text("brokerkit \(name)"),
                "capabilities": .table(AMQPTable(["connection.blocked": .bool(true)])),
            ])
        )
        let reply = bk_amqp_login_plain_properties(
            connection,
            endpoint.vhost,
            Int32(endpoint.channelMax),
            Int32(endpoint.frameMax),
            Int32(endpoint.heartbeat),
            &properties,
            endpoint.user,
            endpoint.password
        )
        if reply.reply_type != AMQP_RESPONSE_NORMAL {
            throw loginError(reply, connection: connection)
        }
        var rpc = timeval(endpoint.operationTimeout)
        amqp_set_rpc_timeout(connection, &rpc)
        keep = true
        state = connection
        let fd = dup(amqp_get_sockfd(connection))
        socketFD.withLock { old in
            if old >= 0 { Glibc.close(old) }
            old = fd
        }
        blocked.store(false, ordering: .releasing)
        openChannels = []
        lostError = nil
        sessions.add(1, ordering: .acquiringAndReleasing)
        up.store(true, ordering: .releasing)
    }

    private func loginError(_ reply: amqp_rpc_reply_t, connection: amqp_connection_state_t) -> BrokerError {
        let url = endpoint.redactedURL
        let user = endpoint.user
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let text = String(amqpBytes: close.reply_text)
            var ok = amqp_connection_close_ok_t()
            _ = amqp_send_method(connection, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
            switch close.reply_code {
            case 403:
                return BrokerError(
                    .authenticationFailed,
                    "RabbitMQ at \(url) refused the login of user '\(user)': \(close.reply_code) \(text)",
                    backend: AMQPError.backend
                )
            case 530:
                return BrokerError.invalidConfiguration(
                    "RabbitMQ at \(url) refused virtual host '\(endpoint.vhost)' (does it exist, and may '\(user)' use it?): \(close.reply_code) \(text)",
                    backend: AMQPError.backend
                )
            default:
                return AMQPError.server(code: close.reply_code, text: text, what: "login", destination: nil, url: url)
            }
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            let status = reply.library_error
            if status == AMQP_STATUS_TIMEOUT.rawValue {
                return BrokerError(
                    .connectionFailed,
                    "login to \(url) did not complete within connect.timeout \(endpoint.connectTimeout)",
                    backend: AMQPError.backend
                )
            }
            if status == AMQP_STATUS_CONNECTION_CLOSED.rawValue || status == AMQP_STATUS_SOCKET_CLOSED.rawValue {
                return BrokerError(
                    .authenticationFailed,
                    "RabbitMQ at \(url) closed the connection during login of user '\(user)' (wrong credentials?): \(AMQPError.statusText(status))",
                    backend: AMQPError.backend
                )
            }
            return BrokerError(
                .connectionFailed,
                "login to \(url) failed: \(AMQPError.statusText(status))",
                backend: AMQPError.backend
            )
        default:
            return BrokerError(.connectionFailed, "login to \(url) failed (no reply)", backend: AMQPError.backend)
        }
    }

    // MARK: - Frames (on the thread)

    /// Hands frames that rabbitmq-c queued during an RPC (deliveries, confirms) to
    /// ``onIncoming`` now, instead of on the pump's next turn.
    func drainQueuedFrames() throws {
        while let state, amqp_frames_enqueued(state) != 0 { try readFrame(timeout: .zero) }
    }

    /// Reads and dispatches frames until none arrives for `idle` (e.g. deliveries the broker
    /// had already sent when it confirmed a `basic.cancel`).
    func drainFrames(idle: Duration) throws {
        try drainQueuedFrames()
        while let state {
            if amqp_frames_enqueued(state) == 0 && amqp_data_in_buffer(state) == 0
                && bk_poll_two(amqp_get_sockfd(state), -1, Int32(idle.milliseconds)) == 0
            {
                return
            }
            try readFrame(timeout: .zero)
        }
    }

    /// Reads one frame (if any arrives within `timeout`) and hands it to ``onIncoming``.
    private func readFrame(timeout: Duration) throws {
        if let incoming = try nextIncoming(timeout: timeout, channel: nil) { onIncoming?(incoming) }
        if let state { amqp_maybe_release_buffers(state) }
    }

    /// Waits up to `timeout` for one frame; returns what it means, or `nil` for a timeout or
    /// a frame that needs no action. With `channel`, frames on other channels are dispatched
    /// to ``onIncoming`` and `nil` is returned for them.
    private func nextIncoming(timeout: Duration, channel: UInt16?) throws -> AMQPIncoming? {
        let state = try requireState("reading from the broker")
        var frame = amqp_frame_t()
        var tv = timeval(timeout)
        let status = amqp_simple_wait_frame_noblock(state, &frame, &tv)
        if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
        guard status == AMQP_STATUS_OK.rawValue else {
            throw AMQPError.library(
                status,
                what: "reading from the broker",
                destination: nil,
                url: endpoint.redactedURL
            )
        }
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { return nil }
        let incoming = try decode(frame, state: state)
        if let channel, let incoming, incoming.channel != channel {
            onIncoming?(incoming)
            return nil
        }
        return incoming
    }

    private func decode(_ frame: amqp_frame_t, state: amqp_connection_state_t) throws -> AMQPIncoming? {
        let channel = frame.channel
        let decoded = frame.payload.method.decoded
        switch frame.payload.method.id {
        case AMQP_BASIC_DELIVER_METHOD:
            let deliver = decoded!.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            let consumerTag = String(amqpBytes: deliver.consumer_tag)
            let exchange = String(amqpBytes: deliver.exchange)
            let routingKey = String(amqpBytes: deliver.routing_key)
            let (properties, body) = try readContent(channel: channel, state: state)
            return .delivery(
                AMQPDelivery(
                    channel: channel,
                    deliveryTag: deliver.delivery_tag,
                    redelivered: deliver.redelivered != 0,
                    exchange: exchange,
                    routingKey: routingKey,
                    consumerTag: consumerTag,
                    properties: properties,
                    body: body
                )
            )
        case AMQP_BASIC_RETURN_METHOD:
            let returned = decoded!.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let text = String(amqpBytes: returned.reply_text)
            let routingKey = String(amqpBytes: returned.routing_key)
            let code = returned.reply_code
            let (properties, _) = try readContent(channel: channel, state: state)
            return .returned(
                channel: channel,
                replyCode: code,
                replyText: text,
                routingKey: routingKey,
                properties: properties
            )
        case AMQP_BASIC_ACK_METHOD:
            let ack = decoded!.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return .ack(channel: channel, tag: ack.delivery_tag, multiple: ack.multiple != 0)
        case AMQP_BASIC_NACK_METHOD:
            let nack = decoded!.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return .nack(channel: channel, tag: nack.delivery_tag, multiple: nack.multiple != 0)
        case AMQP_BASIC_CANCEL_METHOD:
            let cancel = decoded!.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            return .consumerCancelled(channel: channel, consumerTag: String(amqpBytes: cancel.consumer_tag))
        case AMQP_CHANNEL_CLOSE_METHOD:
            let close = decoded!.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            let text = String(amqpBytes: close.reply_text)
            var ok = amqp_channel_close_ok_t()
            _ = amqp_send_method(state, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
            openChannels.remove(channel)
            return .channelClosed(channel: channel, code: close.reply_code, text: text)
        case AMQP_CONNECTION_CLOSE_METHOD:
            let close = decoded!.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let text = String(amqpBytes: close.reply_text)
            var ok = amqp_connection_close_ok_t()
            _ = amqp_send_method(state, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
            throw AMQPError.server(
                code: close.reply_code,
                text: text,
                what: "the connection",
                destination: nil,
                url: endpoint.redactedURL
            )
        case AMQP_CONNECTION_BLOCKED_METHOD:
            blocked.store(true, ordering: .releasing)
            logger.warning("RabbitMQ blocked publishing on \(endpoint.redactedURL) (resource alarm)")
            return nil
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            blocked.store(false, ordering: .releasing)
            logger.info("RabbitMQ unblocked publishing on \(endpoint.redactedURL)")
            return nil
        default:
            return nil
        }
    }

    /// Reads the content header and body frames that follow a deliver / return / get-ok.
    private func readContent(channel: UInt16, state: amqp_connection_state_t) throws -> (AMQPProperties, Data) {
        var message = amqp_message_t()
        let reply = amqp_read_message(state, channel, &message, 0)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            let status =
                reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                ? reply.library_error : AMQP_STATUS_UNEXPECTED_STATE.rawValue
            throw AMQPError.library(
                status,
                what: "reading message content",
                destination: nil,
                url: endpoint.redactedURL
            )
        }
        defer { amqp_destroy_message(&message) }
        return (AMQPProperties(message.properties), Data(amqpBytes: message.body))
    }

    // MARK: - Calls (on the thread)

    /// The live C connection, or `connectionFailed` while reconnecting.
    func requireState(_ what: String, destination: String? = nil) throws -> amqp_connection_state_t {
        guard let state else {
            let reason = lostError.map { ": \($0.message)" } ?? ""
            throw BrokerError(
                .connectionFailed,
                "\(what): the connection to \(endpoint.redactedURL) is down, reconnecting\(reason)",
                backend: AMQPError.backend,
                destination: destination
            )
        }
        return state
    }

    /// Turns the last RPC reply into a thrown error; answers channel / connection closes.
    func checkReply(_ what: String, channel: UInt16, destination: String? = nil) throws {
        guard let state else { throw try requireStateError(what, destination: destination) }
        try check(amqp_get_rpc_reply(state), what, channel: channel, destination: destination)
    }

    private func requireStateError(_ what: String, destination: String?) throws -> BrokerError {
        _ = try requireState(what, destination: destination)
        return BrokerError(.connectionFailed, what, backend: AMQPError.backend, destination: destination)
    }

    func check(_ reply: amqp_rpc_reply_t, _ what: String, channel: UInt16, destination: String? = nil) throws {
        let url = endpoint.redactedURL
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            guard let state else { throw try requireStateError(what, destination: destination) }
            if reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD {
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                let text = String(amqpBytes: close.reply_text)
                var ok = amqp_channel_close_ok_t()
                _ = amqp_send_method(state, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
                openChannels.remove(channel)
                throw AMQPError.server(
                    code: close.reply_code,
                    text: text,
                    what: what,
                    destination: destination,
                    url: url
                )
            }
            if reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD {
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                let text = String(amqpBytes: close.reply_text)
                var ok = amqp_connection_close_ok_t()
                _ = amqp_send_method(state, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
                let error = AMQPError.server(
                    code: close.reply_code,
                    text: text,
                    what: what,
                    destination: destination,
                    url: url
                )
                markBroken(error)
                throw error
            }
            let error = BrokerError(
                .brokerError,
                "\(what) on \(url): unexpected reply",
                backend: AMQPError.backend,
                destination: destination
            )
            markBroken(error)
            throw error
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            let error = AMQPError.library(reply.library_error, what: what, destination: destination, url: url)
            // After a socket error or an RPC timeout the protocol state is unknown: start over.
            markBroken(error)
            throw error
        default:
            let error = BrokerError(
                .brokerError,
                "\(what) on \(url): no reply",
                backend: AMQPError.backend,
                destination: destination
            )
            markBroken(error)
            throw error
        }
    }

    /// Throws for a non-OK status of a non-RPC call (publish, ack): the socket broke.
    /// `what` is built only on failure (publishes and acks call this once per message).
    func checkStatus(_ status: Int32, _ what: @autoclosure () -> String, destination: String? = nil) throws {
        guard status != AMQP_STATUS_OK.rawValue else { return }
        let error = AMQPError.library(status, what: what(), destination: destination, url: endpoint.redactedURL)
        markBroken(error)
        throw error
    }

    func isChannelOpen(_ channel: UInt16) -> Bool { openChannels.contains(channel) }

    /// Opens `channel` unless it is open.
    func ensureChannel(_ channel: UInt16) throws {
        guard !openChannels.contains(channel) else { return }
        let state = try requireState("opening channel \(channel)")
        _ = amqp_channel_open(state, channel)
        try checkReply("opening channel \(channel)", channel: channel)
        openChannels.insert(channel)
    }

    /// Closes `channel` if open (errors ignored: the channel is gone either way).
    func closeChannel(_ channel: UInt16) {
        guard openChannels.remove(channel) != nil, let state else { return }
        let reply = amqp_channel_close(state, channel, AMQP_REPLY_SUCCESS)
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            markBroken(
                AMQPError.library(
                    reply.library_error,
                    what: "closing a channel",
                    destination: nil,
                    url: endpoint.redactedURL
                )
            )
        }
    }

    func confirmSelect(_ channel: UInt16) throws {
        try ensureChannel(channel)
        let state = try requireState("confirm.select")
        _ = amqp_confirm_select(state, channel)
        try checkReply("enabling publisher confirms", channel: channel)
    }

    func qos(_ channel: UInt16, prefetch: Int) throws {
        try ensureChannel(channel)
        let state = try requireState("basic.qos")
        _ = amqp_basic_qos(state, channel, 0, UInt16(clamping: prefetch), 0)
        try checkReply("setting prefetch \(prefetch)", channel: channel)
    }

    /// `queue.declare`; returns the ready-message and consumer counts.
    @discardableResult
    func declareQueue(
        _ channel: UInt16,
        _ queue: String,
        passive: Bool = false,
        durable: Bool = true,
        exclusive: Bool = false,
        autoDelete: Bool = false,
        arguments: AMQPTable = AMQPTable(),
        destination: String? = nil
    ) throws -> (messages: Int, consumers: Int) {
        try ensureChannel(channel)
        let state = try requireState("declaring queue '\(queue)'", destination: destination)
        let arena = AMQPArena()
        let ok = amqp_queue_declare(
            state,
            channel,
            arena.bytes(queue),
            passive ? 1 : 0,
            durable ? 1 : 0,
            exclusive ? 1 : 0,
            autoDelete ? 1 : 0,
            arena.table(arguments)
        )
        try checkReply(
            passive ? "looking up queue '\(queue)'" : "declaring queue '\(queue)'",
            channel: channel,
            destination: destination
        )
        guard let ok else { return (0, 0) }
        return (Int(ok.pointee.message_count), Int(ok.pointee.consumer_count))
    }

    /// `queue.delete`; returns the messages it held.
    @discardableResult
    func deleteQueue(_ channel: UInt16, _ queue: String, destination: String? = nil) throws -> Int {
        try ensureChannel(channel)
        let state = try requireState("deleting queue '\(queue)'", destination: destination)
        let arena = AMQPArena()
        let ok = amqp_queue_delete(state, channel, arena.bytes(queue), 0, 0)
        try checkReply("deleting queue '\(queue)'", channel: channel, destination: destination)
        return Int(ok?.pointee.message_count ?? 0)
    }

    /// `basic.consume`; returns the consumer tag.
    func consume(
        _ channel: UInt16,
        queue: String,
        tag: String,
        exclusive: Bool = false,
        arguments: AMQPTable = AMQPTable(),
        destination: String? = nil
    ) throws -> String {
        try ensureChannel(channel)
        let state = try requireState("consuming '\(queue)'", destination: destination)
        let arena = AMQPArena()
        let ok = amqp_basic_consume(
            state,
            channel,
            arena.bytes(queue),
            arena.bytes(tag),
            0,
            0,
            exclusive ? 1 : 0,
            arena.table(arguments)
        )
        try checkReply("consuming queue '\(queue)'", channel: channel, destination: destination)
        return ok.map { String(amqpBytes: $0.pointee.consumer_tag) } ?? tag
    }

    func cancel(_ channel: UInt16, tag: String) throws {
        guard openChannels.contains(channel) else { return }
        let state = try requireState("basic.cancel")
        let arena = AMQPArena()
        _ = amqp_basic_cancel(state, channel, arena.bytes(tag))
        try checkReply("cancelling consumer '\(tag)'", channel: channel)
    }

    func publish(_ channel: UInt16, _ message: AMQPOutgoing, mandatory: Bool, destination: String? = nil) throws {
        let state = try requireState("publishing", destination: destination)
        try checkFits(message, state: state, destination: destination)
        let arena = AMQPArena()
        var properties = message.properties.encode(in: arena)
        try checkPropertiesFit(&properties, state: state, message: message, destination: destination)
        let status = message.body.withUnsafeBytes { buffer -> Int32 in
            let body = amqp_bytes_t(
                len: buffer.count,
                bytes: buffer.count == 0 ? nil : UnsafeMutableRawPointer(mutating: buffer.baseAddress)
            )
            return amqp_basic_publish(
                state,
                channel,
                arena.bytes(message.exchange),
                arena.bytes(message.routingKey),
                mandatory ? 1 : 0,
                0,
                &properties,
                body
            )
        }
        try checkStatus(status, "publishing to '\(message.routingKey)'", destination: destination)
    }

    /// rabbitmq-c sends the `basic.publish` method frame before it encodes the content header:
    /// a header that cannot be encoded then fails half-way, the channel is unusable, and the
    /// connection was marked broken, failing every publish in flight and retrying until
    /// `operation.timeout` with `connectionFailed`. These checks come
    /// first, send nothing, and throw `messageTooLarge`.
    private func checkFits(_ message: AMQPOutgoing, state: amqp_connection_state_t, destination: String?) throws {
        func refuse(_ why: String) -> BrokerError {
            BrokerError(
                .messageTooLarge,
                "message '\(message.properties.messageID ?? "?")' cannot be sent: \(why); nothing was sent",
                backend: AMQPError.backend,
                destination: destination
            )
        }
        // Short strings (message id, routing key, header names) hold at most 255 bytes.
        if let id = message.properties.messageID, id.utf8.count > 255 {
            throw refuse("its id is longer than 255 bytes")
        }
        if message.routingKey.utf8.count > 255 { throw refuse("its routing key is longer than 255 bytes") }
        if let long = message.properties.headers.entries.first(where: { $0.key.utf8.count > 255 }) {
            throw refuse("header name '\(long.key.prefix(40))…' is longer than 255 bytes")
        }
    }

    /// The encoded properties must fit one frame (`frame.max` as negotiated, less the frame's
    /// own bytes). Encoded only when a rough estimate comes near the limit, so that the common
    /// publish is not encoded twice.
    private func checkPropertiesFit(
        _ properties: inout amqp_basic_properties_t,
        state: amqp_connection_state_t,
        message: AMQPOutgoing,
        destination: String?
    ) throws {
        let room = Int(amqp_get_frame_max(state)) - 20
        let estimate = message.properties.headers.entries.reduce(256) {
            $0 + $1.key.utf8.count + 16 + ($1.value.stringValue?.utf8.count ?? 1024)
        }
        guard estimate > room / 2 else { return }
        let encoded = withUnsafeTemporaryAllocation(byteCount: max(1, room), alignment: 8) { buffer in
            amqp_encode_properties(
                UInt16(AMQP_BASIC_CLASS),
                &properties,
                amqp_bytes_t(len: max(0, room), bytes: buffer.baseAddress)
            )
        }
        if encoded < 0 {
            throw BrokerError(
                .messageTooLarge,
                "message '\(message.properties.messageID ?? "?")' has headers that do not fit one AMQP frame (frame.max \(room + 20) bytes); nothing was sent",
                backend: AMQPError.backend,
                destination: destination
            )
        }
    }

    func ack(_ channel: UInt16, tag: UInt64, multiple: Bool = false) throws {
        let state = try requireState("acknowledging")
        try checkStatus(amqp_basic_ack(state, channel, tag, multiple ? 1 : 0), "acknowledging delivery \(tag)")
    }

    func nack(_ channel: UInt16, tag: UInt64, multiple: Bool = false, requeue: Bool) throws {
        let state = try requireState("rejecting")
        try checkStatus(
            amqp_basic_nack(state, channel, tag, multiple ? 1 : 0, requeue ? 1 : 0),
            "rejecting delivery \(tag)"
        )
    }

    /// `basic.get`: the next ready message, or `nil` when the queue is empty.
    func get(_ channel: UInt16, queue: String, noAck: Bool, destination: String? = nil) throws -> AMQPDelivery? {
        try ensureChannel(channel)
        let state = try requireState("reading queue '\(queue)'", destination: destination)
        let arena = AMQPArena()
        let reply = amqp_basic_get(state, channel, arena.bytes(queue), noAck ? 1 : 0)
        try check(reply, "reading queue '\(queue)'", channel: channel, destination: destination)
        guard reply.reply.id == AMQP_BASIC_GET_OK_METHOD else { return nil }
        let ok = reply.reply.decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
        let tag = ok.delivery_tag
        let redelivered = ok.redelivered != 0
        let exchange = String(amqpBytes: ok.exchange)
        let routingKey = String(amqpBytes: ok.routing_key)
        let (properties, body) = try readContent(channel: channel, state: state)
        amqp_maybe_release_buffers_on_channel(state, channel)
        return AMQPDelivery(
            channel: channel,
            deliveryTag: tag,
            redelivered: redelivered,
            exchange: exchange,
            routingKey: routingKey,
            consumerTag: "",
            properties: properties,
            body: body
        )
    }

    /// Waits up to `timeout` for the next delivery on `channel` (used by short-lived probe
    /// consumers inside one job); frames for other channels go to ``onIncoming``.
    func nextDelivery(on channel: UInt16, timeout: Duration) throws -> AMQPDelivery? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            if left <= .zero { return nil }
            let incoming = try nextIncoming(timeout: left, channel: channel)
            if let state { amqp_maybe_release_buffers(state) }
            switch incoming {
            case .delivery(let delivery)?: return delivery
            case .channelClosed(_, let code, let text)?:
                throw AMQPError.server(
                    code: code,
                    text: text,
                    what: "reading",
                    destination: nil,
                    url: endpoint.redactedURL
                )
            default: continue
            }
        }
    }
}

extension AMQPIncoming {
    var channel: UInt16 {
        switch self {
        case .delivery(let delivery): return delivery.channel
        case .returned(let channel, _, _, _, _), .ack(let channel, _, _), .nack(let channel, _, _),
            .channelClosed(let channel, _, _), .consumerCancelled(let channel, _):
            return channel
        }
    }
}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(max(0, seconds)), tv_usec: Int(max(0, attoseconds / 1_000_000_000_000)))
    }
}

extension Duration {
    /// Whole milliseconds.
    var milliseconds: Int {
        let (seconds, attoseconds) = components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }
}
