import BrokerAPI
import Foundation

enum StreamCases {
    static let all: [ConformanceCase] = [
        twoGroups, membersShareWork, orderPerKey, replayEarliest, replayLatest, replayPosition, replayTimestamp,
        seekOncePerGroup, inPlaceRetryKeepsOrder, concurrentNacksAllRetried, restartResumes, droppedMember, lagStats,
    ]

    static func stream(_ c: ConformanceContext, _ label: String, partitions: Int = 4) async throws -> String {
        let name = c.name(label)
        try await c.broker.createStream(name, options: DestinationOptions(partitions: partitions))
        return name
    }

    static let twoGroups = ConformanceCase(
        "stream.twoGroups.eachReceiveEveryMessage",
        area: .stream,
        requires: [.streams, .consumerGroups]
    ) { c in
        let name = try await stream(c, "fanout")
        let a = try await c.broker.consumeStream(name, group: "group-a", options: .init(start: .earliest))
        let b = try await c.broker.consumeStream(name, group: "group-b", options: .init(start: .earliest))
        let sent = (0..<30).map { Message(key: "k\($0 % 5)", text: "e\($0)") }
        _ = try await c.broker.publish(sent, to: name)
        let gotA = try await c.receive(30, from: a)
        let gotB = try await c.receive(30, from: b)
        let extraA = try await a.next(timeout: .milliseconds(200))
        await a.close()
        await b.close()
        try c.expect(Set(gotA.map(\.message.id)) == Set(sent.map(\.id)), "group-a missed messages")
        try c.expect(Set(gotB.map(\.message.id)) == Set(sent.map(\.id)), "group-b missed messages")
        try c.expect(extraA == nil, "group-a received a duplicate")
        try c.expect(gotA.allSatisfy { $0.group == "group-a" }, "deliveries do not name their group")
    }

    static let membersShareWork = ConformanceCase(
        "stream.groupMembers.shareTheWork",
        area: .stream,
        requires: [.streams, .consumerGroups]
    ) { c in
        let name = try await stream(c, "share")
        let m1 = try await c.broker.consumeStream(name, group: "workers", options: .init(start: .earliest))
        let m2 = try await c.broker.consumeStream(name, group: "workers", options: .init(start: .earliest))
        let total = 80
        _ = try await c.broker.publish((0..<total).map { Message(key: "key-\($0 % 16)", text: "w\($0)") }, to: name)
        let byMember = [Collector<String>(), Collector<String>()]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, member) in [m1, m2].enumerated() {
                group.addTask {
                    while byMember[0].count + byMember[1].count < total,
                        let delivery = try await member.next(timeout: .seconds(3))
                    {
                        byMember[index].append(delivery.message.text ?? "")
                        // Work takes time: a member that is quick to start must not be able to
                        // drain all 80 before the other one reads at all (it happened on a
                        // loaded machine: "80 / 0").
                        try await Task.sleep(for: .milliseconds(5))
                        try await delivery.ack()
                    }
                }
            }
            try await group.waitForAll()
        }
        await m1.close()
        await m2.close()
        let all = byMember[0].values + byMember[1].values
        try c.expect(
            all.count == total && Set(all).count == total,
            "group handled \(Set(all).count) distinct / \(all.count) total of \(total)"
        )
        try c.expect(
            byMember[0].count > 0 && byMember[1].count > 0,
            "work was not shared: \(byMember[0].count) / \(byMember[1].count)"
        )
    }

    static let orderPerKey = ConformanceCase(
        "stream.orderPerKey.holdsWithConcurrentKeys",
        area: .stream,
        requires: [.streams, .orderedPerKey]
    ) { c in
        let name = try await stream(c, "order")
        let keys = 6
        let perKey = 25
        var messages: [Message] = []
        for seq in 0..<perKey { for k in 0..<keys { messages.append(Message(key: "user-\(k)", text: "\(seq)")) } }
        _ = try await c.broker.publish(messages, to: name)
        let consumer = try await c.broker.consumeStream(name, group: "ordered", options: .init(start: .earliest))
        let seen = Collector<(String, Int)>()
        let live = Collector<Int>()
        let gauge = ConcurrencyGauge()
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 8, orderedByKey: true)) {
            delivery in
            live.append(gauge.enter())
            try await Task.sleep(for: .milliseconds(Int.random(in: 1...4)))
            seen.append((delivery.message.key ?? "", Int(delivery.message.text ?? "") ?? -1))
            gauge.leave()
        }
        let run = Task { try await processor.run() }
        try await c.eventually("every message handled") { seen.count >= keys * perKey }
        processor.stop()
        try await run.value
        var lastSeq: [String: Int] = [:]
        for (key, seq) in seen.values {
            let previous = lastSeq[key] ?? -1
            try c.expect(seq == previous + 1, "key \(key): \(seq) handled after \(previous)")
            lastSeq[key] = seq
        }
        try c.expect(
            live.values.max() ?? 0 >= 2,
            "different keys never ran concurrently (max \(live.values.max() ?? 0))"
        )
    }

    static let replayEarliest = ConformanceCase(
        "stream.replay.fromEarliest",
        area: .stream,
        requires: [.streams, .replay, .newGroupSeesHistory]
    ) { c in
        let name = try await stream(c, "earliest", partitions: 1)
        let sent = (0..<10).map { Message(key: "same", text: "r\($0)") }
        _ = try await c.broker.publish(sent, to: name)
        let consumer = try await c.broker.consumeStream(name, group: "late-joiner", options: .init(start: .earliest))
        let got = try await c.receive(10, from: consumer)
        await consumer.close()
        try c.expect(got.map(\.message.id) == sent.map(\.id), "a new group did not read the history in order")
    }

    static let replayLatest = ConformanceCase(
        "stream.replay.fromLatest",
        area: .stream,
        requires: [.streams, .consumerGroups]
    ) { c in
        let name = try await stream(c, "latest", partitions: 1)
        _ = try await c.broker.publish((0..<5).map { Message(key: "k", text: "old\($0)") }, to: name)
        let consumer = try await c.broker.consumeStream(name, group: "tail", options: .init(start: .latest))
        try await Task.sleep(for: .milliseconds(200))
        let fresh = (0..<3).map { Message(key: "k", text: "new\($0)") }
        _ = try await c.broker.publish(fresh, to: name)
        let got = try await c.receive(3, from: consumer)
        let extra = try await consumer.next(timeout: .milliseconds(300))
        await consumer.close()
        try c.expect(got.map(\.message.id) == fresh.map(\.id), "latest delivered \(got.compactMap(\.message.text))")
        try c.expect(extra == nil, "latest delivered old messages too")
    }

    static let replayPosition = ConformanceCase(
        "stream.replay.fromPosition",
        area: .stream,
        requires: [.streams, .replay]
    ) { c in
        let name = try await stream(c, "position", partitions: 1)
        let sent = (0..<10).map { Message(key: "k", text: "p\($0)") }
        let receipts = try await c.broker.publish(sent, to: name)
        guard let position = receipts[6].position else { throw c.fail("publish receipt has no position") }
        let consumer = try await c.broker.consumeStream(name, group: "seek", options: .init(start: .position(position)))
        let got = try await c.receive(4, from: consumer)
        await consumer.close()
        try c.expect(
            got.map(\.message.id) == sent[6...].map(\.id),
            "from \(position) got \(got.compactMap(\.message.text))"
        )
        try c.expect(
            got.first?.position == position,
            "first delivery position \(String(describing: got.first?.position)) != \(position)"
        )
    }

    static let replayTimestamp = ConformanceCase(
        "stream.replay.fromTimestamp",
        area: .stream,
        requires: [.streams, .timestampSeek]
    ) { c in
        let name = try await stream(c, "timestamp", partitions: 1)
        _ = try await c.broker.publish((0..<5).map { Message(key: "k", text: "before\($0)") }, to: name)
        try await Task.sleep(for: .milliseconds(100))
        let cut = Date()
        try await Task.sleep(for: .milliseconds(100))
        let after = (0..<5).map { Message(key: "k", text: "after\($0)") }
        _ = try await c.broker.publish(after, to: name)
        let consumer = try await c.broker.consumeStream(name, group: "time", options: .init(start: .timestamp(cut)))
        let got = try await c.receive(5, from: consumer)
        let extra = try await consumer.next(timeout: .milliseconds(300))
        await consumer.close()
        try c.expect(got.map(\.message.id) == after.map(\.id), "from timestamp got \(got.compactMap(\.message.text))")
        try c.expect(extra == nil, "timestamp seek delivered older messages")
    }

    /// A `.position` start applies to a new group only: a member that joins (or restarts)
    /// with the same options resumes after what the group committed instead of rewinding it
    /// (else scaling a group out replays work it has already done).
    static let seekOncePerGroup = ConformanceCase(
        "stream.seekStart.appliesOncePerGroup",
        area: .stream,
        requires: [.streams, .replay, .consumerGroups]
    ) { c in
        let name = try await stream(c, "seek-once", partitions: 1)
        let sent = (0..<10).map { Message(key: "k", text: "s\($0)") }
        let receipts = try await c.broker.publish(sent, to: name)
        guard let position = receipts[0].position else { throw c.fail("publish receipt has no position") }
        let options = StreamConsumerOptions(start: .position(position), prefetch: 1)
        let first = try await c.broker.consumeStream(name, group: "seek-once", options: options)
        let handled = try await c.receive(5, from: first)
        await first.close()
        try c.expect(
            handled.map(\.message.id) == sent[..<5].map(\.id),
            "first member got \(handled.compactMap(\.message.text))"
        )
        let second = try await c.broker.consumeStream(name, group: "seek-once", options: options)
        let rest = try await c.receive(5, from: second, timeout: .seconds(30))
        let extra = try await second.next(timeout: .milliseconds(500))
        await second.close()
        try c.expect(
            rest.map(\.message.id) == sent[5...].map(\.id),
            "the second member rewound the group: got \(rest.compactMap(\.message.text))"
        )
        try c.expect(extra == nil, "the second member got \(extra?.message.text ?? "?") again")
    }

    /// A nacked stream message is retried in place, and the messages fetched after it wait:
    /// with a deep prefetch the handler sees 0, 0, 1, 2… (not 0, 1…19, 0).
    static let inPlaceRetryKeepsOrder = ConformanceCase(
        "stream.inPlaceRetry.holdsBackFetchedMessages",
        area: .stream,
        requires: [.streams, .orderedPerKey]
    ) { c in
        let name = try await stream(c, "retry-order", partitions: 1)
        let sent = (0..<20).map { Message(key: "k", text: "r\($0)") }
        _ = try await c.broker.publish(sent, to: name)
        let consumer = try await c.broker.consumeStream(
            name,
            group: "ordered",
            options: .init(
                start: .earliest,
                prefetch: 32,
                retryPolicy: RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(300)))
            )
        )
        let seen = Collector<String>()
        let failed = Collector<Bool>()
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 1)) { delivery in
            seen.append(delivery.message.text ?? "?")
            if delivery.message.text == "r0" && failed.count == 0 {
                failed.append(true)
                throw ConformanceFailure("fails once")
            }
        }
        let run = Task { try await processor.run() }
        do {
            try await c.eventually("21 deliveries", timeout: .seconds(30)) { seen.count >= 21 }
        } catch {
            processor.stop()
            _ = try? await run.value
            throw error
        }
        try await Task.sleep(for: .milliseconds(200))
        processor.stop()
        try await run.value
        let expected = ["r0"] + sent.compactMap(\.text)
        try c.expect(seen.values == expected, "order after an in-place retry: \(seen.values)")
    }

    /// Several deliveries of one partition nacked while each other's handlers run (different
    /// keys, concurrent handlers): every one is retried. Found by `brokerkit soak` on memory://,
    /// whose partitions kept one pending retry and dropped the earlier ones.
    static let concurrentNacksAllRetried = ConformanceCase(
        "stream.concurrentNacks.everyOneRetried",
        area: .stream,
        requires: [.streams]
    ) { c in
        let name = try await stream(c, "nacks", partitions: 1)
        let sent = (0..<12).map { Message(key: "k\($0)", text: "n\($0)") }
        let consumer = try await c.broker.consumeStream(
            name,
            group: "nacks",
            options: .init(
                start: .earliest,
                prefetch: 32,
                retryPolicy: RetryPolicy(maxAttempts: 4, backoff: .fixed(.milliseconds(200)))
            )
        )
        let succeeded = Collector<String>()
        let failedOnce = Collector<String>()
        let started = Collector<String>()
        let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 12, orderedByKey: true)) {
            delivery in
            let text = delivery.message.text ?? "?"
            if delivery.attempt == 1 {
                started.append(text)
                // Let the other handlers start before failing, so the nacks come together.
                let deadline = ContinuousClock.now + .seconds(2)
                while started.count < sent.count, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(5))
                }
                failedOnce.append(text)
                throw ConformanceFailure("fails on its first attempt")
            }
            succeeded.append(text)
        }
        let run = Task { try await processor.run() }
        _ = try await c.broker.publish(sent, to: name)
        do {
            try await c.eventually("every nacked message retried and handled", timeout: .seconds(30)) {
                Set(succeeded.values).count >= sent.count
            }
        } catch {
            processor.stop()
            _ = try? await run.value
            let missing = Set(sent.compactMap(\.text)).subtracting(succeeded.values).sorted()
            throw ConformanceFailure("never retried after a nack: \(missing) (failed once: \(failedOnce.count))")
        }
        processor.stop()
        try await run.value
    }

    static let restartResumes = ConformanceCase(
        "stream.restart.resumesFromCommittedPosition",
        area: .stream,
        requires: [.streams, .consumerGroups]
    ) { c in
        let name = try await stream(c, "resume", partitions: 2)
        let sent = (0..<12).map { Message(key: "k\($0 % 3)", text: "c\($0)") }
        _ = try await c.broker.publish(sent, to: name)
        let first = try await c.broker.consumeStream(
            name,
            group: "resumer",
            options: .init(start: .earliest, prefetch: 1)
        )
        let handled = try await c.receive(5, from: first)
        await first.close()
        let restarted = try await c.broker.consumeStream(name, group: "resumer", options: .init(start: .earliest))
        let rest = try await c.receive(7, from: restarted)
        let extra = try await restarted.next(timeout: .milliseconds(300))
        await restarted.close()
        let handledIDs = Set(handled.map(\.message.id))
        let restIDs = Set(rest.map(\.message.id))
        try c.expect(handledIDs.isDisjoint(with: restIDs), "acked messages were handled again after restart")
        try c.expect(handledIDs.union(restIDs) == Set(sent.map(\.id)), "messages were lost across the restart")
        try c.expect(extra == nil, "an extra delivery after the restart")
    }

    /// As ``restartResumes``, but the app forgets `close()`: a member it dropped (holding one
    /// delivery unacked) is closed for it, so the group's next member resumes after the acked
    /// run and gets the unacked message, instead of waiting for the dropped one to time out.
    static let droppedMember = ConformanceCase(
        "stream.memberDroppedWithoutClose.groupResumes",
        area: .stream,
        requires: [.streams, .consumerGroups]
    ) { c in
        let name = try await stream(c, "dropped-member", partitions: 1)
        let sent = (0..<12).map { Message(key: "k\($0 % 3)", text: "d\($0)") }
        _ = try await c.broker.publish(sent, to: name)
        // Only ids are kept: a delivery, settled or not, keeps the member that handed it out.
        var handledIDs: Set<String> = []
        var heldID: String?
        do {
            let first = try await c.broker.consumeStream(
                name,
                group: "forgetful",
                options: .init(start: .earliest, prefetch: 1)
            )
            handledIDs = Set(try await c.receive(5, from: first).map(\.message.id))
            heldID = try await c.receive(1, from: first, ack: false).first?.message.id
        }  // the member and its deliveries are dropped here, the last one unacked
        try await Task.sleep(for: .seconds(1))  // for the close the drop started
        let next = try await c.broker.consumeStream(name, group: "forgetful", options: .init(start: .earliest))
        let rest = try await c.receive(7, from: next, timeout: .seconds(30))
        let extra = try await next.next(timeout: .milliseconds(300))
        await next.close()
        let restIDs = Set(rest.map(\.message.id))
        try c.expect(handledIDs.isDisjoint(with: restIDs), "acked messages were handled again by the next member")
        try c.expect(
            heldID.map { restIDs.contains($0) } == true,
            "the dropped member's unacked message did not come again"
        )
        try c.expect(handledIDs.union(restIDs) == Set(sent.map(\.id)), "messages were lost when the member was dropped")
        try c.expect(extra == nil, "an extra delivery: \(extra?.message.text ?? "?")")
    }

    static let lagStats = ConformanceCase(
        "stream.stats.lagAndDepth",
        area: .stream,
        requires: [.streams, .consumerGroups]
    ) { c in
        let name = try await stream(c, "lag", partitions: 2)
        _ = try await c.broker.publish((0..<10).map { Message(key: "k\($0)", text: "l\($0)") }, to: name)
        let consumer = try await c.broker.consumeStream(
            name,
            group: "lagging",
            options: .init(start: .earliest, prefetch: 1)
        )
        _ = try await c.receive(4, from: consumer)
        await consumer.close()
        try await c.eventually("lag 6 for the group") {
            let stats = try await c.broker.stats(for: name)
            return stats.groups.first { $0.group == "lagging" }?.lag == 6
        }
        let stats = try await c.broker.stats(for: name)
        try c.expect(stats.kind == .stream, "kind \(stats.kind)")
        try c.expect(stats.depth == 10, "depth \(stats.depth), expected 10")
        let reader = try await c.broker.consumeStream(name, group: "lagging", options: .init(start: .earliest))
        _ = try await c.receive(6, from: reader)
        await reader.close()
        try await c.eventually("lag 0 after reading the rest") {
            try await c.broker.stats(for: name).groups.first { $0.group == "lagging" }?.lag == 0
        }
    }
}

/// Counts handlers running at once.
final class ConcurrencyGauge: Sendable {
    private let box = LockedBox<(current: Int, max: Int)>((0, 0))
    func enter() -> Int {
        box.withLock {
            $0.current += 1
            $0.max = Swift.max($0.max, $0.current)
            return $0.current
        }
    }
    func leave() { box.withLock { $0.current -= 1 } }
    var maximum: Int { box.withLock { $0.max } }
}
