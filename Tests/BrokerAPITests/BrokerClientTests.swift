@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Logging
import Synchronization
import Testing

/// The front's own policy, against a driver that records what it was asked.
@Suite("BrokerClient")
struct BrokerClientTests {
    /// A consumer that only records whether it was closed.
    final class TrackedConsumer: MessageConsumer {
        let name: String
        let events: Events
        init(_ name: String, events: Events) {
            self.name = name
            self.events = events
        }
        func next() async throws -> Delivery? { nil }
        func close() async {
            // A consumer named slow* takes a while, as a stream member storing its position does.
            if name.hasPrefix("slow") { try? await Task.sleep(for: .milliseconds(300)) }
            events.add("close \(name)")
        }
    }

    final class Events: Sendable {
        let list = Mutex<[String]>([])
        func add(_ event: String) { list.withLock { $0.append(event) } }
        var all: [String] { list.withLock { $0 } }
    }

    /// Opening a consumer waits for `gate` when one is set (to open one while the client closes).
    final class RecordingDriver: BrokerDriver {
        let events: Events
        let kinds: [String: DestinationKind]
        let gate = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let holdOpen: Bool
        let configuration: BrokerConfiguration
        init(events: Events, kinds: [String: DestinationKind] = [:], holdOpen: Bool = false) throws {
            self.events = events
            self.kinds = kinds
            self.holdOpen = holdOpen
            configuration = try Brokers.configuration(url: "memory://recording")
        }

        var backendName: String { "recording" }
        var capabilities: BrokerCapabilities { [.queues, .streams, .delayedDelivery] }

        func kind(of name: String, for use: DestinationUse) async throws -> DestinationKind? {
            kinds[name] ?? use.createdKind
        }
        func publish(
            checked messages: [Message],
            to destination: String,
            kind: DestinationKind?,
            options: PublishOptions
        ) async throws -> [PublishReceipt] {
            events.add("publish \(destination)")
            return messages.map { PublishReceipt(messageID: $0.id, destination: destination, position: nil) }
        }
        func openQueueConsumer(_ queue: String, options: QueueConsumerOptions) async throws -> any MessageConsumer {
            if holdOpen { await withCheckedContinuation { continuation in gate.withLock { $0 = continuation } } }
            events.add("open \(queue)")
            return TrackedConsumer(queue, events: events)
        }
        func openStreamConsumer(
            _ stream: String,
            group: String,
            options: StreamConsumerOptions
        ) async throws -> any MessageConsumer {
            events.add("open \(stream)/\(group)")
            return TrackedConsumer("\(stream)/\(group)", events: events)
        }
        func createDestination(_ name: String, kind: DestinationKind, options: DestinationOptions) async throws {}
        func deleteDestination(_ name: String) async throws {}
        func listDestinations() async throws -> [DestinationInfo] { [] }
        func stats(for destination: String) async throws -> DestinationStats {
            throw BrokerError(.unsupported, "no stats", backend: backendName)
        }
        func readDeadLetters(of destination: String, limit: Int) async throws -> [DeadLetterRecord] { [] }
        func moveDeadLetters(
            of destination: String,
            limit: Int,
            replay: @Sendable (DeadLetterRecord) -> DeadLetterReplay
        ) async throws -> Int { 0 }
        func close() async { events.add("driver close") }
    }

    /// `close()` closes every consumer still open, then the driver, once; a consumer the app
    /// closed (or dropped) is not closed again.
    @Test func closeClosesOpenConsumersBeforeTheDriver() async throws {
        let events = Events()
        let client = BrokerClient(driver: try RecordingDriver(events: events), logger: Logger(label: "test"))
        let kept = try await client.consumeQueue("a")
        let closedByApp = try await client.consumeQueue("b")
        _ = try await client.consumeStream("s", group: "g", options: .init())  // dropped at once
        await closedByApp.close()
        await client.close()
        await client.close()
        let all = events.all
        #expect(all.filter { $0 == "driver close" }.count == 1)
        #expect(all.filter { $0 == "close b" }.count == 1, "\(all)")
        #expect(all.filter { $0 == "close a" }.count == 1, "\(all)")
        let driverClose = try #require(all.firstIndex(of: "driver close"))
        #expect(all.firstIndex(of: "close a").map { $0 < driverClose } == true, "\(all)")
        _ = kept
    }

    /// A consumer the app dropped (or closed) is still closing when the client closes: the
    /// client waits for it before closing the driver, which that close may still need.
    @Test func closeWaitsForAConsumerStillClosing() async throws {
        let events = Events()
        let client = BrokerClient(driver: try RecordingDriver(events: events), logger: Logger(label: "test"))
        _ = try await client.consumeQueue("slow-dropped")
        let closedByApp = try await client.consumeQueue("slow-closed")
        let appClose = Task { await closedByApp.close() }
        try await Task.sleep(for: .milliseconds(20))
        await client.close()
        await appClose.value
        let all = events.all
        let driverClose = try #require(all.firstIndex(of: "driver close"))
        for name in ["slow-dropped", "slow-closed"] {
            #expect(all.firstIndex(of: "close \(name)").map { $0 < driverClose } == true, "\(all)")
            #expect(all.filter { $0 == "close \(name)" }.count == 1, "\(all)")
        }
    }

    /// A consumer whose opening finished while the client closed is closed, and the call fails
    /// with `closed`: nothing keeps fetching behind a closed client.
    @Test func aConsumerOpenedDuringCloseIsClosed() async throws {
        let events = Events()
        let driver = try RecordingDriver(events: events, holdOpen: true)
        let client = BrokerClient(driver: driver, logger: Logger(label: "test"))
        let opening = Task { try await client.consumeQueue("late") }
        while driver.gate.withLock({ $0 == nil }) { try await Task.sleep(for: .milliseconds(1)) }
        await client.close()
        driver.gate.withLock { $0?.resume() }
        await #expect(throws: BrokerError.self) { _ = try await opening.value }
        #expect(events.all.contains("close late"), "\(events.all)")
    }

    /// The kind checks and their words live in the client, whatever the driver.
    @Test func kindChecksAreTheClients() async throws {
        let events = Events()
        let client = BrokerClient(
            driver: try RecordingDriver(events: events, kinds: ["s": .stream, "q": .queue]),
            logger: Logger(label: "test")
        )
        let error = await #expect(throws: BrokerError.self) { _ = try await client.consumeQueue("s") }
        #expect(error?.code == .wrongDestinationKind && error?.message == "'s' is a stream, not a queue")
        let member = await #expect(throws: BrokerError.self) {
            _ = try await client.consumeStream("q", group: "g", options: .init())
        }
        #expect(member?.code == .wrongDestinationKind)
        let delayed = await #expect(throws: BrokerError.self) {
            _ = try await client.publish(
                Message(text: "x"),
                to: "s",
                options: PublishOptions(deliverAt: Date().addingTimeInterval(60))
            )
        }
        #expect(delayed?.code == .unsupported)
        #expect(!events.all.contains { $0.hasPrefix("publish") || $0.hasPrefix("open") }, "\(events.all)")
        _ = try await client.publish(Message(text: "now"), to: "s")
        #expect(events.all == ["publish s"])
        await client.close()
    }
}
