import Foundation
import Synchronization

/// What a backend does when a delivery is settled. Implemented by every backend; users call
/// the methods on ``Delivery`` instead, which apply the ``RetryPolicy`` first.
public protocol DeliverySettler: Sendable {
    /// The handler succeeded: remove the message / advance the committed position.
    func ack() async throws
    /// Redeliver after `delay` as attempt `nextAttempt`, remembering the first failure time.
    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws
    /// Move the message to the dead-letter queue and remove it from its origin.
    func deadLetter(_ envelope: DeadLetterEnvelope) async throws
    /// Give the message back unprocessed, without counting an attempt (graceful shutdown).
    func release() async throws
}

/// A message handed to a consumer, with its delivery metadata and settlement methods.
///
/// Settle every delivery exactly once: ``ack()``, `nack(error:delay:)`, ``deadLetter(reason:)``
/// or ``release()``. A second settlement throws ``BrokerError/Code/alreadySettled``.
///
/// - Important: A step that does not reach the broker (the retry copy or the dead letter
///   could not be written, the connection dropped) throws, and the delivery is given back
///   for redelivery (``release()``) so that it is neither lost nor left holding a prefetch
///   slot; a later settlement throws ``BrokerError/Code/alreadySettled``.
///
/// ```swift
/// for try await delivery in consumer.deliveries {
///     do { try await handle(delivery.message); try await delivery.ack() }
///     catch { try await delivery.nack(error: error) }
/// }
/// ```
public struct Delivery: Sendable {
    /// Everything in one immutable box: a delivery passes through buffers, arrays and task
    /// boundaries, and each copy of the struct is one retain instead of one per field.
    private final class Storage: Sendable {
        let message: Message
        let destination: String
        let group: String?
        let attempt: Int
        let firstFailureAt: Date?
        let position: Position?
        let retryPolicy: RetryPolicy
        let backend: String
        let settler: any DeliverySettler
        let defect: String?
        /// Set once settled; copies made by ``withRetryPolicy(_:)`` use their origin's.
        private let settledFlag = Atomic<Bool>(false)
        private let origin: Storage?
        let metrics: DeliveryObserver.Destination?

        /// The storage whose flag this one uses.
        var root: Storage { origin ?? self }
        /// Sets the settled flag; returns `false` if it was already set.
        func settle() -> Bool {
            root.settledFlag.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        }
        var isSettled: Bool { root.settledFlag.load(ordering: .acquiring) }

        init(
            message: Message,
            destination: String,
            group: String?,
            attempt: Int,
            firstFailureAt: Date?,
            position: Position?,
            retryPolicy: RetryPolicy,
            backend: String,
            settler: any DeliverySettler,
            origin: Storage?,
            metrics: DeliveryObserver.Destination?,
            defect: String?
        ) {
            self.message = message
            self.destination = destination
            self.group = group
            self.attempt = attempt
            self.firstFailureAt = firstFailureAt
            self.position = position
            self.retryPolicy = retryPolicy
            self.backend = backend
            self.settler = settler
            self.origin = origin
            self.metrics = metrics
            self.defect = defect
        }
    }

    /// The largest attempt number a delivery carries; backends dead-letter records whose
    /// attempt field is out of `1...maxAttempt` (``defect``), and larger values are clamped,
    /// so that `attempt + 1` can never overflow.
    public static let maxAttempt = 1_000_000_000

    private let storage: Storage
    /// The app's handle on the consumer that handed this delivery out (the wrapper a
    /// ``BrokerClient`` returns):
    /// while the app holds a delivery, its consumer stays open even if the app dropped the
    /// consumer itself. `nil` inside backends, which never need it.
    private let owner: OwnedConsumer?

    /// The message.
    public var message: Message { storage.message }
    /// The queue or stream it came from.
    public var destination: String { storage.destination }
    /// The consumer group, for stream deliveries.
    public var group: String? { storage.group }
    /// 1-based delivery attempt.
    public var attempt: Int { storage.attempt }
    /// When the message first failed, if it failed before.
    public var firstFailureAt: Date? { storage.firstFailureAt }
    /// Where the message sits in the destination.
    public var position: Position? { storage.position }
    /// The policy `nack(error:delay:)` applies.
    public var retryPolicy: RetryPolicy { storage.retryPolicy }
    /// The backend that delivered it.
    public var backend: String { storage.backend }
    /// Why BrokerKit cannot use this record, or `nil`: a field it reads from the broker is
    /// missing, out of range or not valid UTF-8 (another program wrote it, or it was
    /// corrupted). The consumer a ``BrokerClient`` hands out dead-letters such a
    /// delivery with this reason and never hands it to the app.
    public var defect: String? { storage.defect }

    private var settler: any DeliverySettler { storage.settler }
    /// The backend's settler, for backends that must find their own deliveries again (the
    /// Kafka consumer takes a blocked partition's deliveries back from its buffer).
    package var backendSettler: any DeliverySettler { storage.settler }
    private var metrics: DeliveryObserver.Destination? { storage.metrics }

    @_spi(BrokerBackend) public init(
        message: Message,
        destination: String,
        group: String? = nil,
        attempt: Int,
        firstFailureAt: Date?,
        position: Position?,
        retryPolicy: RetryPolicy,
        backend: String,
        settler: any DeliverySettler,
        observer: DeliveryObserver? = nil,
        defect: String? = nil
    ) {
        self.init(
            message: message,
            destination: destination,
            group: group,
            attempt: attempt,
            firstFailureAt: firstFailureAt,
            position: position,
            retryPolicy: retryPolicy,
            backend: backend,
            settler: settler,
            metrics: observer?.destination(destination),
            defect: defect
        )
    }

    /// A delivery whose acks, retries and dead-letterings count in `metrics`: the
    /// destination's counters, looked up once by the consumer
    /// (``DeliveryObserver/destination(_:)``) instead of once per delivery.
    @_spi(BrokerBackend) public init(
        message: Message,
        destination: String,
        group: String? = nil,
        attempt: Int,
        firstFailureAt: Date?,
        position: Position?,
        retryPolicy: RetryPolicy,
        backend: String,
        settler: any DeliverySettler,
        metrics: DeliveryObserver.Destination?,
        defect: String? = nil
    ) {
        storage = Storage(
            message: message,
            destination: destination,
            group: group,
            attempt: min(max(1, attempt), Delivery.maxAttempt),
            firstFailureAt: firstFailureAt,
            position: position,
            retryPolicy: retryPolicy,
            backend: backend,
            settler: settler,
            origin: nil,
            metrics: metrics,
            defect: defect
        )
        owner = nil
    }

    /// The same delivery (sharing its settled state) with another retry policy, e.g. a
    /// job type's own policy.
    public func withRetryPolicy(_ policy: RetryPolicy) -> Delivery {
        Delivery(
            storage: Storage(
                message: message,
                destination: destination,
                group: group,
                attempt: attempt,
                firstFailureAt: firstFailureAt,
                position: position,
                retryPolicy: policy,
                backend: backend,
                settler: settler,
                origin: storage.root,
                metrics: metrics,
                defect: defect
            ),
            owner: owner
        )
    }

    /// The same delivery, keeping `owner` open while it lives.
    func owned(by owner: OwnedConsumer) -> Delivery { Delivery(storage: storage, owner: owner) }

    private init(storage: Storage, owner: OwnedConsumer?) {
        self.storage = storage
        self.owner = owner
    }

    /// Whether the delivery has been settled.
    public var isSettled: Bool { storage.isSettled }

    private func claim(_ action: String) throws {
        guard storage.settle() else {
            throw BrokerError(
                .alreadySettled,
                "message '\(message.id)' was already settled; cannot \(action)",
                backend: backend,
                destination: destination
            )
        }
    }

    /// How long a delivery whose settlement step failed is held before it is given back: a
    /// step that fails the same way every time (a DLQ the broker refuses, a delay it cannot
    /// hold) would otherwise run the handler again at once, forever.
    public static let failedStepPause = Duration.seconds(1)

    /// Runs a settlement step once claimed; if it fails, gives the delivery back after
    /// ``failedStepPause`` (see the type's note) and rethrows. A step that failed because the
    /// delivery is no longer held (`closed`: its consumer closed, or lost it to a rebalance or
    /// a reconnect) cannot come straight back here, so it is released without the pause: the
    /// release only returns its prefetch slot.
    private func settle(_ step: () async throws -> Void) async throws {
        do {
            try await step()
        } catch {
            if (error as? BrokerError)?.code != .closed { try? await Task.sleep(for: Self.failedStepPause) }
            try? await settler.release()
            throw error
        }
    }

    /// The handler succeeded.
    public func ack() async throws {
        try claim("ack")
        try await settle { try await settler.ack() }
        metrics?.record(.acked)
    }

    /// What `nack(error:delay:)` did.
    public enum NackOutcome: Sendable, Equatable {
        case retried(after: Duration, nextAttempt: Int)
        case deadLettered(reason: String)
    }

    /// The handler failed: redeliver after the policy's backoff (or `delay`), or dead-letter
    /// when attempts are exhausted.
    @discardableResult
    public func nack(error: String, delay: Duration? = nil) async throws -> NackOutcome {
        try await nack(errorText: error, error: nil, delay: delay)
    }

    /// The handler failed with `error`: non-retryable errors (see ``RetryPolicy/isRetryable``)
    /// dead-letter at once.
    @discardableResult
    public func nack(error: any Error, delay: Duration? = nil) async throws -> NackOutcome {
        try await nack(errorText: String(describing: error), error: error, delay: delay)
    }

    private func nack(errorText: String, error: (any Error)?, delay: Duration?) async throws -> NackOutcome {
        try claim("nack")
        let now = Date()
        switch retryPolicy.decision(afterAttempt: attempt, error: error) {
        case .retry(let policyDelay):
            let wait = delay ?? policyDelay
            try await settle {
                try await settler.retry(
                    after: wait,
                    nextAttempt: attempt + 1,
                    firstFailureAt: firstFailureAt ?? now,
                    lastError: errorText
                )
            }
            metrics?.record(.retried)
            return .retried(after: wait, nextAttempt: attempt + 1)
        case .deadLetter(let reason):
            try await settle { try await settler.deadLetter(envelope(lastError: errorText, now: now)) }
            metrics?.record(.deadLettered)
            return .deadLettered(reason: reason)
        }
    }

    /// Send the message straight to the dead-letter queue with `reason`.
    public func deadLetter(reason: String) async throws {
        try claim("dead-letter")
        try await settle { try await settler.deadLetter(envelope(lastError: reason, now: Date())) }
        metrics?.record(.deadLettered)
    }

    /// Give the message back for a delivery no earlier than `delay` from now, without
    /// counting an attempt: for a message that cannot run yet (``JobWorker`` postpones a job
    /// whose idempotency key another run still holds). Unlike ``release()``, it does not come
    /// straight back.
    public func postpone(by delay: Duration, reason: String) async throws {
        try claim("postpone")
        try await settle {
            try await settler.retry(
                after: delay,
                nextAttempt: attempt,
                firstFailureAt: firstFailureAt ?? Date(),
                lastError: reason
            )
        }
    }

    /// Give the message back without processing it and without counting an attempt.
    public func release() async throws {
        try claim("release")
        try await settler.release()
    }

    private func envelope(lastError: String, now: Date) -> DeadLetterEnvelope {
        DeadLetterEnvelope(
            original: message,
            originalDestination: destination,
            attempts: attempt,
            lastError: lastError,
            failedAt: now,
            firstFailureAt: firstFailureAt ?? now
        )
    }
}
