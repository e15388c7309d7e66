import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import Glibc
import KafkaBackend
import Synchronization
import Testing

/// Bad SASL credentials. Neither test broker speaks SASL (noida-db has no authentication,
/// librdkafka's mock cluster has no SASL handlers), so this listener speaks just enough of
/// the Kafka protocol for librdkafka's SASL/PLAIN exchange — ApiVersions, SaslHandshake,
/// SaslAuthenticate — and rejects the credentials the way a Kafka broker does (error 58,
/// SASL_AUTHENTICATION_FAILED, with a message).
@Suite("Kafka SASL authentication failure")
struct KafkaSASLTests {
    @Test func wrongCredentialsAreAuthenticationFailedNamingUserAndServer() async throws {
        let server = try SASLRejectingListener()
        defer { server.close() }
        let url = "kafka://alice:wrong-secret@127.0.0.1:\(server.port)"
        let started = ContinuousClock.now
        do {
            let broker = try await Brokers.connect(
                url: url,
                options: ["connect.timeout": "10s"],
                registry: KafkaTestSupport.registry
            )
            await broker.close()
            Issue.record("connecting with rejected credentials succeeded")
        } catch let error as BrokerError {
            #expect(error.code == .authenticationFailed, "\(error)")
            #expect(error.message.contains("alice"), "the user is not named: \(error)")
            #expect(error.message.contains("127.0.0.1:\(server.port)"), "the server is not named: \(error)")
            #expect(!error.description.contains("wrong-secret"), "the password leaked: \(error)")
        }
        // Rejected credentials are final: no waiting out the connect timeout.
        #expect(ContinuousClock.now - started < .seconds(8))
        // What librdkafka sent: SASL/PLAIN with the URL's user and password.
        #expect(server.mechanisms.contains("PLAIN"), "mechanisms asked for: \(server.mechanisms)")
        #expect(
            server.credentials.contains { $0 == ("alice", "wrong-secret") },
            "credentials seen: \(server.credentials.map(\.0))"
        )
    }

    @Test func credentialsFromOptionsAndScramMechanismAreSent() async throws {
        let server = try SASLRejectingListener(mechanisms: ["SCRAM-SHA-256"])
        defer { server.close() }
        do {
            let broker = try await Brokers.connect(
                url: "kafka://127.0.0.1:\(server.port)",
                options: [
                    "sasl.username": "bob", "sasl.password": "pw", "sasl.mechanism": "scram-sha-256",
                    "connect.timeout": "10s",
                ],
                registry: KafkaTestSupport.registry
            )
            await broker.close()
            Issue.record("connecting with rejected credentials succeeded")
        } catch let error as BrokerError {
            #expect(error.code == .authenticationFailed, "\(error)")
            #expect(error.message.contains("bob"), "\(error)")
        }
        #expect(server.mechanisms.contains("SCRAM-SHA-256"), "mechanisms asked for: \(server.mechanisms)")
    }
}

/// A loopback listener answering ApiVersions, SaslHandshake and SaslAuthenticate (always
/// rejecting), one connection at a time, on a thread of its own.
final class SASLRejectingListener: @unchecked Sendable {
    // `@unchecked Sendable` is safe: `fd`/`port` are immutable; what the server saw is behind `seen`.
    let fd: Int32
    let port: Int
    let offered: [String]
    private let seen = Mutex<(mechanisms: [String], credentials: [(String, String)])>(([], []))

    var mechanisms: [String] { seen.withLock { $0.mechanisms } }
    var credentials: [(String, String)] { seen.withLock { $0.credentials } }

    init(mechanisms: [String] = ["PLAIN"]) throws {
        offered = mechanisms
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0, listen(fd, 16) == 0 else { throw ConformanceFailure("cannot listen on loopback") }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    func close() {
        shutdown(fd, Int32(SHUT_RDWR))
        _ = Glibc.close(fd)
    }

    private func acceptLoop() {
        while true {
            let client = accept(fd, nil, nil)
            guard client >= 0 else { return }
            let thread = Thread { [self] in serve(client) }
            thread.start()
        }
    }

    private func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            guard n > 0 else { return nil }
            done += n
        }
        return buffer
    }

    private func serve(_ client: Int32) {
        defer { _ = Glibc.close(client) }
        while let sizeBytes = readExactly(client, 4) {
            var sizeReader = Reader(sizeBytes)
            let size = Int(sizeReader.int32())
            guard size > 0, size < 1 << 20, let request = readExactly(client, size) else { return }
            var r = Reader(request)
            let apiKey = r.int16()
            let apiVersion = r.int16()
            let correlation = r.int32()
            _ = r.string()  // client id
            var body = Writer()
            switch apiKey {
            case 18:  // ApiVersions: only v0 here; newer requests get UNSUPPORTED_VERSION + our range
                body.int16(apiVersion == 0 ? 0 : 35)
                let apis: [(Int16, Int16, Int16)] = [(18, 0, 0), (17, 0, 1), (36, 0, 0), (3, 0, 1)]
                body.int32(Int32(apis.count))
                for (key, low, high) in apis {
                    body.int16(key)
                    body.int16(low)
                    body.int16(high)
                }
            case 17:  // SaslHandshake
                let mechanism = r.string() ?? ""
                seen.withLock { $0.mechanisms.append(mechanism) }
                body.int16(offered.contains(mechanism) ? 0 : 33)  // 33: UNSUPPORTED_SASL_MECHANISM
                body.int32(Int32(offered.count))
                for name in offered { body.string(name) }
            case 36:  // SaslAuthenticate v0: PLAIN bytes are authzid \0 user \0 password
                let auth = r.blob()
                if offered.contains("PLAIN") {
                    let parts = auth.split(separator: 0, omittingEmptySubsequences: false).map {
                        String(decoding: $0, as: UTF8.self)
                    }
                    if parts.count == 3 { seen.withLock { $0.credentials.append((parts[1], parts[2])) } }
                }
                body.int16(58)  // SASL_AUTHENTICATION_FAILED
                body.string("Authentication failed: Invalid username or password")
                body.int32(0)
            default:
                return  // nothing else is served before authentication
            }
            var frame = Writer()
            frame.int32(Int32(4 + body.bytes.count))
            frame.int32(correlation)
            let out = frame.bytes + body.bytes
            let sent = out.withUnsafeBytes { send(client, $0.baseAddress!, out.count, Int32(MSG_NOSIGNAL)) }
            guard sent == out.count else { return }
        }
    }

    struct Reader {
        let data: [UInt8]
        var at = 0
        init(_ data: [UInt8]) { self.data = data }
        mutating func int16() -> Int16 {
            guard at + 2 <= data.count else { return 0 }
            defer { at += 2 }
            return Int16(bitPattern: UInt16(data[at]) << 8 | UInt16(data[at + 1]))
        }
        mutating func int32() -> Int32 {
            guard at + 4 <= data.count else { return 0 }
            defer { at += 4 }
            return Int32(bitPattern: data[at..<at + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        }
        mutating func string() -> String? {
            let length = Int(int16())
            guard length >= 0, at + length <= data.count else { return nil }
            defer { at += length }
            return String(decoding: data[at..<at + length], as: UTF8.self)
        }
        mutating func blob() -> [UInt8] {
            let length = Int(int32())
            guard length >= 0, at + length <= data.count else { return [] }
            defer { at += length }
            return Array(data[at..<at + length])
        }
    }

    struct Writer {
        var bytes: [UInt8] = []
        mutating func int16(_ value: Int16) {
            bytes += [UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
        }
        mutating func int32(_ value: Int32) {
            for shift in [24, 16, 8, 0] { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) }
        }
        mutating func string(_ value: String) {
            let utf8 = Array(value.utf8)
            int16(Int16(utf8.count))
            bytes += utf8
        }
    }
}

/// SASL that succeeds, against a broker: noida-db (which has no authentication) in a network
/// namespace of its own, reachable only through `scripts/kafka-sasl-front.py`, which answers
/// the SASL part of the Kafka protocol (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 per RFC 5802)
/// for one user and then splices the connection through (`scripts/brokers.sh` sets it up).
/// Every connection librdkafka opens — bootstrap, broker, group coordinator — authenticates.
@Suite("Kafka SASL against a broker", .enabled(if: TestEnvironment.shouldRun(.kafkaSASL)))
struct KafkaSASLBrokerTests {
    func url() throws -> String { try TestEnvironment.requireURL(.kafkaSASL) }

    func roundTrip(url: String, _ options: [String: String] = [:]) async throws {
        let broker = try await KafkaTestSupport.connect(options.merging(["connect.timeout": "10s"]) { $1 }, url: url)
        try await KafkaTestSupport.queueAndStreamRoundTrip(
            broker,
            label: "sasl",
            message: Message(key: "k", text: "over sasl", headers: ["h": "v"])
        )
    }

    @Test func plainWithTheURLsCredentialsCarriesQueueAndStreamMessages() async throws {
        try await roundTrip(url: try url())
    }

    @Test(arguments: ["scram-sha-256", "scram-sha-512"])
    func scramCarriesQueueAndStreamMessages(mechanism: String) async throws {
        try await roundTrip(url: try url(), ["sasl.mechanism": mechanism])
    }

    /// The test URL with its user and password replaced (nil: none).
    func url(user: String?, password: String?) throws -> String {
        var components = try #require(URLComponents(string: try url()))
        components.user = user
        components.password = password
        return try #require(components.string)
    }

    @Test func credentialsFromOptionsInsteadOfTheURL() async throws {
        let given = try #require(URLComponents(string: try url()))
        let user = try #require(given.user)
        let password = try #require(given.password)
        try await roundTrip(
            url: try url(user: nil, password: nil),
            [
                "security.protocol": "sasl_plaintext", "sasl.username": user, "sasl.password": password,
                "sasl.mechanism": "scram-sha-256",
            ]
        )
    }

    @Test func aWrongPasswordIsAuthenticationFailedAtOnce() async throws {
        let wrong = try url(user: URLComponents(string: try url())?.user, password: "not-the-password")
        let started = ContinuousClock.now
        do {
            let broker = try await KafkaTestSupport.connect(
                ["connect.timeout": "10s", "sasl.mechanism": "scram-sha-512"],
                url: wrong
            )
            await broker.close()
            Issue.record("connecting with a wrong password succeeded")
        } catch let error as BrokerError {
            #expect(error.code == .authenticationFailed, "\(error)")
            #expect(error.message.contains("SCRAM-SHA-512"), "\(error)")
            #expect(!error.description.contains("not-the-password"), "the password leaked: \(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(8))
    }

    @Test func noCredentialsAgainstASASLBrokerIsAConnectionFailure() async throws {
        let (host, port) = try #require(TestEnvironment.hostAndPort(try url()))
        do {
            let broker = try await KafkaTestSupport.connect(
                ["connect.timeout": "4s"],
                url: try url(user: nil, password: nil)
            )
            await broker.close()
            Issue.record("connecting without credentials succeeded")
        } catch let error as BrokerError {
            #expect(error.code == .connectionFailed, "\(error)")
            #expect(error.message.contains("\(host):\(port)"), "\(error)")
        }
    }
}
