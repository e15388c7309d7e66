@_spi(BrokerBackend) import BrokerAPI
import Foundation

enum QueueCases {
    static let all: [ConformanceCase] = [
        roundTrip, competingConsumers, nackRedelivers, closedWithoutAck, droppedWithoutClose, retriesExhausted,
        dlqReplay, backoffFollowsPolicy,
        delayedNotEarly, prefetchBound, concurrentPublishers, destinationsIsolated, manyDestinations,
        closeWhileConsuming, batchPublishReceipts, statsDepth, heldPastLease,
    ]

    static let roundTrip = ConformanceCase("queue.roundTrip.keepsBytesKeyAndHeaders", area: .queue, requires: .queues) {
        c in
        let queue = c.name("roundtrip")
        try await c.broker.createQueue(queue)
        let payloads: [(String, Data)] = [
            ("empty", Data()),
            ("binary", Data((0...255).map { UInt8($0) } + [0, 0, 255, 0])),
            ("1MiB", patternedPayload(1024 * 1024)),
        ]
        var sent: [Message] = []
        for (label, payload) in payloads {
            let message = Message(
                key: "ключ-🔑-\(label)",
                payload: payload,
                headers: ["emoji": "✅ ok", "ünïcødé-name": "çødé ∑ 漢字", "label": label, "empty": ""]
            )
            sent.append(message)
            let receipt = try await c.broker.publish(message, to: queue)
            try c.expect(receipt.messageID == message.id, "receipt id \(receipt.messageID) != \(message.id)")
        }
        let consumer = try await c.broker.consumeQueue(queue)
        let received = try await c.receive(sent.count, from: consumer)
        await consumer.close()
        for original in sent {
            guard let got = received.first(where: { $0.message.id == original.id }) else {
                throw c.fail("message \(original.headers["label"]!) was not received")
            }
            try c.expect(
                got.message.payload == original.payload,
                "payload \(original.headers["label"]!) changed: \(got.message.payload.count) bytes vs \(original.payload.count)"
            )
            try c.expect(got.message.key == original.key, "key changed: \(String(describing: got.message.key))")
            for (name, value) in original.headers {
                try c.expect(
                    got.message.headers[name] == value,
                    "header '\(name)' changed: \(String(describing: got.message.headers[name])) != \(value)"
                )
            }
            try c.expect(got.attempt == 1, "first delivery has attempt \(got.attempt)")
            try c.expect(got.destination.hasSuffix(queue), "destination \(got.destination) is not \(queue)")
        }
    }

    static let competingConsumers = ConformanceCase(
        "queue.competingConsumers.getAllWithoutDuplicates",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("compete")
        try await c.broker.createQueue(queue)
        let consumers = [try await c.broker.consumeQueue(queue), try await c.broker.consumeQueue(queue)]
        let total = 60
        _ = try await c.broker.publish((0..<total).map { Message(text: "job-\($0)") }, to: queue)
        let seen = Collector<String>()
        let deadline = ContinuousClock.now + .seconds(20)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for consumer in consumers {
                group.addTask {
                    while seen.count < total && ContinuousClock.now < deadline {
                        guard let delivery = try await consumer.next(timeout: .milliseconds(200)) else { continue }
                        seen.append(delivery.message.text ?? "")
                        try await delivery.ack()
                    }
                }
            }
            try await group.waitForAll()
        }
        for consumer in consumers { await consumer.close() }
        let values = seen.values
        try c.expect(values.count == total, "received \(values.count) deliveries, expected \(total)")
        try c.expect(Set(values).count == total, "duplicates on the happy path: \(values.count - Set(values).count)")
    }

    static let nackRedelivers = ConformanceCase(
        "queue.nack.redeliversWithNextAttemptAfterBackoff",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("nack")
        try await c.broker.createQueue(queue)
        let policy = RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(300)))
        let consumer = try await c.broker.consumeQueue(queue, options: .init(retryPolicy: policy))
        try await c.broker.publish(Message(text: "retry me"), to: queue)
        let first = try await c.receive(1, from: consumer, ack: false)[0]
        try c.expect(
            first.attempt == 1 && first.firstFailureAt == nil,
            "first delivery: attempt \(first.attempt), firstFailureAt \(String(describing: first.firstFailureAt))"
        )
        let nackedAt = ContinuousClock.now
        let outcome = try await first.nack(error: "transient failure")
        try c.expect(outcome == .retried(after: .milliseconds(300), nextAttempt: 2), "nack outcome \(outcome)")
        let second = try await c.receive(1, from: consumer)[0]
        let waited = ContinuousClock.now - nackedAt
        await consumer.close()
        try c.expect(second.message.id == first.message.id, "redelivered a different message")
        try c.expect(second.attempt == 2, "redelivery attempt is \(second.attempt), expected 2")
        try c.expect(second.firstFailureAt != nil, "redelivery lost the first-failure time")
        try c.expect(waited >= .milliseconds(270), "redelivered after \(waited), before the 300 ms backoff (hot loop)")
    }

    /// A consumer closed with a delivery unacked: the delivery is redelivered, and an ack after
    /// the close fails with `closed` (nothing is recorded, the message comes back) instead of
    /// reporting a success that did not happen.
    static let closedWithoutAck = ConformanceCase(
        "queue.consumerClosedWithoutAck.redelivered",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("noack")
        try await c.broker.createQueue(queue)
        try await c.broker.publish(Message(text: "unacked"), to: queue)
        let first = try await c.broker.consumeQueue(queue, options: .init(visibilityTimeout: .seconds(2)))
        let delivery = try await c.receive(1, from: first, ack: false)[0]
        await first.close()
        try await c.expectError(.closed) { try await delivery.ack() }
        let second = try await c.broker.consumeQueue(queue)
        let again = try await c.receive(1, from: second, timeout: .seconds(20))[0]
        await second.close()
        try c.expect(again.message.id == delivery.message.id, "a different message was redelivered")
        try c.expect(again.message.text == "unacked", "payload changed on redelivery")
    }

    /// An app that forgets `close()`: a delivery keeps its consumer open while the app holds
    /// it (so `consumeQueue(q).next()` gives a delivery that can still be acked), and a
    /// consumer the app dropped with everything it handed out is closed, its unsettled
    /// delivery given back at once rather than after a visibility timeout.
    static let droppedWithoutClose = ConformanceCase(
        "queue.consumerDroppedWithoutClose.closedForTheApp",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("dropped")
        try await c.broker.createQueue(queue)
        try await c.broker.publish(Message(text: "acked late"), to: queue)
        do {
            // The consumer is only a temporary here: the delivery is all the case keeps.
            let delivery = try await c.receive(1, from: try await c.broker.consumeQueue(queue), ack: false)[0]
            try await Task.sleep(for: .milliseconds(500))  // time for a close, had the consumer been closed
            try await delivery.ack()
        }
        try await c.broker.publish(Message(text: "dropped unacked"), to: queue)
        do {
            let consumer = try await c.broker.consumeQueue(queue, options: .init(visibilityTimeout: .seconds(60)))
            let delivery = try await c.receive(1, from: consumer, ack: false, timeout: .seconds(20))[0]
            try c.expect(
                delivery.message.text == "dropped unacked",
                "got \(delivery.message.text ?? "?"), the acked message came back"
            )
        }  // consumer and delivery dropped, neither closed nor settled
        let next = try await c.broker.consumeQueue(queue)
        let again = try await c.receive(1, from: next, timeout: .seconds(20))[0]
        let extra = try await next.next(timeout: .milliseconds(500))
        await next.close()
        try c.expect(
            again.message.text == "dropped unacked",
            "got \(again.message.text ?? "?") instead of the dropped consumer's unsettled message"
        )
        try c.expect(extra == nil, "\(extra?.message.text ?? "?") came back after it was acked")
    }

    /// A live consumer's lease is renewed: a delivery held three times longer than its
    /// `visibilityTimeout` is not given to another consumer, and its ack then works (else
    /// a handler slower than the lease has its message run twice).
    static let heldPastLease = ConformanceCase(
        "queue.heldPastLease.renewedWhileTheConsumerLives",
        area: .queue,
        requires: [.queues, .leaseExpiry]
    ) { c in
        let queue = c.name("renewed")
        try await c.broker.createQueue(queue)
        try await c.broker.publish(Message(text: "long job"), to: queue)
        let holder = try await c.broker.consumeQueue(queue, options: .init(visibilityTimeout: .seconds(1)))
        let delivery = try await c.receive(1, from: holder, ack: false)[0]
        let rival = try await c.broker.consumeQueue(queue, options: .init(visibilityTimeout: .seconds(1)))
        let stolen = try await rival.next(timeout: .seconds(3))
        try await delivery.ack()
        await rival.close()
        await holder.close()
        try c.expect(
            stolen == nil,
            "another consumer got '\(stolen?.message.text ?? "?")' (attempt \(stolen?.attempt ?? 0)) while its holder lived"
        )
    }

    static let retriesExhausted = ConformanceCase(
        "queue.retriesExhausted.deadLettersWithEnvelope",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("exhaust")
        try await c.broker.createQueue(queue)
        let policy = RetryPolicy(maxAttempts: 3, backoff: .fixed(.milliseconds(50)))
        let consumer = try await c.broker.consumeQueue(queue, options: .init(retryPolicy: policy))
        let original = Message(key: "order-7", text: "poison", headers: ["tenant": "acme"])
        try await c.broker.publish(original, to: queue)
        let before = Date()
        var outcomes: [Delivery.NackOutcome] = []
        for attempt in 1...3 {
            let delivery = try await c.receive(1, from: consumer, ack: false)[0]
            try c.expect(delivery.attempt == attempt, "attempt \(delivery.attempt), expected \(attempt)")
            outcomes.append(try await delivery.nack(error: "boom \(attempt)"))
        }
        try c.expect(
            outcomes.last == .deadLettered(reason: "retries exhausted after 3 attempts"),
            "last outcome \(String(describing: outcomes.last))"
        )
        let extra = try await consumer.next(timeout: .milliseconds(300))
        await consumer.close()
        try c.expect(extra == nil, "message was delivered again after dead-lettering")
        var entries: [DeadLetterEntry] = []
        try await c.eventually("the DLQ entry") {
            entries = try await c.broker.deadLetters(of: queue, limit: 10)
            return !entries.isEmpty
        }
        try c.expect(entries.count == 1, "DLQ holds \(entries.count) entries")
        let envelope = entries[0].envelope
        try c.expect(envelope.original.id == original.id, "DLQ entry has another id")
        try c.expect(envelope.original.payload == original.payload, "DLQ payload changed")
        try c.expect(envelope.original.key == "order-7", "DLQ key changed")
        try c.expect(envelope.original.headers["tenant"] == "acme", "DLQ lost a header")
        try c.expect(envelope.originalDestination.hasSuffix(queue), "origin \(envelope.originalDestination)")
        try c.expect(envelope.attempts == 3, "attempts \(envelope.attempts)")
        try c.expect(envelope.lastError == "boom 3", "last error '\(envelope.lastError)'")
        try c.expect(
            envelope.failedAt >= before.addingTimeInterval(-1) && envelope.failedAt <= Date().addingTimeInterval(1),
            "failedAt \(envelope.failedAt)"
        )
        try c.expect(envelope.firstFailureAt != nil, "first failure time missing")
        let stats = try await c.broker.stats(for: queue)
        try c.expect(stats.deadLettered == 1, "stats.deadLettered \(stats.deadLettered)")
    }

    static let dlqReplay = ConformanceCase("queue.dlqReplay.returnsToOrigin", area: .queue, requires: .queues) { c in
        let queue = c.name("replay")
        try await c.broker.createQueue(queue)
        let consumer = try await c.broker.consumeQueue(queue, options: .init(retryPolicy: .noRetry))
        let original = Message(key: "k", text: "replay me", headers: ["h": "v"])
        try await c.broker.publish(original, to: queue)
        let delivery = try await c.receive(1, from: consumer, ack: false)[0]
        try await delivery.deadLetter(reason: "manual")
        try await c.eventually("the DLQ entry") { try await c.broker.deadLetters(of: queue, limit: 5).count == 1 }
        let moved = try await c.broker.replayDeadLetters(of: queue, limit: 10)
        try c.expect(moved == 1, "replayed \(moved)")
        let again = try await c.receive(1, from: consumer)[0]
        await consumer.close()
        try c.expect(
            again.message.id == original.id && again.message.payload == original.payload,
            "replayed message differs"
        )
        try c.expect(again.message.headers["h"] == "v", "replay lost a header")
        try c.expect(
            again.message.headers[HeaderName.lastError] == nil,
            "replayed message still carries DLQ envelope headers"
        )
        try c.expect(again.attempt == 1, "replayed attempt \(again.attempt), expected a fresh 1")
        let left = try await c.broker.deadLetters(of: queue, limit: 5)
        try c.expect(left.isEmpty, "DLQ still holds \(left.count) after replay")
    }

    static let backoffFollowsPolicy = ConformanceCase(
        "queue.backoff.delaysFollowPolicy",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("backoff")
        try await c.broker.createQueue(queue)
        let backoff = Backoff.exponential(initial: .milliseconds(150), multiplier: 2, max: .seconds(2), jitter: 0)
        let consumer = try await c.broker.consumeQueue(
            queue,
            options: .init(retryPolicy: RetryPolicy(maxAttempts: 4, backoff: backoff))
        )
        try await c.broker.publish(Message(text: "b"), to: queue)
        var last = ContinuousClock.now
        var gaps: [Duration] = []
        for attempt in 1...4 {
            let delivery = try await c.receive(1, from: consumer, ack: false)[0]
            if attempt > 1 { gaps.append(ContinuousClock.now - last) }
            last = ContinuousClock.now
            try await delivery.nack(error: "fail \(attempt)")
        }
        await consumer.close()
        let expected: [Duration] = [.milliseconds(150), .milliseconds(300), .milliseconds(600)]
        for (gap, want) in zip(gaps, expected) {
            try c.expect(gap >= want * 0.9, "gap \(gap) shorter than backoff \(want)")
            // Generous: CI machines are loaded; the lower bound is what proves there is no hot loop.
            try c.expect(gap <= want + .seconds(5), "gap \(gap) far longer than backoff \(want)")
        }
    }

    static let delayedNotEarly = ConformanceCase(
        "queue.delayedMessage.notDeliveredEarly",
        area: .queue,
        requires: [.queues, .delayedDelivery]
    ) { c in
        let queue = c.name("delay")
        try await c.broker.createQueue(queue)
        let consumer = try await c.broker.consumeQueue(queue)
        let due = Date().addingTimeInterval(0.8)
        _ = try await c.broker.publish(Message(text: "later"), to: queue, options: PublishOptions(deliverAt: due))
        try await c.broker.publish(Message(text: "now"), to: queue)
        let publishedNow = Date()
        let received = try await c.receive(2, from: consumer)
        await consumer.close()
        guard let later = received.first(where: { $0.message.text == "later" }) else {
            throw c.fail("the delayed message never arrived")
        }
        let arrived = try c.arrival(of: later)
        try c.expect(
            arrived >= due.addingTimeInterval(-0.02),
            "delayed message arrived \(due.timeIntervalSince(arrived)) s early"
        )
        if publishedNow < due.addingTimeInterval(-0.2) {
            // Both were published well before the due time: the immediate one must come first.
            try c.expect(received[0].message.text == "now", "the delayed message overtook the immediate one")
        }
    }

    static let prefetchBound = ConformanceCase(
        "queue.prefetch.boundsInFlight",
        area: .queue,
        requires: [.queues, .prefetch]
    ) { c in
        let queue = c.name("prefetch")
        try await c.broker.createQueue(queue)
        _ = try await c.broker.publish((0..<10).map { Message(text: "p\($0)") }, to: queue)
        let consumer = try await c.broker.consumeQueue(queue, options: .init(prefetch: 3))
        let held = try await c.receive(3, from: consumer, ack: false)
        let fourth = try await consumer.next(timeout: .milliseconds(500))
        try c.expect(fourth == nil, "a 4th delivery arrived while 3 were unacked with prefetch 3")
        try await held[0].ack()
        let next = try await consumer.next(timeout: .seconds(5))
        try c.expect(next != nil, "no delivery after acking one of three")
        try await next?.ack()
        for delivery in held.dropFirst() { try await delivery.ack() }
        await consumer.close()
    }

    static let concurrentPublishers = ConformanceCase(
        "queue.twentyConcurrentPublishers.loseNothing",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("pub20")
        try await c.broker.createQueue(queue)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for publisher in 0..<20 {
                group.addTask {
                    if publisher % 2 == 0 {
                        for i in 0..<10 { try await c.broker.publish(Message(text: "\(publisher)-\(i)"), to: queue) }
                    } else {
                        _ = try await c.broker.publish((0..<10).map { Message(text: "\(publisher)-\($0)") }, to: queue)
                    }
                }
            }
            try await group.waitForAll()
        }
        let consumer = try await c.broker.consumeQueue(queue, options: .init(prefetch: 64))
        let received = try await c.receive(200, from: consumer)
        await consumer.close()
        let texts = Set(received.compactMap(\.message.text))
        try c.expect(texts.count == 200, "received \(texts.count) distinct of 200")
    }

    static let destinationsIsolated = ConformanceCase("queue.destinations.areIsolated", area: .queue, requires: .queues)
    { c in
        let a = c.name("iso-a")
        let b = c.name("iso-b")
        try await c.broker.createQueue(a)
        try await c.broker.createQueue(b)
        _ = try await c.broker.publish((0..<5).map { Message(text: "a\($0)") }, to: a)
        _ = try await c.broker.publish((0..<5).map { Message(text: "b\($0)") }, to: b)
        let consumer = try await c.broker.consumeQueue(a)
        let got = try await c.receive(5, from: consumer)
        let extra = try await consumer.next(timeout: .milliseconds(300))
        await consumer.close()
        try c.expect(got.allSatisfy { $0.message.text?.hasPrefix("a") == true }, "queue A delivered B's messages")
        try c.expect(extra == nil, "queue A delivered more than its 5 messages")
        let statsB = try await c.broker.stats(for: b)
        try c.expect(statsB.depth == 5, "queue B depth \(statsB.depth), expected 5")
    }

    static let manyDestinations = ConformanceCase("queue.manyDestinations.atOnce", area: .queue, requires: .queues) {
        c in
        let names = (0..<25).map { c.name("many\($0)") }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for name in names {
                group.addTask {
                    try await c.broker.createQueue(name)
                    _ = try await c.broker.publish([Message(text: name + "#1"), Message(text: name + "#2")], to: name)
                }
            }
            try await group.waitForAll()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for name in names {
                group.addTask {
                    let consumer = try await c.broker.consumeQueue(name)
                    let got = try await c.receive(2, from: consumer)
                    await consumer.close()
                    try c.expect(
                        Set(got.compactMap(\.message.text)) == [name + "#1", name + "#2"],
                        "\(name) delivered \(got.compactMap(\.message.text))"
                    )
                }
            }
            try await group.waitForAll()
        }
        let listed = Set(try await c.broker.listDestinations().map(\.name))
        try c.expect(
            Set(names).isSubset(of: listed),
            "listDestinations misses \(Set(names).subtracting(listed).count) queues"
        )
    }

    static let closeWhileConsuming = ConformanceCase(
        "queue.closeWhileConsuming.losesNothing",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("closing")
        try await c.broker.createQueue(queue)
        let total = 50
        _ = try await c.broker.publish((0..<total).map { Message(text: "m\($0)") }, to: queue)
        let handled = Collector<String>()
        let first = try await c.broker.consumeQueue(queue, options: .init(prefetch: 8, visibilityTimeout: .seconds(2)))
        let processor = DeliveryProcessor(consumer: first, options: .init(concurrency: 4, shutdownTimeout: .seconds(5)))
        { delivery in
            try await Task.sleep(for: .milliseconds(5))
            handled.append(delivery.message.text ?? "")
        }
        let run = Task { try await processor.run() }
        try await c.eventually("20 messages handled") { handled.count >= 20 }
        processor.stop()
        try await run.value
        let second = try await c.broker.consumeQueue(queue, options: .init(prefetch: 16))
        while Set(handled.values).count < total, let delivery = try await second.next(timeout: .seconds(20)) {
            handled.append(delivery.message.text ?? "")
            try await delivery.ack()
        }
        await second.close()
        let distinct = Set(handled.values)
        try c.expect(
            distinct.count == total,
            "after closing mid-stream only \(distinct.count) of \(total) were handled"
        )
    }

    static let batchPublishReceipts = ConformanceCase(
        "queue.batchPublish.receiptsInOrder",
        area: .queue,
        requires: .queues
    ) { c in
        let queue = c.name("batch")
        try await c.broker.createQueue(queue)
        let messages = (0..<25).map { Message(text: "b\($0)") }
        let receipts = try await c.broker.publish(messages, to: queue)
        try c.expect(receipts.map(\.messageID) == messages.map(\.id), "receipts are not in message order")
        let empty = try await c.broker.publish([Message](), to: queue)
        try c.expect(empty.isEmpty, "empty batch returned receipts")
    }

    static let statsDepth = ConformanceCase("queue.stats.depthInFlightAndDrain", area: .queue, requires: .queues) { c in
        let queue = c.name("stats")
        try await c.broker.createQueue(queue)
        _ = try await c.broker.publish((0..<5).map { Message(text: "s\($0)") }, to: queue)
        try await c.eventually("depth 5") { try await c.broker.stats(for: queue).depth == 5 }
        let consumer = try await c.broker.consumeQueue(queue, options: .init(prefetch: 2))
        let held = try await c.receive(2, from: consumer, ack: false)
        try await c.eventually("2 in flight") {
            let stats = try await c.broker.stats(for: queue)
            return stats.inFlight == 2 && stats.depth + stats.inFlight == 5
        }
        for delivery in held { try await delivery.ack() }
        _ = try await c.receive(3, from: consumer)
        await consumer.close()
        try await c.eventually("an empty queue") {
            let stats = try await c.broker.stats(for: queue)
            return stats.depth == 0 && stats.inFlight == 0 && stats.delayed == 0
        }
        let missing = c.name("missing")
        try await c.expectError(.unknownDestination) { _ = try await c.broker.stats(for: missing) }
    }
}
