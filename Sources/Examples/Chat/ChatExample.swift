import BrokerAPI
import Foundation
import Logging
import ServiceLifecycle

/// A chat backend on one broker:
///
/// - every chat message becomes a `message.sent` event on the stream `chat.message.sent`
///   (4 partitions, key = conversation id, so order holds per conversation);
/// - two consumer groups read every event: `read-receipts` (tracks per-conversation order) and
///   `push-notifications` (turns each event into a task on the queue `chat.notifications`);
/// - the notifications queue pushes to online users; for offline users it dispatches one
///   "unread messages" e-mail job per conversation (delayed by 50 ms) onto `chat.emails`;
/// - a ``JobWorker`` sends the e-mails with exponential backoff (20–200 ms). Greylisting mail
///   servers fail some attempts and succeed on retry; `bounce@chat.example` never succeeds and
///   lands in `chat.emails`' dead-letter queue after 4 attempts.
///
/// ```swift
/// let broker = try await Brokers.connect(url: "memory://")
/// let report = try await ChatExample.run(broker: broker, logger: Logger(label: "chat"))
/// print(report)
/// ```
public enum ChatExample {
    /// The stream of `message.sent` events.
    public static let stream = "chat.message.sent"
    /// The queue of notification tasks.
    public static let notificationsQueue = "chat.notifications"
    /// The job queue of e-mails.
    public static let emailQueue = "chat.emails"
    /// The consumer group that records read receipts.
    public static let readReceiptsGroup = "read-receipts"
    /// The consumer group that fans events out to notifications.
    public static let pushGroup = "push-notifications"
    /// Partitions of the stream when the example creates it.
    public static let partitions = 4
    /// Attempts and backoff of the e-mail jobs.
    public static let emailRetryPolicy = RetryPolicy(
        maxAttempts: 4,
        backoff: .exponential(initial: .milliseconds(20), multiplier: 2, max: .milliseconds(200), jitter: 0.1)
    )
    /// What the example needs from a backend.
    public static let requiredCapabilities: BrokerCapabilities = [.queues, .streams, .consumerGroups, .delayedDelivery]

    /// Runs the chat backend over `messages` chat messages, waits until every event, notification
    /// and e-mail has settled (at most `timeout`), shuts down gracefully and reports.
    ///
    /// Destinations are created when missing and reused when they exist; only this run's
    /// messages are counted (each run has its own id), so running it again on the same broker
    /// reports the same numbers.
    public static func run(
        broker: any Broker,
        logger: Logger,
        messages: Int = 20,
        timeout: Duration = .seconds(30)
    ) async throws -> Report {
        guard messages >= 1 else {
            throw ExampleError.invalidArgument("messages must be at least 1, got \(messages)")
        }
        try broker.require(requiredCapabilities, for: "the chat example")
        let started = ContinuousClock.now
        let runID = ExampleSupport.newRunID()
        let logger = {
            var logger = logger
            logger[metadataKey: "example"] = "chat"
            logger[metadataKey: "run"] = "\(runID)"
            return logger
        }()

        try await ExampleSupport.ensureDestination(
            stream,
            kind: .stream,
            options: DestinationOptions(partitions: partitions),
            on: broker
        )
        try await ExampleSupport.ensureDestination(notificationsQueue, kind: .queue, on: broker)
        try await ExampleSupport.ensureDestination(emailQueue, kind: .queue, on: broker)

        let events = ChatDirectory.plan(runID: runID, count: messages)
        let expectedEmails = Set(
            events.compactMap { event -> String? in
                ChatDirectory.users[event.recipient]?.online == false
                    ? "\(event.conversationID)/\(event.recipient)" : nil
            }
        ).count
        let state = ChatState(ChatCounts())

        // Consumers first, so a broker that refuses them fails the run at once.
        let handlerPolicy = RetryPolicy(
            maxAttempts: 3,
            backoff: .exponential(initial: .milliseconds(20), max: .milliseconds(200))
        )
        let streamOptions = StreamConsumerOptions(start: .earliest, prefetch: 32, retryPolicy: handlerPolicy)
        var consumers: [any MessageConsumer] = []
        do {
            consumers.append(try await broker.consumeStream(stream, group: readReceiptsGroup, options: streamOptions))
            consumers.append(try await broker.consumeStream(stream, group: pushGroup, options: streamOptions))
            consumers.append(
                try await broker.consumeQueue(
                    notificationsQueue,
                    options: QueueConsumerOptions(prefetch: 8, retryPolicy: handlerPolicy)
                )
            )
        } catch {
            for consumer in consumers { await consumer.close() }
            throw error
        }
        let (readConsumer, pushConsumer, notificationsConsumer) = (consumers[0], consumers[1], consumers[2])

        let processorOptions = DeliveryProcessor.Options(
            concurrency: 4,
            orderedByKey: true,
            shutdownTimeout: .seconds(5)
        )
        let readReceipts = DeliveryProcessor(consumer: readConsumer, options: processorOptions, logger: logger) {
            delivery in
            try await recordReadReceipt(delivery, runID: runID, state: state)
        }
        let pushes = DeliveryProcessor(consumer: pushConsumer, options: processorOptions, logger: logger) { delivery in
            try await fanOutNotification(delivery, runID: runID, state: state, broker: broker)
        }
        let jobs = JobQueue(broker: broker, queue: emailQueue)
        let notifications = DeliveryProcessor(
            consumer: notificationsConsumer,
            options: processorOptions,
            logger: logger
        ) { delivery in
            try await notify(delivery, runID: runID, state: state, jobs: jobs, logger: logger)
        }
        let emailWorker = makeEmailWorker(broker: broker, runID: runID, state: state, logger: logger)

        // A ServiceGroup shuts services down in reverse order: the stream readers stop first,
        // the e-mail worker last.
        let services: [(name: String, service: any Service)] = [
            ("email-worker", emailWorker),
            ("notifications", ProcessorService(notifications)),
            (pushGroup, ProcessorService(pushes)),
            (readReceiptsGroup, ProcessorService(readReceipts)),
        ]
        let deadLetters: [DeadLetterSummary]
        do {
            deadLetters = try await ExampleSupport.withServices(services, example: "chat", logger: logger) {
                let payloads = try events.map {
                    Message(key: $0.conversationID, payload: try ExampleSupport.encode($0))
                }
                try await broker.publish(payloads, to: stream)
                logger.info("published \(payloads.count) message.sent events to \(stream)")
                try await ExampleSupport.waitUntilDone(example: "chat", timeout: timeout) {
                    try await progress(
                        broker: broker,
                        state: state,
                        runID: runID,
                        messages: messages,
                        expectedEmails: expectedEmails
                    )
                }
                return try await emailDeadLetters(broker: broker, runID: runID)
            }
        } catch {
            for consumer in consumers { await consumer.close() }
            throw error
        }
        for consumer in consumers { await consumer.close() }

        let counts = state.snapshot
        let streamStats = try await broker.stats(for: stream)
        var lag: [String: Int] = [:]
        for group in [readReceiptsGroup, pushGroup] {
            lag[group] = ExampleSupport.lag(of: group, in: streamStats) ?? -1
        }
        let report = Report(
            backend: broker.backendName,
            runID: runID,
            published: events.count,
            conversations: Set(events.map(\.conversationID)).count,
            handledByGroup: [readReceiptsGroup: counts.readReceipts.count, pushGroup: counts.pushed.count],
            outOfOrder: counts.outOfOrder,
            lagByGroup: lag,
            notificationsHandled: counts.notified.count,
            pushesDelivered: counts.pushesDelivered,
            offlineNotifications: counts.offlineNotifications,
            emailsDispatched: counts.emailsDispatched,
            emailsSent: counts.emailsSent.count,
            emailsRetried: counts.emailRetries,
            emailsDeadLettered: counts.emailsDeadLettered.count,
            deadLetters: deadLetters,
            elapsed: ContinuousClock.now - started
        )
        logger.info("chat example finished", metadata: ["elapsed": "\(ExampleSupport.seconds(report.elapsed))"])
        return report
    }

    // MARK: - Handlers

    /// `read-receipts`: marks the message delivered and checks it arrived in conversation order.
    static func recordReadReceipt(_ delivery: Delivery, runID: String, state: ChatState) async throws {
        let event: MessageSent
        do { event = try ExampleSupport.decode(MessageSent.self, from: delivery.message.payload) } catch {
            try await delivery.deadLetter(reason: "undecodable message.sent event: \(error)")
            return
        }
        guard event.runID == runID else {
            state.update { $0.ignoredForeign += 1 }
            return
        }
        state.update { counts in
            guard counts.readReceipts.insert(event.eventID).inserted else { return }  // redelivery
            let last = counts.lastSeqByConversation[event.conversationID] ?? 0
            if event.seq < last { counts.outOfOrder += 1 }
            counts.lastSeqByConversation[event.conversationID] = max(last, event.seq)
        }
    }

    /// `push-notifications`: one notification task per event, keyed by recipient.
    static func fanOutNotification(
        _ delivery: Delivery,
        runID: String,
        state: ChatState,
        broker: any Broker
    ) async throws {
        let event: MessageSent
        do { event = try ExampleSupport.decode(MessageSent.self, from: delivery.message.payload) } catch {
            try await delivery.deadLetter(reason: "undecodable message.sent event: \(error)")
            return
        }
        guard event.runID == runID else { return }
        if state.update({ $0.pushed.contains(event.eventID) }) { return }  // already fanned out
        let task = NotificationTask(
            runID: runID,
            eventID: event.eventID,
            conversationID: event.conversationID,
            sender: event.sender,
            recipient: event.recipient,
            preview: String(event.text.prefix(40))
        )
        try await broker.publish(
            Message(
                key: event.recipient,
                payload: try ExampleSupport.encode(task),
                headers: ["content-type": "application/json"]
            ),
            to: notificationsQueue
        )
        state.update { _ = $0.pushed.insert(event.eventID) }
    }

    /// `chat.notifications`: push to online users; offline users get one delayed e-mail per
    /// conversation.
    static func notify(
        _ delivery: Delivery,
        runID: String,
        state: ChatState,
        jobs: JobQueue,
        logger: Logger
    ) async throws {
        let task: NotificationTask
        do { task = try ExampleSupport.decode(NotificationTask.self, from: delivery.message.payload) } catch {
            try await delivery.deadLetter(reason: "undecodable notification task: \(error)")
            return
        }
        guard task.runID == runID else { return }
        guard let user = ChatDirectory.users[task.recipient] else {
            try await delivery.deadLetter(reason: "notification for unknown user '\(task.recipient)'")
            return
        }
        if state.update({ $0.notified.contains(task.eventID) }) { return }
        if user.online {
            // A real app would call APNs / FCM here.
            state.update { counts in
                if counts.notified.insert(task.eventID).inserted { counts.pushesDelivered += 1 }
            }
            return
        }
        let claim = "\(task.conversationID)/\(task.recipient)"
        let first = state.update { $0.emailClaims.insert(claim).inserted }
        if first {
            let email = SendEmail(
                runID: runID,
                to: user.email,
                recipient: user.name,
                conversationID: task.conversationID,
                subject: "You have unread messages from \(task.sender)"
            )
            do {
                // Wait a little in case the user comes back online (needs delayed delivery).
                try await jobs.dispatch(email, after: .milliseconds(50), idempotencyKey: "\(runID):\(claim)")
            } catch {
                state.update { _ = $0.emailClaims.remove(claim) }
                throw error
            }
            state.update { $0.emailsDispatched += 1 }
            logger.debug("dispatched unread-messages e-mail to \(user.email)")
        }
        state.update { counts in
            if counts.notified.insert(task.eventID).inserted { counts.offlineNotifications += 1 }
        }
    }

    static func makeEmailWorker(broker: any Broker, runID: String, state: ChatState, logger: Logger) -> JobWorker {
        let hooks = JobHooks(
            onFailed: { event in
                guard event.retryAfter != nil else { return }
                state.update { if $0.emailJobs.contains(event.jobID) { $0.emailRetries += 1 } }
            },
            onDeadLettered: { event in
                state.update { if $0.emailJobs.contains(event.jobID) { $0.emailsDeadLettered.insert(event.jobID) } }
            }
        )
        let worker = JobWorker(
            broker: broker,
            queue: emailQueue,
            options: JobWorker.Options(concurrency: 2, retryPolicy: emailRetryPolicy, shutdownTimeout: .seconds(5)),
            hooks: hooks,
            logger: logger
        )
        let mailServer = FakeMailServer()
        worker.register(SendEmail.self, options: JobOptions(retryPolicy: emailRetryPolicy, timeout: .seconds(5))) {
            email,
            context in
            guard email.runID == runID else { return }  // an earlier run's leftover: drop it
            state.update { _ = $0.emailJobs.insert(context.jobID) }
            try await mailServer.send(email, attempt: context.attempt)
            state.update { _ = $0.emailsSent.insert(context.jobID) }
            context.logger.info("sent e-mail to \(email.to) on attempt \(context.attempt)")
        }
        return worker
    }

    // MARK: - Completion

    static func progress(
        broker: any Broker,
        state: ChatState,
        runID: String,
        messages: Int,
        expectedEmails: Int
    ) async throws -> ExampleSupport.Progress {
        let counts = state.snapshot
        let streamStats = try await broker.stats(for: stream)
        let notificationStats = try await broker.stats(for: notificationsQueue)
        let emailStats = try await broker.stats(for: emailQueue)
        let readLag = ExampleSupport.lag(of: readReceiptsGroup, in: streamStats)
        let pushLag = ExampleSupport.lag(of: pushGroup, in: streamStats)
        let emailsSettled = counts.emailsSent.count + counts.emailsDeadLettered.count
        let dlq =
            emailsSettled == expectedEmails && !counts.emailsDeadLettered.isEmpty
            ? try await emailDeadLetters(broker: broker, runID: runID).count : 0
        let done =
            counts.readReceipts.count == messages && counts.pushed.count == messages
            && counts.notified.count == messages && emailsSettled == expectedEmails
            && dlq == counts.emailsDeadLettered.count
            && readLag == 0 && pushLag == 0
            && notificationStats.depth == 0 && notificationStats.inFlight == 0
            && emailStats.depth == 0 && emailStats.inFlight == 0 && emailStats.delayed == 0
        let status = """
            \(readReceiptsGroup) \(counts.readReceipts.count)/\(messages) (lag \(readLag.map(String.init) ?? "?")), \
            \(pushGroup) \(counts.pushed.count)/\(messages) (lag \(pushLag.map(String.init) ?? "?")), \
            notifications \(counts.notified.count)/\(messages) (depth \(notificationStats.depth), in flight \(notificationStats.inFlight)), \
            e-mails settled \(emailsSettled)/\(expectedEmails) (depth \(emailStats.depth), in flight \(emailStats.inFlight), \
            delayed \(emailStats.delayed), DLQ entries of this run \(dlq))
            """
        return ExampleSupport.Progress(done: done, status: status)
    }

    /// This run's entries in the e-mail DLQ, oldest first.
    static func emailDeadLetters(broker: any Broker, runID: String) async throws -> [DeadLetterSummary] {
        try await broker.deadLetters(of: emailQueue, limit: 10_000).compactMap { entry in
            guard let email = try? ExampleSupport.decode(SendEmail.self, from: entry.envelope.original.payload),
                email.runID == runID
            else { return nil }
            return DeadLetterSummary(entry)
        }
    }
}
