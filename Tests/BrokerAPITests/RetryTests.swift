@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Testing

@Suite("Retry and DLQ")
struct RetryTests {
    @Test func exponentialBackoffDoublesAndCaps() {
        let backoff = Backoff.exponential(initial: .milliseconds(100), multiplier: 2, max: .seconds(1))
        #expect(backoff.delay(afterAttempt: 1) == .milliseconds(100))
        #expect(backoff.delay(afterAttempt: 2) == .milliseconds(200))
        #expect(backoff.delay(afterAttempt: 4) == .milliseconds(800))
        #expect(backoff.delay(afterAttempt: 5) == .seconds(1))
        #expect(backoff.delay(afterAttempt: 500) == .seconds(1))
    }

    @Test func jitterStaysInRange() {
        let backoff = Backoff.exponential(initial: .seconds(1), max: .seconds(10), jitter: 0.25)
        let range = backoff.range(afterAttempt: 1)
        #expect(range == .milliseconds(750)...Duration.milliseconds(1250))
        for _ in 0..<200 { #expect(range.contains(backoff.delay(afterAttempt: 1))) }
    }

    @Test func fixedNoneAndCustom() {
        #expect(Backoff.fixed(.seconds(3)).delay(afterAttempt: 9) == .seconds(3))
        #expect(Backoff.none.delay(afterAttempt: 2) == .zero)
        #expect(Backoff.custom { .seconds($0) }.delay(afterAttempt: 4) == .seconds(4))
    }

    @Test func policyDecisions() {
        let policy = RetryPolicy(maxAttempts: 3, backoff: .fixed(.seconds(1)))
        #expect(policy.decision(afterAttempt: 1, error: nil) == .retry(after: .seconds(1)))
        #expect(
            policy.decision(afterAttempt: 3, error: nil) == .deadLetter(reason: "retries exhausted after 3 attempts")
        )
        struct Bad: NonRetryableError {}
        #expect(policy.decision(afterAttempt: 1, error: Bad()) == .deadLetter(reason: "non-retryable error"))
        #expect(
            policy.decision(afterAttempt: 1, error: NonRetryable(CancellationError()))
                == .deadLetter(reason: "non-retryable error")
        )
        let custom = RetryPolicy(maxAttempts: 5, isRetryable: { ($0 as? BrokerError)?.code != .timeout })
        #expect(
            custom.decision(afterAttempt: 1, error: BrokerError(.timeout, "t"))
                == .deadLetter(reason: "non-retryable error")
        )
    }

    @Test func deadLetterEnvelopeRoundTripsThroughHeaders() throws {
        let original = Message(key: "k", text: "body", headers: ["a": "1"])
        let failedAt = Date(timeIntervalSince1970: 1_700_000_000.25)
        let envelope = DeadLetterEnvelope(
            original: original,
            originalDestination: "orders",
            attempts: 4,
            lastError: "boom",
            failedAt: failedAt,
            firstFailureAt: failedAt.addingTimeInterval(-10)
        )
        let stored = envelope.message
        #expect(stored.headers[HeaderName.originalDestination] == "orders")
        let back = try #require(DeadLetterEnvelope(dlqMessage: stored))
        #expect(back.original == original)
        #expect(back.attempts == 4 && back.lastError == "boom" && back.originalDestination == "orders")
        #expect(abs(back.failedAt.timeIntervalSince(failedAt)) < 0.001)
        #expect(back.firstFailureAt.map { abs($0.timeIntervalSince(failedAt) + 10) < 0.001 } == true)
        #expect(DeadLetterEnvelope(dlqMessage: original) == nil)
    }

    @Test func destinationNames() throws {
        try DestinationName.validate("orders.v1_eu-west:created")
        for bad in ["", ".hidden", "a b", "ä", String(repeating: "x", count: 201)] {
            #expect(throws: BrokerError.self) { try DestinationName.validate(bad) }
        }
    }
}
