@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Synchronization

/// Publishes persistent, `mandatory` messages with publisher confirms on channel 1 of its own
/// connection.
///
/// Many publishes are in flight at once: each send job writes its messages and registers
/// their delivery tags; the connection's pump resolves them as `basic.ack` / `basic.nack`
/// arrive (one ack may confirm many tags), and each caller awaits only its own tags. An
/// unroutable message comes back as `basic.return` (before its ack) and fails with
/// ``BrokerError/Code/unknownDestination``. If the connection drops, unconfirmed messages
/// fail with ``BrokerError/Code/connectionFailed`` and ``RabbitBroker`` publishes them again
/// once the connection is back (at-least-once: a message confirmed just before the drop may
/// then be stored twice; one never confirmed is never reported as published).
final class RabbitPublisher: @unchecked Sendable {
    // `@unchecked Sendable` is safe: everything below `connection` is confined to the
    // connection's thread (touched only inside its jobs and callbacks).
    let connection: AMQPConnection
    private let operationTimeout: Duration
    private static let channel: UInt16 = 1

    private struct Slot {
        let batch: ConfirmBatch
        let index: Int
        let messageID: String?
        let routingKey: String
        var returned: BrokerError?
    }

    private var nextTag: UInt64 = 1
    private var lowestOpen: UInt64 = 1
    private var waiting: [UInt64: Slot] = [:]
    private var closed = false
    /// Set by ``close()`` at once, so that no new send is queued behind a stuck one.
    private let isClosed = Atomic<Bool>(false)
    /// Publish calls still waiting, for the send deadline (``expireOverdue()``).
    private let open = Mutex<[ObjectIdentifier: (batch: ConfirmBatch, destination: String?)]>([:])
    private let watchdog: any DispatchSourceTimer
    private var lastSweep = ContinuousClock.now

    init(connection: AMQPConnection, operationTimeout: Duration) {
        self.connection = connection
        self.operationTimeout = operationTimeout
        watchdog = DispatchSource.makeTimerSource(queue: .global())
        connection.onOpen = { [weak self] in try self?.opened() }
        connection.onLost = { [weak self] error in self?.failAll(error) }
        connection.onIncoming = { [weak self] incoming in self?.handle(incoming) }
        connection.onTick = { [weak self] in self?.sweep() }
        watchdog.schedule(deadline: .now() + 0.25, repeating: 0.25, leeway: .milliseconds(50))
        watchdog.setEventHandler { [weak self] in self?.expireOverdue() }
        watchdog.resume()
    }

    /// Dropped with a broker that was never closed: the connection closes in the background.
    deinit {
        watchdog.cancel()
        connection.closeInBackground()
    }

    /// The send deadline, every 250 ms off the connection's thread. The connection's sweep
    /// fails unconfirmed messages too, but only while its thread runs: a send blocked on a
    /// full socket (a broker in a resource alarm stops reading) holds the thread, and
    /// rabbitmq-c waits for the socket without a deadline. A call past its deadline fails
    /// with `timeout` here; a message whose send had not started by then is never sent.
    private func expireOverdue() {
        let now = ContinuousClock.now
        let overdue = open.withLock { $0.values.filter { $0.batch.deadline <= now } }
        guard !overdue.isEmpty else { return }
        let url = connection.endpoint.redactedURL
        for (batch, destination) in overdue {
            let why =
                if connection.isBlocked {
                    "RabbitMQ at \(url) has blocked publishing (a memory or disk resource alarm): not confirmed within operation.timeout \(operationTimeout)"
                } else if !batch.isSent {
                    "the message could not be written to \(url) within operation.timeout \(operationTimeout): the broker is not reading (a memory or disk resource alarm blocks publishers) or the network stalls"
                } else {
                    "no publisher confirm within operation.timeout \(operationTimeout)"
                }
            batch.expire(BrokerError(.timeout, why, backend: AMQPError.backend, destination: destination))
        }
    }

    /// Publishes `messages` and waits for each one's confirm. The result per message is
    /// `nil` (confirmed) or the error that message failed with.
    /// Without a `deadline`, messages fail with `timeout` after `operation.timeout`.
    func publish(
        _ messages: [AMQPOutgoing],
        destination: String?,
        deadline: ContinuousClock.Instant? = nil
    ) async -> [BrokerError?] {
        guard !messages.isEmpty else { return [] }
        let deadline = deadline ?? ContinuousClock.now + operationTimeout
        let batch = ConfirmBatch(count: messages.count, deadline: deadline)
        // Not `run`: the caller waits for the confirms anyway, so resuming it once the send
        // job is done would only add a wake-up of its task per call.
        let accepted =
            !isClosed.load(ordering: .acquiring)
            && connection.submit { _ in self.send(messages, batch: batch, destination: destination) }
        if !accepted {
            let failure = BrokerError(
                .closed,
                "publisher is closed",
                backend: AMQPError.backend,
                destination: destination
            )
            for index in messages.indices { batch.complete(index, failure) }
            return await batch.wait()
        }
        // The send deadline: see ``expireOverdue()``.
        open.withLock { $0[ObjectIdentifier(batch)] = (batch, destination) }
        let results = await batch.wait()
        open.withLock { $0[ObjectIdentifier(batch)] = nil }
        return results
    }

    /// Fails what is still unconfirmed and closes the connection. Idempotent, and bounded by
    /// `operation.timeout` even when a send is stuck (see ``AMQPConnection/close()``).
    func close() async {
        isClosed.store(true, ordering: .releasing)
        connection.submit { _ in
            self.closed = true
            self.failAll(BrokerError.closed("publisher", backend: AMQPError.backend))
        }
        await connection.close()
        watchdog.cancel()
    }

    // MARK: - On the connection's thread

    private func opened() throws {
        try connection.confirmSelect(Self.channel)
        nextTag = 1
        lowestOpen = 1
    }

    private func send(_ messages: [AMQPOutgoing], batch: ConfirmBatch, destination: String?) {
        defer { batch.markSent() }
        for index in messages.indices {
            let message = messages[index]
            if batch.isDone(index) { continue }  // expired before its turn came: never sent
            if closed {
                batch.complete(
                    index,
                    BrokerError.closed("publisher", backend: AMQPError.backend, destination: destination)
                )
                continue
            }
            do {
                if !connection.isChannelOpen(Self.channel) { try opened() }
                try connection.publish(Self.channel, message, mandatory: true, destination: destination)
                waiting[nextTag] = Slot(
                    batch: batch,
                    index: index,
                    messageID: message.properties.messageID,
                    routingKey: message.routingKey
                )
                nextTag += 1
            } catch let error as BrokerError where error.code == .messageTooLarge {
                batch.complete(index, error)  // refused before anything was sent: the rest go on
            } catch {
                let failure =
                    error as? BrokerError
                    ?? BrokerError(.brokerError, "\(error)", backend: AMQPError.backend, destination: destination)
                for rest in index..<messages.count { batch.complete(rest, failure) }
                return
            }
        }
    }

    private func handle(_ incoming: AMQPIncoming) {
        switch incoming {
        case .ack(Self.channel, let tag, let multiple):
            settle(upTo: tag, multiple: multiple, failure: nil)
        case .nack(Self.channel, let tag, let multiple):
            settle(
                upTo: tag,
                multiple: multiple,
                failure: BrokerError(
                    .brokerError,
                    "RabbitMQ could not store the message (basic.nack)",
                    backend: AMQPError.backend
                )
            )
        case .returned(Self.channel, let code, let text, let routingKey, let properties):
            // The return precedes its ack: mark the oldest open publish of that message.
            let candidates = waiting.filter {
                $0.value.returned == nil && $0.value.routingKey == routingKey
                    && $0.value.messageID == properties.messageID
            }
            if let tag = candidates.keys.min() {
                waiting[tag]?.returned = BrokerError(
                    .unknownDestination,
                    "queue '\(routingKey)' does not exist on \(connection.endpoint.redactedURL): the message was returned unroutable (\(code) \(text))",
                    backend: AMQPError.backend,
                    destination: routingKey
                )
            }
        case .channelClosed(Self.channel, let code, let text):
            // A channel error (e.g. a message over the broker's max size) loses the channel's
            // unconfirmed messages; the next send reopens it in confirm mode.
            failAll(
                AMQPError.server(
                    code: code,
                    text: text,
                    what: "publishing",
                    destination: nil,
                    url: connection.endpoint.redactedURL
                )
            )
        default:
            break
        }
    }

    private func settle(upTo tag: UInt64, multiple: Bool, failure: BrokerError?) {
        let range = multiple ? lowestOpen...max(lowestOpen, tag) : tag...tag
        for current in range {
            guard let slot = waiting.removeValue(forKey: current) else { continue }
            slot.batch.complete(slot.index, slot.returned ?? failure)
        }
        while lowestOpen < nextTag && waiting[lowestOpen] == nil { lowestOpen += 1 }
    }

    private func failAll(_ error: BrokerError) {
        let slots = waiting
        waiting = [:]
        lowestOpen = nextTag
        for slot in slots.values { slot.batch.complete(slot.index, error) }
    }

    /// Forgets the delivery tags of messages the send deadline failed (confirms that never
    /// came), so `waiting` does not keep them.
    private func sweep() {
        let now = ContinuousClock.now
        guard now - lastSweep >= .milliseconds(500), !waiting.isEmpty else { return }
        lastSweep = now
        for (tag, slot) in waiting where slot.batch.deadline < now && slot.batch.isDone(slot.index) {
            waiting[tag] = nil
        }
        while lowestOpen < nextTag && waiting[lowestOpen] == nil { lowestOpen += 1 }
    }
}

/// The confirms of one publish call: resolves when every message is confirmed or failed.
final class ConfirmBatch: Sendable {
    private struct State {
        var results: [BrokerError?]
        var done: [Bool]
        var sent = false
        var remaining: Int
        var continuation: CheckedContinuation<[BrokerError?], Never>?
    }
    private let state: Mutex<State>
    let deadline: ContinuousClock.Instant

    init(count: Int, deadline: ContinuousClock.Instant) {
        self.deadline = deadline
        state = Mutex(
            State(
                results: Array(repeating: nil, count: count),
                done: Array(repeating: false, count: count),
                remaining: count
            )
        )
    }

    /// Records the outcome of message `index` (the first outcome wins).
    func complete(_ index: Int, _ error: BrokerError?) {
        let resume = state.withLock { s -> (CheckedContinuation<[BrokerError?], Never>, [BrokerError?])? in
            guard !s.done[index] else { return nil }
            s.done[index] = true
            s.results[index] = error
            s.remaining -= 1
            guard s.remaining == 0, let continuation = s.continuation else { return nil }
            s.continuation = nil
            return (continuation, s.results)
        }
        if let (continuation, results) = resume { continuation.resume(returning: results) }
    }

    /// Fails every message without an outcome yet with `error`.
    func expire(_ error: BrokerError) {
        let open = state.withLock { s in s.done.indices.filter { !s.done[$0] } }
        for index in open { complete(index, error) }
    }

    func isDone(_ index: Int) -> Bool { state.withLock { $0.done[index] } }

    /// Whether the send job has written (or given up on) every message.
    var isSent: Bool { state.withLock { $0.sent } }
    func markSent() { state.withLock { $0.sent = true } }

    func wait() async -> [BrokerError?] {
        await withCheckedContinuation { continuation in
            let results = state.withLock { s -> [BrokerError?]? in
                if s.remaining == 0 { return s.results }
                s.continuation = continuation
                return nil
            }
            if let results { continuation.resume(returning: results) }
        }
    }
}

/// A one-time signal a thread fires and a task awaits.
final class OneShot: Sendable {
    private struct State {
        var fired = false
        var continuation: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    func fire() {
        let continuation = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.fired = true
            defer { s.continuation = nil }
            return s.continuation
        }
        continuation?.resume()
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let fired = state.withLock { s -> Bool in
                if s.fired { return true }
                s.continuation = continuation
                return false
            }
            if fired { continuation.resume() }
        }
    }
}
