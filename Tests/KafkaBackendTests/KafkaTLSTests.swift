import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import KafkaBackend
import Testing

/// `kafka+ssl://` against a Kafka-protocol broker reachable only through TLS: noida-db in a
/// network namespace of its own behind socat, which presents a certificate for localhost and
/// 127.0.0.1 signed by the test CA and demands a client certificate signed by it too
/// (`scripts/brokers.sh` sets it up). A plaintext path to that broker does not exist, so a
/// message that gets through went over TLS.
@Suite("Kafka over TLS", .enabled(if: TestEnvironment.shouldRun(.kafkaTLS)))
struct KafkaTLSTests {
    func files() throws -> TestEnvironment.TLSFiles { try TestEnvironment.tlsFiles() }

    func url() throws -> String { try TestEnvironment.requireURL(.kafkaTLS) }

    func connect(url: String? = nil, _ options: [String: String]) async throws -> any Broker {
        try await KafkaTestSupport.connect(
            options.merging(["connect.timeout": "8s"]) { $1 },
            url: try url ?? self.url()
        )
    }

    /// Expects connecting (and a first admin call) to fail with `code`; returns the error.
    func expectFailure(
        url: String? = nil,
        _ options: [String: String],
        _ code: BrokerError.Code
    ) async throws -> BrokerError? {
        do {
            let broker = try await connect(url: url, options)
            defer { Task { await broker.close() } }
            _ = try await broker.stats(for: "no-such-topic-\(UUID().uuidString.prefix(6))")
            Issue.record("\(options) worked against the TLS broker")
            return nil
        } catch let error as BrokerError {
            #expect(error.code == code, "\(error)")
            return error
        }
    }

    @Test func mutualTLSCarriesQueueAndStreamMessages() async throws {
        let f = try files()
        let broker = try await connect([
            "ssl.ca.location": f.ca, "ssl.certificate.location": f.cert, "ssl.key.location": f.key,
        ])
        let sent = Message(
            key: "k-1",
            payload: Data((0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }),
            headers: ["h": "v"]
        )
        try await KafkaTestSupport.queueAndStreamRoundTrip(broker, label: "tls", message: sent)
    }

    @Test func serverCertificateFromAnotherCAIsAConnectionFailureNamingTLS() async throws {
        let f = try files()
        let started = ContinuousClock.now
        let error = try await expectFailure(
            ["ssl.ca.location": f.otherCA, "ssl.certificate.location": f.cert, "ssl.key.location": f.key],
            .connectionFailed
        )
        if let error {
            #expect(error.message.contains("127.0.0.1"), "the server is not named: \(error)")
            let text = error.message.lowercased()
            #expect(
                text.contains("ssl") || text.contains("tls") || text.contains("certificate"),
                "TLS is not named: \(error)"
            )
        }
        // An untrusted certificate does not heal by retrying: no waiting out the connect timeout.
        #expect(ContinuousClock.now - started < .seconds(6))
    }

    @Test func withoutAClientCertificateTheServerRefusesTheConnection() async throws {
        let f = try files()
        let error = try await expectFailure(["ssl.ca.location": f.ca], .connectionFailed)
        if let error {
            #expect(error.message.contains("127.0.0.1"), "\(error)")
            #expect(error.message.contains("certificate required"), "the server's reason is lost: \(error)")
        }
    }

    @Test func plaintextAgainstTheTLSPortFailsClearly() async throws {
        let plain = try url().replacingOccurrences(of: "kafka+ssl://", with: "kafka://")
        let error = try await expectFailure(url: plain, [:], .connectionFailed)
        if let error {
            #expect(error.message.contains("127.0.0.1"), "\(error)")
            #expect(error.message.contains("security.protocol"), "no hint at TLS: \(error)")
        }
    }

    @Test func unreadableCertificateFilesNameTheOption() async throws {
        let f = try files()
        for (name, options) in [
            ("ssl.ca.location", ["ssl.ca.location": f.dir + "/no-such-ca.pem"]),
            (
                "ssl.key.location",
                [
                    "ssl.ca.location": f.ca, "ssl.certificate.location": f.cert,
                    "ssl.key.location": f.dir + "/no-such.key",
                ]
            ),
        ] {
            do {
                let broker = try await connect(options)
                await broker.close()
                Issue.record("\(options) was accepted")
            } catch let error as BrokerError {
                #expect(error.code == .invalidConfiguration, "\(error)")
                #expect(error.message.contains(name), "\(name) is not named: \(error)")
            }
        }
    }
}
