import BrokerAPI
import KafkaBackend
import RabbitBackend
import RedisStreamsBackend

struct SendEmail: Job {
    static let name = "send-email"
    var to: String
}

func tour(url: String = "memory://") async throws {
    KafkaBackend.register()
    RabbitBackend.register()
    RedisStreamsBackend.register()
    let broker = try await Brokers.connect(url: url)  // or Brokers.connectFromEnvironment() (BROKER_URL)

    // Queue: publish, consume through a processor; a handler that returns acks, one that throws
    // nacks: retried with backoff, dead-lettered after maxAttempts or a NonRetryable error.
    try await broker.createQueue("emails")
    try await broker.publish(Message(key: "user-42", text: "welcome", headers: ["lang": "en"]), to: "emails")
    let retry = RetryPolicy(maxAttempts: 5, backoff: .exponential(initial: .milliseconds(200), max: .seconds(30)))
    let consumer = try await broker.consumeQueue("emails", options: .init(prefetch: 8, retryPolicy: retry))
    let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 4)) { delivery in
        print("sending \(delivery.message.text ?? "") to \(delivery.message.key ?? "")")
    }
    let processing = Task { try await processor.run() }  // runs until stop()

    // Stream: every group sees every event; order per key; replay from a position or a time.
    try await broker.createStream("message.sent", options: .init(partitions: 4))
    try await broker.publish(Message(key: "chat-1", text: "hi"), to: "message.sent")
    let receipts = try await broker.consumeStream(
        "message.sent",
        group: "read-receipts",
        options: .init(start: .earliest)
    )
    if let event = try await receipts.next(timeout: .seconds(5)) { try await event.ack() }
    await receipts.close()

    // Jobs: typed, delayed, idempotent; JobWorker is a swift-service-lifecycle Service.
    let jobs = JobQueue(broker: broker, queue: "jobs")
    try await jobs.dispatch(SendEmail(to: "ada@example.com"), after: .milliseconds(100), idempotencyKey: "welcome-ada")
    let options = JobWorker.Options(concurrency: 4, shutdownTimeout: .seconds(20), maxJobs: 1)
    let worker = JobWorker(broker: broker, queue: "jobs", options: options)
    worker.register(SendEmail.self, options: .init(timeout: .seconds(10))) { job, context in
        print("job \(context.jobID), attempt \(context.attempt): e-mail to \(job.to)")
    }
    try await worker.run()  // returns after maxJobs; an app runs it in a ServiceGroup, where SIGTERM drains it

    // Dead letters and numbers, from the broker.
    let dead = try await broker.deadLetters(of: "emails", limit: 10)  // payload, origin, attempts, last error, time
    let replayed = try await broker.replayDeadLetters(of: "emails", limit: 10)
    let stats = try await broker.stats(for: "message.sent")  // depth, in flight, delayed, DLQ, lag per group
    print("\(dead.count) dead letters, \(replayed) replayed; \(stats)")
    processor.stop()  // graceful: running handlers finish, fetched messages go back
    try await processing.value
    await broker.close()
}
