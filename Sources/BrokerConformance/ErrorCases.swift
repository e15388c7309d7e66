@_spi(BrokerBackend) import BrokerAPI
import Foundation

enum ErrorCases {
    static let all: [ConformanceCase] = [
        unreachable, invalidConfiguration, oversized, invalidNames, reservedNames, reservedHeaders, closedBroker,
        wrongKind,
    ]

    static let unreachable = ConformanceCase(
        "errors.unreachableBroker.failsWithinConnectTimeout",
        area: .errors,
        requires: .crossProcess
    ) { c in
        guard let url = c.harness.unreachableURL else { throw c.fail("the harness gives no unreachable URL") }
        let started = ContinuousClock.now
        let error = try await c.expectError(.connectionFailed) {
            let broker = try await Brokers.connect(
                url: url,
                options: ["connect.timeout": "2s"],
                registry: c.harness.registry
            )
            defer { Task { await broker.close() } }
            try await broker.publish(Message(text: "x"), to: c.name("unreachable"))
        }
        let took = ContinuousClock.now - started
        try c.expect(took < .seconds(6), "failing took \(took) with connect.timeout 2s")
        try c.expect(
            error.description.contains(BrokerURL.redact(url).split(separator: "/").last.map(String.init) ?? url),
            "error does not name the broker: \(error)"
        )
    }

    static let invalidConfiguration = ConformanceCase(
        "errors.invalidConfiguration.namesTheKey",
        area: .errors,
        requires: []
    ) { c in
        let unknown = try await c.expectError(.invalidConfiguration) {
            _ = try Brokers.configuration(
                url: c.harness.url,
                options: ["no.such.option": "1"],
                registry: c.harness.registry
            )
        }
        try c.expect(unknown.message.contains("no.such.option"), "error does not name the unknown key: \(unknown)")
        let invalid = try await c.expectError(.invalidConfiguration) {
            _ = try Brokers.configuration(
                url: c.harness.url,
                options: ["connect.timeout": "soon"],
                registry: c.harness.registry
            )
        }
        try c.expect(
            invalid.message.contains("connect.timeout") && invalid.message.contains("soon"),
            "error does not name key and value: \(invalid)"
        )
        let badURL = try await c.expectError(.invalidConfiguration) {
            _ = try Brokers.configuration(
                url: c.harness.url.replacingOccurrences(of: "://", with: ":/"),
                registry: c.harness.registry
            )
        }
        try c.expect(badURL.message.contains("scheme://"), "bad URL error unclear: \(badURL)")
    }

    static let oversized = ConformanceCase(
        "errors.oversizedMessage.clearErrorOthersUnaffected",
        area: .errors,
        requires: .queues
    ) { c in
        let queue = c.name("oversized")
        let small = try await c.harness.connect(["max.message.bytes": "4096"])
        try await small.createQueue(queue)
        let big = Message(text: String(repeating: "x", count: 10_000))
        let error = try await c.expectError(.messageTooLarge) { try await small.publish(big, to: queue) }
        try c.expect(
            error.message.contains("4096") && error.message.contains(big.id),
            "error does not name the limit and message: \(error)"
        )
        try c.expect(error.destination == queue, "error does not name the destination: \(error)")
        let batchError = try await c.expectError(.messageTooLarge) {
            try await small.publish([Message(text: "ok"), big], to: queue)
        }
        _ = batchError
        try await small.publish(Message(text: "fits"), to: queue)
        let consumer = try await small.consumeQueue(queue)
        let got = try await c.receive(1, from: consumer)
        let extra = try await consumer.next(timeout: .milliseconds(300))
        await consumer.close()
        await small.close()
        try c.expect(
            got[0].message.text == "fits",
            "the normal message after the oversized one is \(String(describing: got[0].message.text))"
        )
        try c.expect(extra == nil, "part of a rejected batch was published")
    }

    static let invalidNames = ConformanceCase(
        "errors.invalidDestinationName.clearError",
        area: .errors,
        requires: .queues
    ) { c in
        for bad in ["", "has space", "slash/inside", "-leading", String(repeating: "q", count: 300), "ünï"] {
            let error = try await c.expectError(.invalidDestination) {
                try await c.broker.publish(Message(text: "x"), to: bad)
            }
            try c.expect(error.message.contains("invalid destination name"), "unclear error for '\(bad)': \(error)")
        }
        try await c.expectError(.invalidDestination) { _ = try await c.broker.consumeQueue("bad name") }
        if c.harness.capabilities.contains(.streams) {
            try await c.expectError(.invalidDestination) {
                _ = try await c.broker.consumeStream(c.name("okstream"), group: "bad group!", options: .init())
            }
        }
    }

    /// Names BrokerKit derives for its own structures cannot be used by an app: publishing to
    /// `orders.delay` would inject into another queue's delayed messages.
    static let reservedNames = ConformanceCase(
        "errors.reservedDestinationName.refused",
        area: .errors,
        requires: .queues
    ) { c in
        let base = c.name("res")
        for bad in [
            base + ".delay", base + ":delay", base + ".dlq", base + ":dlq", base + ":retry", base + ".retry.2",
            base + ".wait.500", base + ".wait.500.quorum", base + ".offsets.g", "__brokerkit.catalog",
            "__consumer_offsets",
        ] {
            let error = try await c.expectError(.invalidDestination) {
                try await c.broker.publish(Message(text: "x"), to: bad)
            }
            try c.expect(
                error.message.contains("reserved") && error.message.contains(bad),
                "unclear error for '\(bad)': \(error)"
            )
            try await c.expectError(.invalidDestination) { _ = try await c.broker.consumeQueue(bad) }
        }
        // Near misses stay usable.
        for fine in [base + ".delayed", base + ".retry.x", base + "-dlq"] {
            try await c.broker.publish(Message(text: "x"), to: fine)
            try? await c.broker.deleteDestination(fine)
        }
    }

    /// Apps cannot publish BrokerKit's reserved headers (a record carrying a forged
    /// `x-brokerkit-deliver-at` would be held back), nor more headers than the documented
    /// limits; nothing of a refused batch is sent. The two job headers stay publishable.
    static let reservedHeaders = ConformanceCase(
        "errors.reservedOrOversizedHeaders.refused",
        area: .errors,
        requires: .queues
    ) { c in
        let queue = c.name("res-headers")
        try await c.broker.createQueue(queue)
        let future = "2999-01-01T00:00:00.000Z"
        for name in [
            HeaderName.deliverAt, HeaderName.attempt, HeaderName.originalDestination, "X-BrokerKit-Attempt",
            "x-brokerkit-anything",
        ] {
            let error = try await c.expectError(.invalidMessage) {
                _ = try await c.broker.publish(
                    [Message(text: "ok"), Message(text: "bad", headers: [name: future])],
                    to: queue
                )
            }
            try c.expect(error.message.contains("reserved header '\(name)'"), "unclear error for \(name): \(error)")
        }
        var many: [String: String] = [:]
        for i in 0...PublishValidation.maxHeaderCount { many["h\(i)"] = "v" }
        try await c.expectError(.messageTooLarge) {
            try await c.broker.publish(Message(text: "many", headers: many), to: queue)
        }
        let big = String(repeating: "v", count: PublishValidation.maxHeaderBytes)
        try await c.expectError(.messageTooLarge) {
            try await c.broker.publish(Message(text: "big", headers: ["big": big]), to: queue)
        }
        let stats = try await c.broker.stats(for: queue)
        try c.expect(stats.depth == 0, "a refused message was sent: depth \(stats.depth)")
        // Job metadata may be set by any producer.
        try await c.broker.publish(
            Message(text: "job", headers: [HeaderName.jobName: "x", HeaderName.idempotencyKey: "k"]),
            to: queue
        )
    }

    /// A queue consumed as a stream, a stream as a queue, a delayed publish to a stream: each
    /// refused with the code that says so, by this client and by one that did not create the
    /// destinations, and both destinations work afterwards.
    static let wrongKind = ConformanceCase(
        "errors.wrongDestinationKind.refusedAndBothStillWork",
        area: .errors,
        requires: [.queues, .streams, .delayedDelivery]
    ) { c in
        let queue = c.name("kind-q")
        let stream = c.name("kind-s")
        try await c.broker.createQueue(queue)
        try await c.broker.createStream(stream)
        let other = try await c.harness.connect()
        for broker in [c.broker, other] {
            let asQueue = try await c.expectError(.wrongDestinationKind) { _ = try await broker.consumeQueue(stream) }
            try c.expect(
                asQueue.message.contains(stream) && asQueue.destination == stream,
                "error does not name the stream: \(asQueue)"
            )
            let asStream = try await c.expectError(.wrongDestinationKind) {
                _ = try await broker.consumeStream(queue, group: "g", options: .init())
            }
            try c.expect(asStream.destination == queue, "error does not name the queue: \(asStream)")
            let delayed = try await c.expectError(.unsupported) {
                _ = try await broker.publish(
                    Message(text: "later"),
                    to: stream,
                    options: PublishOptions(deliverAt: Date().addingTimeInterval(60))
                )
            }
            try c.expect(
                delayed.message.contains("delayed") && delayed.destination == stream,
                "unclear error for a delayed publish to a stream: \(delayed)"
            )
            try await c.expectError(.wrongDestinationKind) { try await broker.createStream(queue) }
        }
        await other.close()
        try await c.broker.publish(Message(text: "q"), to: queue)
        try await c.broker.publish(Message(text: "s"), to: stream)
        let queueConsumer = try await c.broker.consumeQueue(queue)
        let fromQueue = try await c.receive(1, from: queueConsumer)
        await queueConsumer.close()
        let member = try await c.broker.consumeStream(stream, group: c.name("g"), options: .init(start: .earliest))
        let fromStream = try await c.receive(1, from: member)
        await member.close()
        try c.expect(
            fromQueue[0].message.text == "q" && fromStream[0].message.text == "s",
            "after the refusals the destinations hold \(fromQueue[0].message.text ?? "?") and \(fromStream[0].message.text ?? "?")"
        )
        let streamStats = try await c.broker.stats(for: stream)
        try c.expect(streamStats.delayed == 0, "a refused delayed message was stored: \(streamStats)")
    }

    static let closedBroker = ConformanceCase(
        "errors.closedBroker.rejectsAndCloseIsIdempotent",
        area: .errors,
        requires: .queues
    ) { c in
        let broker = try await c.harness.connect()
        let queue = c.name("closed")
        try await broker.createQueue(queue)
        let consumer = try await broker.consumeQueue(queue)
        await broker.close()
        await broker.close()
        try await c.expectError(.closed) { try await broker.publish(Message(text: "late"), to: queue) }
        let next = try await consumer.next(timeout: .seconds(2))
        try c.expect(next == nil, "a consumer of a closed broker still delivers")
    }
}
