import Foundation
import Logging
import Testing

// The README's tour is the code between the two markers below, compiled with the imports it
// shows and run on memory:// by the test at the end; the test also checks that README.md
// shows exactly this code.

// tour:begin
import BrokerAPI
import KafkaBackend
import RabbitBackend
import RedisStreamsBackend

struct SendEmail: Job {
    static let name = "send-email"
    var to: String
}

func tour(url: String = "memory://") async throws {
    KafkaBackend.register(); RabbitBackend.register(); RedisStreamsBackend.register()
    let broker = try await Brokers.connect(url: url)  // or Brokers.connectFromEnvironment() (BROKER_URL)

    // Queue: publish, consume through a processor; a handler that returns acks, one that throws
    // nacks: retried with backoff, dead-lettered after maxAttempts or a NonRetryable error.
    try await broker.createQueue("emails")
    try await broker.publish(Message(key: "user-42", text: "welcome", headers: ["lang": "en"]), to: "emails")
    let consumer = try await broker.consumeQueue("emails", options: .init(
        prefetch: 8,
        retryPolicy: RetryPolicy(maxAttempts: 5, backoff: .exponential(initial: .milliseconds(200), max: .seconds(30), jitter: 0.2))))
    let processor = DeliveryProcessor(consumer: consumer, options: .init(concurrency: 4)) { delivery in
        print("sending \(delivery.message.text ?? "") to \(delivery.message.key ?? "")")
    }
    let processing = Task { try await processor.run() }  // runs until stop()

    // Stream: every group sees every event; order per key; replay from a position or a time.
    try await broker.createStream("message.sent", options: .init(partitions: 4))
    try await broker.publish(Message(key: "chat-1", text: "hi"), to: "message.sent")
    let receipts = try await broker.consumeStream("message.sent", group: "read-receipts", options: .init(start: .earliest))
    if let event = try await receipts.next(timeout: .seconds(5)) { try await event.ack() }
    await receipts.close()

    // Jobs: typed, delayed, idempotent; JobWorker is a swift-service-lifecycle Service.
    let jobs = JobQueue(broker: broker, queue: "jobs")
    try await jobs.dispatch(SendEmail(to: "ada@example.com"), after: .milliseconds(100), idempotencyKey: "welcome-ada")
    let worker = JobWorker(broker: broker, queue: "jobs", options: .init(concurrency: 4, shutdownTimeout: .seconds(20), maxJobs: 1))
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
// tour:end

@Suite("README tour")
struct ReadmeTourTests {
    @Test func theTourRunsOnMemory() async throws {
        try await tour(url: "memory://tour-\(UUID().uuidString.prefix(6))")
    }

    @Test func theReadmeShowsTheTourAsCompiled() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let source = try String(contentsOf: URL(fileURLWithPath: #filePath), encoding: .utf8)
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        let begin = try #require(source.range(of: "// tour:begin\n"))
        let end = try #require(source.range(of: "// tour:end"))
        let tour = String(source[begin.upperBound..<end.lowerBound])
        #expect(readme.contains("```swift\n" + tour + "```"), "README.md's tour differs from the code in ReadmeTourTests.swift")
    }
}
