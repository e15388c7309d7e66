@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Testing

@Suite("DeliveryBuffer")
struct DeliveryBufferTests {
    struct NoSettler: DeliverySettler {
        func ack() async throws {}
        func retry(after delay: Duration, nextAttempt: Int, firstFailureAt: Date, lastError: String) async throws {}
        func deadLetter(_ envelope: DeadLetterEnvelope) async throws {}
        func release() async throws {}
    }

    func delivery(_ n: Int) -> Delivery {
        Delivery(
            message: Message(id: "m\(n)", text: "\(n)"),
            destination: "q",
            attempt: 1,
            firstFailureAt: nil,
            position: Position(offset: Int64(n)),
            retryPolicy: RetryPolicy(),
            backend: "test",
            settler: NoSettler()
        )
    }

    /// A batch push hands its first deliveries to callers already waiting (oldest first) and
    /// buffers the rest in order; a finished buffer takes none and gives them all back.
    @Test func batchPushServesWaitersFirstThenBuffersInOrder() async throws {
        let buffer = DeliveryBuffer()
        let first = Task { try await buffer.next()?.message.id }
        try await Task.sleep(for: .milliseconds(50))  // let it park in next()
        let rejected = buffer.push(contentsOf: (1...4).map(delivery))
        #expect(rejected.isEmpty)
        #expect(try await first.value == "m1")
        var rest: [String] = []
        for _ in 0..<3 { rest.append(try #require(try await buffer.next()).message.id) }
        #expect(rest == ["m2", "m3", "m4"])
        #expect(buffer.count == 0)

        buffer.finish()
        let refused = buffer.push(contentsOf: (5...6).map(delivery))
        #expect(refused.map(\.message.id) == ["m5", "m6"])
        #expect(try await buffer.next() == nil)
    }
}
