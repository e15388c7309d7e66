import BrokerAPI
import Examples
import Foundation
import Logging
import Testing

/// Runs `body` on a fresh in-memory store, so tests never see each other's messages.
private func withFreshBroker(_ body: (any Broker) async throws -> Void) async throws {
    let broker = try await Brokers.connect(url: "memory://examples-\(UUID().uuidString)")
    do {
        try await body(broker)
    } catch {
        await broker.close()
        throw error
    }
    await broker.close()
}

/// Job failures and the poison message log warnings on purpose; keep test output to errors.
private let logger: Logger = {
    var logger = Logger(label: "examples-tests")
    logger.logLevel = .error
    return logger
}()

@Suite("ChatExample")
struct ChatExampleTests {
    @Test("every event reaches both groups, e-mails retry, the bounce lands in the DLQ")
    func countsEverything() async throws {
        try await withFreshBroker { broker in
            let report = try await ChatExample.run(broker: broker, logger: logger)

            // Stream: 20 events over 4 conversations, both groups saw all of them, in order, no lag.
            #expect(report.backend == "memory")
            #expect(report.published == 20)
            #expect(report.conversations == 4)
            #expect(report.handledByGroup == [ChatExample.readReceiptsGroup: 20, ChatExample.pushGroup: 20])
            #expect(report.outOfOrder == 0)
            #expect(report.lagByGroup == [ChatExample.readReceiptsGroup: 0, ChatExample.pushGroup: 0])

            // Queue: one notification per event; 5 messages per conversation, participants take
            // turns: the second participant (offline in conv-1..3) receives messages 1, 3, 5.
            #expect(report.notificationsHandled == 20)
            #expect(report.pushesDelivered == 11)
            #expect(report.offlineNotifications == 9)

            // Jobs: one e-mail per (conversation, offline user): ghost (bounces), carol (1 retry),
            // erin (2 retries). The bounce is retried 3 times, then dead-lettered after 4 attempts.
            #expect(report.emailsDispatched == 3)
            #expect(report.emailsSent == 2)
            #expect(report.emailsRetried == 1 + 2 + 3)
            #expect(report.emailsDeadLettered == 1)
            #expect(report.dlqEntries == 1)
            let entry = try #require(report.deadLetters.first)
            #expect(entry.originalDestination == ChatExample.emailQueue)
            #expect(entry.attempts == ChatExample.emailRetryPolicy.maxAttempts)
            #expect(entry.lastError.contains("bounce@chat.example"))
            #expect(entry.lastError.contains("451"))
            #expect(report.lastDeadLetterError == entry.lastError)

            // The broker agrees.
            let emails = try await broker.stats(for: ChatExample.emailQueue)
            #expect(emails.deadLettered == 1)
            #expect(emails.depth == 0 && emails.inFlight == 0 && emails.delayed == 0)
            let notifications = try await broker.stats(for: ChatExample.notificationsQueue)
            #expect(notifications.depth == 0 && notifications.inFlight == 0)
            let stream = try await broker.stats(for: ChatExample.stream)
            #expect(stream.depth == 20)
            #expect(stream.groups.map(\.group).sorted() == [ChatExample.pushGroup, ChatExample.readReceiptsGroup])
            #expect(stream.groups.allSatisfy { $0.lag == 0 && $0.pending == 0 && $0.consumers == 0 })
            let destinations = try await broker.listDestinations()
            #expect(destinations.first { $0.name == ChatExample.stream }?.partitions == ChatExample.partitions)

            // The summary is readable.
            let text = report.description
            #expect(text.contains("20 message.sent events over 4 conversations"))
            #expect(text.contains("2 sent"))
            #expect(text.contains("1 dead-lettered"))
            #expect(text.contains("bounce@chat.example"))
        }
    }

    @Test("a second run reuses the destinations and counts only its own messages")
    func rerunOnExistingDestinations() async throws {
        try await withFreshBroker { broker in
            let first = try await ChatExample.run(broker: broker, logger: logger, messages: 8)
            let second = try await ChatExample.run(broker: broker, logger: logger, messages: 8)
            #expect(first.runID != second.runID)
            for report in [first, second] {
                #expect(report.published == 8)
                #expect(report.handledByGroup == [ChatExample.readReceiptsGroup: 8, ChatExample.pushGroup: 8])
                #expect(report.lagByGroup == [ChatExample.readReceiptsGroup: 0, ChatExample.pushGroup: 0])
                #expect(report.outOfOrder == 0)
                #expect(report.notificationsHandled == 8)
                #expect(report.pushesDelivered == 5)
                #expect(report.emailsDispatched == 3)
                #expect(report.emailsSent == 2)
                #expect(report.emailsDeadLettered == 1)
                #expect(report.dlqEntries == 1)
            }
            // Both runs' bounces are in the DLQ; each report shows its own.
            #expect(try await broker.deadLetters(of: ChatExample.emailQueue, limit: 100).count == 2)
            #expect(first.deadLetters.first?.messageID != second.deadLetters.first?.messageID)
            #expect(try await broker.stats(for: ChatExample.stream).depth == 16)
        }
    }

    @Test("rejects a backend without the needed capabilities before touching it")
    func requiresCapabilities() async throws {
        try await withFreshBroker { memory in
            let limited = LimitedBroker(base: memory, capabilities: [.queues])
            let error = await #expect(throws: BrokerError.self) {
                _ = try await ChatExample.run(broker: limited, logger: logger)
            }
            #expect(error?.code == .unsupported)
            await #expect(throws: BrokerError.self) {
                _ = try await CommerceExample.run(broker: limited, logger: logger)
            }
            let destinations = try await memory.listDestinations()
            #expect(destinations.isEmpty)
        }
    }

    @Test("a run that cannot finish in time throws with its progress and still shuts down")
    func timesOutWithProgress() async throws {
        try await withFreshBroker { broker in
            let error = await #expect(throws: ExampleError.self) {
                _ = try await ChatExample.run(broker: broker, logger: logger, messages: 4, timeout: .zero)
            }
            guard case .timedOut(let example, _, let progress) = error else {
                Issue.record("expected timedOut, got \(String(describing: error))")
                return
            }
            #expect(example == "chat")
            #expect(progress.contains(ChatExample.readReceiptsGroup))
            #expect(progress.contains("e-mails settled"))
            // Consumers were closed: nobody is left in the groups.
            let stream = try await broker.stats(for: ChatExample.stream)
            #expect(stream.groups.allSatisfy { $0.consumers == 0 })
        }
    }

    @Test("rejects a message count below 1")
    func rejectsBadArguments() async throws {
        try await withFreshBroker { broker in
            await #expect(throws: ExampleError.self) {
                _ = try await ChatExample.run(broker: broker, logger: logger, messages: 0)
            }
            await #expect(throws: ExampleError.self) {
                _ = try await CommerceExample.run(broker: broker, logger: logger, orders: 0)
            }
        }
    }
}

@Suite("CommerceExample")
struct CommerceExampleTests {
    @Test("all orders imported, logs aggregated by level, the poison notification dead-lettered")
    func countsEverything() async throws {
        try await withFreshBroker { broker in
            let report = try await CommerceExample.run(broker: broker, logger: logger)

            // Worker queue: 25 orders + the webhook's duplicate of order 1; orders 3, 13, 23 time out once.
            #expect(report.ordersDispatched == 26)
            #expect(report.ordersImported == 25)
            #expect(report.duplicatesDropped == 1)
            #expect(report.importRetries == 3)
            #expect(report.importsDeadLettered == 0)
            #expect(report.importDeadLetters.isEmpty)
            #expect((1...CommerceExample.workerConcurrency).contains(report.peakConcurrentImports))

            // Logs: one info per import, a warning per order with more than 3 lines (i % 5 in 3, 4),
            // an error per ERP timeout; all aggregated, no lag.
            #expect(report.logsByLevel == ["info": 25, "warning": 10, "error": 3])
            #expect(report.logsPublished == 38)
            #expect(report.logsAggregated == 38)
            #expect(report.logLag == 0)

            // Notifications: 25 confirmations + 1 poison message, which went straight to the DLQ.
            #expect(report.notificationsPublished == 26)
            #expect(report.notificationsHandled == 25)
            #expect(report.notificationDeadLetters.count == 1)
            let poison = try #require(report.notificationDeadLetters.first)
            #expect(poison.originalDestination == CommerceExample.notificationsQueue)
            #expect(poison.attempts == 1)
            #expect(poison.key == "legacy-shop")
            #expect(poison.lastError.contains("undecodable"))

            // The broker agrees.
            let notifications = try await broker.stats(for: CommerceExample.notificationsQueue)
            #expect(notifications.deadLettered == 1)
            #expect(notifications.depth == 0 && notifications.inFlight == 0)
            let imports = try await broker.stats(for: CommerceExample.importQueue)
            #expect(imports.deadLettered == 0)
            #expect(imports.depth == 0 && imports.inFlight == 0 && imports.delayed == 0)
            let logs = try await broker.stats(for: CommerceExample.logStream)
            #expect(logs.depth == 38)
            #expect(logs.groups.map(\.group) == [CommerceExample.logGroup])
            #expect(logs.groups.first?.lag == 0)

            let text = report.description
            #expect(text.contains("25 orders imported"))
            #expect(text.contains("error 3, info 25, warning 10"))
            #expect(text.contains("undecodable"))
        }
    }

    @Test("a second run reuses the destinations and counts only its own messages")
    func rerunOnExistingDestinations() async throws {
        try await withFreshBroker { broker in
            let first = try await CommerceExample.run(broker: broker, logger: logger, orders: 10)
            let second = try await CommerceExample.run(broker: broker, logger: logger, orders: 10)
            for report in [first, second] {
                #expect(report.ordersImported == 10)
                #expect(report.duplicatesDropped == 1)
                #expect(report.importRetries == 1)
                #expect(report.logsByLevel == ["info": 10, "warning": 4, "error": 1])
                #expect(report.logLag == 0)
                #expect(report.notificationsHandled == 10)
                #expect(report.notificationDeadLetters.count == 1)
            }
            #expect(try await broker.deadLetters(of: CommerceExample.notificationsQueue, limit: 100).count == 2)
        }
    }

    @Test("both examples run side by side on one broker")
    func bothExamplesShareABroker() async throws {
        try await withFreshBroker { broker in
            async let chat = ChatExample.run(broker: broker, logger: logger, messages: 12)
            async let commerce = CommerceExample.run(broker: broker, logger: logger, orders: 12)
            let (chatReport, commerceReport) = try await (chat, commerce)
            #expect(chatReport.handledByGroup.values.allSatisfy { $0 == 12 })
            #expect(chatReport.emailsDeadLettered == 1)
            #expect(commerceReport.ordersImported == 12)
            #expect(commerceReport.notificationDeadLetters.count == 1)
        }
    }
}

@Suite("JobsExample")
struct JobsExampleTests {
    @Test("exact counts: retries, one dead letter, one duplicate, delayed jobs on time, maxJobs worker stops at 10")
    func countsEverything() async throws {
        try await withFreshBroker { broker in
            try await RealBrokerExampleChecks.jobs(on: broker, backend: "memory")
        }
    }

    @Test("the smallest run, with the queue kept: the broker still holds the dead letter")
    func smallestRunKeepsQueue() async throws {
        try await withFreshBroker { broker in
            let report = try await JobsExample.run(
                broker: broker,
                logger: logger,
                jobs: 6,
                firstWorkerJobs: 5,
                keepQueue: true
            )
            // 1 invoice (+ its duplicate), 1 image, 2 webhooks, 1 reminder, 1 poison charge.
            #expect(report.dispatched == 7)
            #expect(report.completed == 5 && report.runTwice.isEmpty && report.lost == 0)
            #expect(report.retried == 5 && report.deadLettered == 1 && report.duplicatesDropped == 1)
            #expect(report.attempts == 2 + 1 + (2 + 3) + 3)
            #expect(report.firstWorkerHandled == 5)
            #expect(report.delayed.count == 1 && report.startedEarly.isEmpty)
            #expect(report.description.contains("queue kept"))
            let stats = try await broker.stats(for: report.queue)
            #expect(stats.deadLettered == 1 && stats.depth == 0 && stats.inFlight == 0 && stats.delayed == 0)
            let entries = try await broker.deadLetters(of: report.queue, limit: 10)
            #expect(entries.map(\.envelope.original.headers["x-brokerkit-job"]) == ["jobs.charge-card"])
        }
    }

    @Test("the queue and its dead-letter queue are deleted unless kept; each run has its own queue")
    func deletesItsQueue() async throws {
        try await withFreshBroker { broker in
            let first = try await JobsExample.run(broker: broker, logger: logger, jobs: 6)
            let second = try await JobsExample.run(broker: broker, logger: logger, jobs: 6)
            #expect(first.queue != second.queue)
            #expect(first.firstWorkerHandled == 2 && second.firstWorkerHandled == 2)
            #expect(second.completed == 5 && second.deadLettered == 1 && second.duplicatesDropped == 1)
            let names = try await broker.listDestinations().map(\.name)
            #expect(!names.contains(first.queue) && !names.contains(second.queue), "left: \(names)")
        }
    }

    @Test("rejects too few jobs, a first-worker share out of range, and a backend without delays")
    func rejectsBadArguments() async throws {
        try await withFreshBroker { broker in
            for (jobs, firstWorkerJobs) in [(5, nil), (30, 0), (30, 28)] as [(Int, Int?)] {
                await #expect(throws: ExampleError.self) {
                    _ = try await JobsExample.run(
                        broker: broker,
                        logger: logger,
                        jobs: jobs,
                        firstWorkerJobs: firstWorkerJobs
                    )
                }
            }
            let limited = LimitedBroker(base: broker, capabilities: [.queues])
            let error = await #expect(throws: BrokerError.self) {
                _ = try await JobsExample.run(broker: limited, logger: logger)
            }
            #expect(error?.code == .unsupported)
            let destinations = try await broker.listDestinations()
            #expect(destinations.isEmpty)
        }
    }
}

/// Forwards to another broker but claims fewer capabilities.
private struct LimitedBroker: Broker {
    let base: any Broker
    let capabilities: BrokerCapabilities

    var backendName: String { base.backendName }
    var configuration: BrokerConfiguration { base.configuration }

    func publish(_ message: Message, to destination: String, options: PublishOptions) async throws -> PublishReceipt {
        try await base.publish(message, to: destination, options: options)
    }
    func publish(
        _ messages: [Message],
        to destination: String,
        options: PublishOptions
    ) async throws -> [PublishReceipt] {
        try await base.publish(messages, to: destination, options: options)
    }
    func consumeQueue(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
        try await base.consumeQueue(queue, options: options)
    }
    func consumeStream(
        _ stream: String,
        group: String,
        options: StreamConsumerOptions
    ) async throws -> any MessageConsumer {
        try await base.consumeStream(stream, group: group, options: options)
    }
    func close() async { await base.close() }
    func createDestination(_ name: String, kind: DestinationKind, options: DestinationOptions) async throws {
        try await base.createDestination(name, kind: kind, options: options)
    }
    func deleteDestination(_ name: String) async throws { try await base.deleteDestination(name) }
    func listDestinations() async throws -> [DestinationInfo] { try await base.listDestinations() }
    func stats(for destination: String) async throws -> DestinationStats { try await base.stats(for: destination) }
    func deadLetters(of destination: String, limit: Int) async throws -> [DeadLetterEntry] {
        try await base.deadLetters(of: destination, limit: limit)
    }
    func replayDeadLetters(of destination: String, limit: Int) async throws -> Int {
        try await base.replayDeadLetters(of: destination, limit: limit)
    }
}
