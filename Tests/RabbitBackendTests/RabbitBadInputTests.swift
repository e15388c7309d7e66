import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RabbitBackend
import Testing

/// Wrong credentials, a missing vhost, a queue redeclared with other arguments, oversized
/// messages, a server that accepts TCP but never speaks AMQP: each a clear error, nothing
/// else lost.
@Suite("amqp bad input", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitBadInputTests {
    func shared(_ body: @escaping @Sendable () async throws -> Void) async throws {
        try await RabbitServerGate.shared.withShared { try await body() }
    }

    @Test func wrongCredentialsAreAuthenticationFailed() async throws {
        try await shared {
            let url = try RabbitTestSupport.url(password: "not-the-password")
            do {
                let broker = try await Brokers.connect(url: url, registry: RabbitTestSupport.registry)
                await broker.close()
                Issue.record("connecting with a wrong password succeeded")
            } catch let error as BrokerError {
                #expect(error.code == .authenticationFailed, "\(error)")
                #expect(error.description.contains("guest"), "\(error)")
                #expect(!error.description.contains("not-the-password"), "the password leaked: \(error)")
            }
        }
    }

    @Test func missingVirtualHostIsNamed() async throws {
        try await shared {
            let url = try RabbitTestSupport.url(vhost: "no-such-vhost")
            do {
                let broker = try await Brokers.connect(url: url, registry: RabbitTestSupport.registry)
                await broker.close()
                Issue.record("connecting to a missing vhost succeeded")
            } catch let error as BrokerError {
                #expect(error.code == .invalidConfiguration, "\(error)")
                #expect(error.message.contains("no-such-vhost"), "\(error)")
            }
        }
    }

    @Test func silentServerFailsWithinConnectTimeout() async throws {
        // A TCP listener that never answers the AMQP handshake.
        let listener = try SilentListener()
        defer { listener.close() }
        let started = ContinuousClock.now
        do {
            let broker = try await Brokers.connect(
                url: "amqp://guest:guest@127.0.0.1:\(listener.port)/",
                options: ["connect.timeout": "1s"],
                registry: RabbitTestSupport.registry
            )
            await broker.close()
            Issue.record("connecting to a silent server succeeded")
        } catch let error as BrokerError {
            #expect(error.code == .connectionFailed, "\(error)")
            #expect(error.message.contains("127.0.0.1:\(listener.port)"), "\(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(4))
    }

    @Test func redeclaringWithOtherArgumentsNamesQueueAndArgument() async throws {
        try await shared {
            let queue = "bk-redeclare-\(UUID().uuidString.prefix(8))"
            let classic = try await RabbitTestSupport.connect(["queue.type": "classic"])
            try await classic.createQueue(queue)
            try await classic.publish(Message(text: "kept"), to: queue)
            let quorum = try await RabbitTestSupport.connect()
            do {
                try await quorum.createQueue(queue)
                Issue.record("redeclaring a classic queue as quorum succeeded")
            } catch let error as BrokerError {
                #expect(error.code == .invalidConfiguration, "\(error)")
                #expect(error.message.contains(queue) && error.message.contains("x-queue-type"), "\(error)")
            }
            do {
                try await quorum.createStream(queue)
                Issue.record("creating a stream over a queue succeeded")
            } catch let error as BrokerError {
                #expect(error.code == .wrongDestinationKind, "\(error)")
            }
            // The connection recovered from the channel errors, and nothing was lost.
            try await quorum.publish(Message(text: "after"), to: queue)
            let consumer = try await classic.consumeQueue(queue)
            let got = try await [consumer.next(timeout: .seconds(5)), consumer.next(timeout: .seconds(5))]
            for delivery in got { try await delivery?.ack() }
            await consumer.close()
            #expect(got.compactMap { $0?.message.text } == ["kept", "after"])
            try await classic.deleteDestination(queue)
            await classic.close()
            await quorum.close()
        }
    }

    @Test func messagesAboveTheBrokersMaximumAreRejectedOthersGoThrough() async throws {
        try await shared {
            // RabbitMQ 3.10 refuses messages over 128 MiB (max_message_size).
            let broker = try await RabbitTestSupport.connect(["max.message.bytes": "200000000", "frame.max": "4096"])
            let queue = "bk-huge-\(UUID().uuidString.prefix(8))"
            try await broker.createQueue(queue)
            let huge = Message(payload: Data(count: 134_217_728 + 1024))
            do {
                try await broker.publish(huge, to: queue)
                Issue.record("a message over RabbitMQ's max size was confirmed")
            } catch let error as BrokerError {
                #expect(error.code == .messageTooLarge, "\(error)")
            }
            // Small frames (frame.max 4096) still carry a 1 MiB message, and the connection is fine.
            let big = Message(payload: Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0) }))
            try await broker.publish(big, to: queue)
            let consumer = try await broker.consumeQueue(queue)
            let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
            try await delivery.ack()
            #expect(delivery.message.payload == big.payload)
            #expect(try await consumer.next(timeout: .milliseconds(300)) == nil)
            await consumer.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    @Test func invalidOptionsNameTheKey() throws {
        #expect(throws: BrokerError.self) {
            _ = try Brokers.configuration(
                url: "amqp://localhost?queue.type=mirrored",
                registry: RabbitTestSupport.registry
            )
        }
        do {
            _ = try Brokers.configuration(
                url: "amqp://localhost?tls.ca=/tmp/ca.pem",
                registry: RabbitTestSupport.registry
            )
        } catch {
            Issue.record("tls.ca is a known option: \(error)")
        }
        let configuration = try Brokers.configuration(
            url: "amqps://u:secret@localhost/vh?tls.verify=false",
            registry: RabbitTestSupport.registry
        )
        #expect(!configuration.description.contains("secret"))
    }
}

/// A loopback TCP listener that accepts connections and never writes a byte.
final class SilentListener: @unchecked Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0, listen(fd, 8) == 0 else { throw ConformanceFailure("cannot listen on loopback") }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(fd) }
}
