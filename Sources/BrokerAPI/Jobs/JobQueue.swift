import Foundation

/// Dispatches typed jobs onto a queue of any backend.
///
/// ```swift
/// let jobs = JobQueue(broker: broker, queue: "jobs")
/// try await jobs.dispatch(SendEmail(to: "a@example.com", subject: "Hi"))
/// try await jobs.dispatch(SendEmail(to: "b@example.com", subject: "Later"), after: .seconds(60))
/// try await jobs.dispatch(Invoice(id: 7), at: tomorrow, idempotencyKey: "invoice-7")
/// ```
public struct JobQueue: Sendable {
    public let broker: any Broker
    public let queue: String
    let encoder: JSONEncoder

    public init(broker: any Broker, queue: String = "jobs") {
        self.broker = broker
        self.queue = queue
        self.encoder = JobCoding.encoder()
    }

    /// The message a job is sent as: JSON payload, job name and idempotency key in headers.
    public func message<J: Job>(for job: J, idempotencyKey: String? = nil, key: String? = nil) throws -> Message {
        let payload: Data
        do { payload = try encoder.encode(job) } catch {
            throw BrokerError(
                .decodingFailed,
                "cannot encode job '\(J.name)': \(error)",
                backend: broker.backendName,
                destination: queue
            )
        }
        var headers = [HeaderName.jobName: J.name, "content-type": "application/json"]
        if let idempotencyKey { headers[HeaderName.idempotencyKey] = idempotencyKey }
        return Message(key: key, payload: payload, headers: headers)
    }

    /// Dispatches `job` now; returns the job id.
    @discardableResult
    public func dispatch<J: Job>(_ job: J, idempotencyKey: String? = nil, key: String? = nil) async throws -> String {
        let message = try message(for: job, idempotencyKey: idempotencyKey, key: key)
        return try await broker.publish(message, to: queue).messageID
    }

    /// Dispatches `job` to run no earlier than `delay` from now.
    @discardableResult
    public func dispatch<J: Job>(
        _ job: J,
        after delay: Duration,
        idempotencyKey: String? = nil,
        key: String? = nil
    ) async throws -> String {
        try await dispatch(
            job,
            at: Date().addingTimeInterval(delay.timeInterval),
            idempotencyKey: idempotencyKey,
            key: key
        )
    }

    /// Dispatches `job` to run no earlier than `date`.
    @discardableResult
    public func dispatch<J: Job>(
        _ job: J,
        at date: Date,
        idempotencyKey: String? = nil,
        key: String? = nil
    ) async throws -> String {
        try broker.require(.delayedDelivery, for: "delayed jobs")
        let message = try message(for: job, idempotencyKey: idempotencyKey, key: key)
        return try await broker.publish(message, to: queue, options: PublishOptions(deliverAt: date)).messageID
    }

    /// Dispatches many jobs of one type in one batch.
    @discardableResult
    public func dispatch<J: Job>(batch jobs: [J]) async throws -> [String] {
        let messages = try jobs.map { try message(for: $0) }
        return try await broker.publish(messages, to: queue).map(\.messageID)
    }
}

/// Remembers idempotency keys so a job dispatched twice runs once.
public protocol IdempotencyStore: Sendable {
    /// Claims `key` for a run; `false` if it already completed or is running elsewhere.
    func begin(_ key: String) async throws -> Bool
    /// The run succeeded: the key stays taken for the store's retention.
    func complete(_ key: String) async throws
    /// The run failed: free the key so a retry can claim it.
    func abandon(_ key: String) async throws
    /// Claims `key` and says why not when it cannot: ``JobWorker`` drops a job whose key
    /// completed, but postpones one whose key another run still holds (that run may fail,
    /// and then this job must still run). The default calls ``begin(_:)`` and reports every
    /// refusal as ``IdempotencyClaim/completed``: a store that can tell a running key from a
    /// completed one should implement this.
    func claim(_ key: String) async throws -> IdempotencyClaim
}

/// The answer of ``IdempotencyStore/claim(_:)``.
public enum IdempotencyClaim: Sendable, Hashable {
    /// This run holds the key now.
    case claimed
    /// A run with this key completed: the job is a duplicate.
    case completed
    /// Another run holds the key and has not finished.
    case running
}

extension IdempotencyStore {
    public func claim(_ key: String) async throws -> IdempotencyClaim {
        try await begin(key) ? .claimed : .completed
    }
}

/// An in-process ``IdempotencyStore`` keeping completed keys for `retention`.
public actor InMemoryIdempotencyStore: IdempotencyStore {
    private var running: Set<String> = []
    private var completed: [String: Date] = [:]
    private let retention: Duration

    public init(retention: Duration = .seconds(86_400)) { self.retention = retention }

    public func begin(_ key: String) -> Bool { take(key) == .claimed }

    public func complete(_ key: String) {
        running.remove(key)
        completed[key] = Date()
    }

    public func abandon(_ key: String) { running.remove(key) }

    public func claim(_ key: String) async throws -> IdempotencyClaim { take(key) }

    /// Claims `key` unless it completed or is running: what ``begin(_:)`` and ``claim(_:)`` ask.
    private func take(_ key: String) -> IdempotencyClaim {
        purge()
        if completed[key] != nil { return .completed }
        if running.contains(key) { return .running }
        running.insert(key)
        return .claimed
    }

    private func purge() {
        guard completed.count > 1024 else { return }
        let cutoff = Date().addingTimeInterval(-retention.timeInterval)
        completed = completed.filter { $0.value >= cutoff }
    }
}

/// The JSON format of job payloads: sorted keys, dates as ISO 8601 with milliseconds (read
/// back with or without fractional seconds), so other languages can produce and read jobs.
public enum JobCoding {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(ISO8601.format(date))
        }
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = ISO8601.parse(text) else {
                throw DecodingError.dataCorruptedError(
                    in: container,
                    debugDescription: "'\(text)' is not an ISO 8601 date"
                )
            }
            return date
        }
        return decoder
    }
}
