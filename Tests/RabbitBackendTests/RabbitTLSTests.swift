import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RabbitBackend
import Testing

/// `amqps://` against the test server's TLS listener, which demands a client certificate
/// signed by the test CA and presents a certificate for `localhost` only
/// (`scripts/brokers.sh` makes both).
@Suite("amqps (TLS)", .enabled(if: TestEnvironment.shouldRun(.amqps)))
struct RabbitTLSTests {
    func files() throws -> TestEnvironment.TLSFiles { try TestEnvironment.tlsFiles() }

    func url() throws -> String { try TestEnvironment.requireURL(.amqps) }

    func connect(url: String? = nil, _ options: [String: String]) async throws -> any Broker {
        try await Brokers.connect(
            url: try url ?? self.url(),
            options: options.merging(["connect.timeout": "5s"]) { $1 },
            registry: RabbitTestSupport.registry
        )
    }

    /// Expects connecting to fail with `code`; returns the error.
    func expectConnectFails(
        url: String? = nil,
        _ options: [String: String],
        _ code: BrokerError.Code
    ) async throws -> BrokerError? {
        do {
            let broker = try await connect(url: url, options)
            await broker.close()
            Issue.record("connecting with \(options) succeeded")
            return nil
        } catch let error as BrokerError {
            #expect(error.code == code, "\(error)")
            return error
        }
    }

    @Test func mutualTLSCarriesMessagesAndTheServerSeesTheClientCertificate() async throws {
        let f = try files()
        try await RabbitServerGate.shared.withShared {
            let broker = try await connect(["tls.ca": f.ca, "tls.cert": f.cert, "tls.key": f.key])
            let queue = "bk-tls-\(UUID().uuidString.prefix(8))"
            try await broker.createQueue(queue)
            let sent = Message(
                key: "k-1",
                payload: Data((0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }),
                headers: ["h": "v"]
            )
            try await broker.publish(sent, to: queue)
            let consumer = try await broker.consumeQueue(queue)
            let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
            try await delivery.ack()
            #expect(delivery.message.payload == sent.payload)
            #expect(delivery.message.key == "k-1")
            #expect(delivery.message.headers["h"] == "v")
            // The server's view: TLS connections authenticated by the client certificate (other
            // tests connect in plain AMQP only).
            let listing = try await RabbitTestSupport.rabbitmqctl(["list_connections", "ssl", "peer_cert_subject"])
            let tls = listing.split(separator: "\n").filter { $0.hasPrefix("true") }
            #expect(!tls.isEmpty, "no TLS connection in:\n\(listing)")
            for line in tls {
                #expect(line.contains("CN=brokerkit-test-client"), "client certificate not seen: \(line)")
            }
            await consumer.close()
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    @Test func serverCertificateFromAnotherCAIsRejected() async throws {
        let f = try files()
        let error = try await expectConnectFails(
            ["tls.ca": f.otherCA, "tls.cert": f.cert, "tls.key": f.key],
            .connectionFailed
        )
        if let error {
            #expect(error.message.contains("localhost"), "\(error)")
            #expect(
                error.message.lowercased().contains("tls") || error.message.lowercased().contains("ssl"),
                "\(error)"
            )
        }
    }

    @Test func hostNameNotInTheCertificateIsRejectedUnlessVerificationIsOff() async throws {
        let f = try files()
        // The certificate names localhost only; 127.0.0.1 is the same server under another name.
        let byAddress = try url().replacingOccurrences(of: "@localhost:", with: "@127.0.0.1:")
        let error = try await expectConnectFails(
            url: byAddress,
            ["tls.ca": f.ca, "tls.cert": f.cert, "tls.key": f.key],
            .connectionFailed
        )
        if let error { #expect(error.message.contains("127.0.0.1"), "\(error)") }
        // tls.verify=false: still encrypted, but neither the chain nor the name is checked.
        try await RabbitServerGate.shared.withShared {
            let broker = try await connect(
                url: byAddress,
                ["tls.verify": "false", "tls.cert": f.cert, "tls.key": f.key]
            )
            let queue = "bk-tls-noverify-\(UUID().uuidString.prefix(8))"
            try await broker.createQueue(queue)
            try await broker.publish(Message(text: "unverified"), to: queue)
            #expect(try await broker.stats(for: queue).depth == 1)
            try await broker.deleteDestination(queue)
            await broker.close()
        }
    }

    @Test func serverDemandingAClientCertificateRefusesOneWithout() async throws {
        let f = try files()
        let error = try await expectConnectFails(["tls.ca": f.ca], .connectionFailed)
        if let error { #expect(error.message.contains("localhost"), "\(error)") }
    }

    @Test func unreadableFilesNameTheOption() async throws {
        let f = try files()
        let missingCA = try await expectConnectFails(["tls.ca": f.dir + "/no-such-ca.pem"], .invalidConfiguration)
        if let missingCA {
            #expect(
                missingCA.message.contains("tls.ca") && missingCA.message.contains("no-such-ca.pem"),
                "\(missingCA)"
            )
        }
        let wrongKey = try await expectConnectFails(
            ["tls.ca": f.ca, "tls.cert": f.cert, "tls.key": f.otherCA],
            .invalidConfiguration
        )
        if let wrongKey { #expect(wrongKey.message.contains("tls.key"), "\(wrongKey)") }
    }

    @Test func tlsOptionsOnAPlainURLAreAnError() async throws {
        let f = try files()
        do {
            let broker = try await Brokers.connect(
                url: try RabbitTestSupport.url(),
                options: ["tls.ca": f.ca],
                registry: RabbitTestSupport.registry
            )
            await broker.close()
            Issue.record("tls.ca on an amqp:// URL was accepted")
        } catch let error as BrokerError {
            #expect(error.code == .invalidConfiguration, "\(error)")
            #expect(error.message.contains("tls.ca") && error.message.contains("amqps://"), "\(error)")
        }
    }
}
