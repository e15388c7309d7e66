import Foundation

/// Settles a queue delivery held by the in-memory store.
struct MemoryQueueSettler: DeliverySettler {
    let store: MemoryStore
    let destination: String
    let tag: UInt64

    func ack() async throws { try await store.queueAck(destination, tag: tag) }

    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {
        try await store.queueRetry(
            destination,
            tag: tag,
            delay: delay,
            nextAttempt: nextAttempt,
            firstFailureAt: firstFailureAt
        )
    }

    func deadLetter(_ envelope: DeadLetterEnvelope) async throws {
        try await store.queueDeadLetter(destination, tag: tag, envelope: envelope)
    }

    func release() async throws { try await store.queueRelease(destination, tag: tag) }
}

/// Settles a stream delivery: acks advance the group's contiguous committed offset.
struct MemoryStreamSettler: DeliverySettler {
    let store: MemoryStore
    let destination: String
    let group: String
    let partition: Int
    let offset: Int64
    let consumer: UInt64

    func ack() async throws {
        try await store.streamAck(destination, group: group, partition: partition, offset: offset, consumer: consumer)
    }

    func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {
        try await store.streamRetry(
            destination,
            group: group,
            partition: partition,
            offset: offset,
            consumer: consumer,
            delay: delay,
            nextAttempt: nextAttempt,
            firstFailureAt: firstFailureAt
        )
    }

    func deadLetter(_ envelope: DeadLetterEnvelope) async throws {
        try await store.streamDeadLetter(
            destination,
            group: group,
            partition: partition,
            offset: offset,
            consumer: consumer,
            envelope: envelope
        )
    }

    func release() async throws {
        try await store.streamRelease(
            destination,
            group: group,
            partition: partition,
            offset: offset,
            consumer: consumer
        )
    }
}
