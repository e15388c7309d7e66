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

    /// The one replay policy of every backend (the client applies it to what drivers read).
    @Test func replayMakesAFreshMessageForAUsableOrigin() {
        let job = Message(
            key: "k",
            text: "body",
            headers: [
                "a": "1", HeaderName.jobName: "email", HeaderName.idempotencyKey: "i-1", HeaderName.group: "g",
                HeaderName.deliverAt: "2999-01-01T00:00:00.000Z", HeaderName.attempt: "7", "x-brokerkit-other": "x",
            ]
        )
        let stored = DeadLetterEnvelope(original: job, originalDestination: "orders", attempts: 5, lastError: "boom")
            .message
        let replay = DeadLetterEnvelope(stored: stored, dlqOf: "orders").replay(dlqOf: "orders")
        #expect(replay.destination == "orders")
        #expect(replay.message.id == job.id && replay.message.payload == job.payload && replay.message.key == "k")
        #expect(replay.message.headers == ["a": "1", HeaderName.jobName: "email", HeaderName.idempotencyKey: "i-1"])

        // An origin that is not a name an app could use goes back to the DLQ's own destination.
        var forged = stored
        forged.headers[HeaderName.originalDestination] = "victim:delay"
        #expect(DeadLetterEnvelope(stored: forged, dlqOf: "orders").replay(dlqOf: "orders").destination == "orders")
        forged.headers[HeaderName.originalDestination] = "invoices"
        #expect(DeadLetterEnvelope(stored: forged, dlqOf: "orders").replay(dlqOf: "orders").destination == "invoices")
    }

    /// A record another program wrote to a DLQ is listed (and replayed as it is), not hidden.
    @Test func aRecordWithoutAnEnvelopeGetsOneThatSaysSo() {
        let foreign = Message(text: "foreign", headers: ["h": "v"])
        let envelope = DeadLetterEnvelope(stored: foreign, dlqOf: "orders")
        #expect(envelope.originalDestination == "orders" && envelope.attempts == 0)
        #expect(envelope.lastError.contains("no dead-letter envelope"))
        #expect(envelope.original == foreign)
        let replay = envelope.replay(dlqOf: "orders")
        #expect(replay.destination == "orders" && replay.message == foreign)
    }

    /// Names are read from brokers (a DLQ envelope's origin) and from apps: whatever they
    /// hold, the check answers. `.wait.` overlapping `.quorum` trapped on a range whose end
    /// came before its start.
    @Test func reservedNamesAreFoundWithoutTrapping() throws {
        for fine in [
            "a.wait.quorum", "x.wait.quorum", "q.wait.x.quorum", "a.retry.", "a.wait.", "orders.offsets", "_a",
        ] {
            try DestinationName.validate(fine)
        }
        for reserved in [
            "a.wait.5.quorum", "a.wait.12", "a.retry.3", "a.dlq", "a:delay", "a:retry", "__x", "a.offsets.g",
            "a.x.wait.500", ".wait.5.quorum.wait.7",
        ] {
            #expect(throws: BrokerError.self, "\(reserved)") { try DestinationName.validate(reserved) }
        }
        #expect(DestinationName.reservedPart(of: "a.wait.quorum") == nil)
        #expect(DestinationName.reservedPart(of: "ä.dlq") == "a name ending in '.dlq'")
        #expect(DestinationName.reservedPart(of: "g", what: "group") == nil)
        #expect(DestinationName.reservedPart(of: "__g", what: "group") != nil)
        // Not ASCII: the slow path names the character.
        let error = #expect(throws: BrokerError.self) { try DestinationName.validate("ordérs") }
        #expect(error?.message.contains("is not allowed") == true)
        #expect(throws: BrokerError.self) { try DestinationName.validate(String(repeating: "é", count: 150)) }
    }

    @Test func destinationNames() throws {
        try DestinationName.validate("orders.v1_eu-west:created")
        for bad in ["", ".hidden", "a b", "ä", String(repeating: "x", count: 201)] {
            #expect(throws: BrokerError.self) { try DestinationName.validate(bad) }
        }
    }
}
