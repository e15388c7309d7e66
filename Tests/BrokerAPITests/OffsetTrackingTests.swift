@_spi(BrokerBackend) import BrokerAPI
import Testing

/// The commit-position bookkeeping every stream consumer shares (memory, RabbitMQ streams:
/// `ContiguousAcks`; Kafka: `HandedOutOffsets`).
@Suite("Offset tracking")
struct OffsetTrackingTests {
    @Test func contiguousAcksCommitOnlyAnUnbrokenRun() {
        var acks = ContiguousAcks(committed: 10)
        #expect(acks.ack(10) == 10..<11)
        #expect(acks.committed == 11)
        // Out of order: 13 and 12 wait for 11.
        #expect(acks.ack(13).isEmpty)
        #expect(acks.ack(12).isEmpty)
        #expect(acks.committed == 11 && acks.pendingCount == 2)
        #expect(acks.ack(11) == 11..<14)
        #expect(acks.committed == 14 && acks.pendingCount == 0)
        // Below the commit point, twice, or before the start is known: nothing moves.
        #expect(acks.ack(5).isEmpty && acks.ack(13).isEmpty && acks.committed == 14)
        var unknown = ContiguousAcks()
        #expect(unknown.ack(0).isEmpty && unknown.committed == nil)
    }

    @Test func contiguousAcksResetForgetsPendingAcks() {
        var acks = ContiguousAcks(committed: 0)
        acks.ack(2)
        acks.reset(to: 1)
        #expect(acks.committed == 1 && acks.pendingCount == 0)
        // The ack of 2 before the reset no longer counts: 1 alone moves the position by one.
        #expect(acks.ack(1) == 1..<2)
    }

    /// Any order of acks ends at the same position as acking in order.
    @Test func contiguousAcksInEveryOrderEndPastTheLast() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var acks = ContiguousAcks(committed: 100)
            var passed: [Int64] = []
            for offset in (100..<164).shuffled(using: &generator) { passed += Array(acks.ack(Int64(offset))) }
            #expect(acks.committed == 164)
            #expect(passed == Array(100..<164), "every offset is passed exactly once, in order")
        }
    }

    @Test func handedOutOffsetsSkipGapsAndWaitForTheOldest() {
        var offsets = HandedOutOffsets()
        #expect(offsets.commitOffset == nil)
        // Kafka offsets with gaps (a transaction marker at 3, compacted 5...6).
        for offset: Int64 in [1, 2, 4, 7] { offsets.handedOut(offset) }
        #expect(offsets.commitOffset == 1)
        offsets.markDone(2)
        offsets.markDone(4)
        #expect(offsets.commitOffset == 1, "1 is still being handled")
        offsets.markDone(1)
        #expect(offsets.commitOffset == 7, "past the gaps to the oldest one not done")
        offsets.markDone(7)
        #expect(offsets.commitOffset == 8 && offsets.last == 7)
    }

    /// A long in-order run compacts its storage and keeps the right position.
    @Test func handedOutOffsetsStayCorrectOverLongRuns() {
        var offsets = HandedOutOffsets()
        for offset in Int64(0)..<5000 { offsets.handedOut(offset * 2) }
        for offset in Int64(0)..<4000 { offsets.markDone(offset * 2) }
        #expect(offsets.commitOffset == 8000)
        for offset in (Int64(4000)..<5000).reversed() { offsets.markDone(offset * 2) }
        #expect(offsets.commitOffset == 9999, "one past the last handed out (9998)")
    }
}
