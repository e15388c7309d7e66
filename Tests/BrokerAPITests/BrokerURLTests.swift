import BrokerAPI
import Testing

@Suite("BrokerURL")
struct BrokerURLTests {
    @Test func parsesMultiHostKafka() throws {
        let url = try BrokerURL("kafka://host1:9092,host2:9093")
        #expect(url.scheme == "kafka")
        #expect(url.hosts.map(\.description) == ["host1:9092", "host2:9093"])
    }

    @Test func parsesAMQPWithVhostAndCredentials() throws {
        let url = try BrokerURL("amqp://app:s%40cret@localhost:5672/orders")
        #expect(url.user == "app")
        #expect(url.password == "s@cret")
        #expect(url.path == "orders")
        #expect(url.description == "amqp://app:***@localhost:5672/orders")
        #expect(!url.description.contains("cret"))
    }

    @Test func parsesRedisPasswordOnlyAndQuery() throws {
        let url = try BrokerURL("redis://:pw@127.0.0.1:6379/2?connect.timeout=2s&sasl.password=hidden")
        #expect(url.user == nil && url.password == "pw" && url.path == "2")
        #expect(url.query.map(\.key) == ["connect.timeout", "sasl.password"])
        #expect(url.redacted == "redis://:***@127.0.0.1:6379/2?connect.timeout=2s&sasl.password=***")
    }

    @Test func memoryURLNeedsNoHost() throws {
        let url = try BrokerURL("memory://")
        #expect(url.hosts.isEmpty)
    }

    @Test(arguments: [
        ("localhost:9092", "scheme://"),
        ("kafka://h:99999", "port '99999'"),
        ("kafka://h:abc", "port 'abc'"),
        ("kafka://a,,b", "empty host"),
        ("kafka://h?x", "option 'x' has no value"),
        ("1kafka://h", "not a valid URL scheme"),
        ("kafka://bad host", "not allowed in a host name"),
    ])
    func rejectsBadURLs(input: String, mentions: String) {
        do {
            _ = try BrokerURL(input)
            Issue.record("'\(input)' parsed")
        } catch let error as BrokerError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains(mentions), "\(error)")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func badURLErrorsNeverEchoThePassword() {
        do {
            _ = try BrokerURL("amqp://user:topsecret@host:notaport/vhost")
            Issue.record("parsed")
        } catch {
            #expect(!"\(error)".contains("topsecret"))
            #expect("\(error)".contains("user:***@"))
        }
    }

    /// Issue 22, item 4: passwords with an unencoded `/`, `?` or `@` were split into host,
    /// path or query and printed whole in errors and descriptions.
    @Test(
        arguments: [
            ("amqp://app:ab/cd@127.0.0.1:1/", "app", "ab/cd", "127.0.0.1:1", ""),
            ("redis://:se?cret@127.0.0.1:6390/0", nil, "se?cret", "127.0.0.1:6390", "0"),
            ("amqp://app:p@ss@localhost:5672/v", "app", "p@ss", "localhost:5672", "v"),
            ("redis://:a/b?c@localhost:6379", nil, "a/b?c", "localhost:6379", ""),
        ] as [(String, String?, String, String, String)]
    )
    func passwordsWithDelimitersStayPasswords(
        input: String,
        user: String?,
        password: String,
        host: String,
        path: String
    ) throws {
        let url = try BrokerURL(input)
        #expect(url.user == user)
        #expect(url.password == password)
        #expect(url.hosts.map(\.description) == [host])
        #expect(url.path == path)
        #expect(!url.description.contains(password), "\(url)")
        #expect(!BrokerURL.redact(input).contains(password), "\(BrokerURL.redact(input))")
    }

    @Test func atSignsInTheQueryAreNotUserInfo() throws {
        let url = try BrokerURL("kafka://h:9092?sasl.username=alice@corp")
        #expect(url.user == nil && url.password == nil)
        #expect(url.hosts.map(\.description) == ["h:9092"])
        #expect(url.query.first?.value == "alice@corp")
    }

    /// A URL that does not parse is redacted conservatively: no part of what could be the
    /// password shows, even when the parser read it as a port, host or option.
    @Test(arguments: [
        ("amqp://app:ab/cd@127.0.0.1:notaport/", ["ab", "cd"]),
        ("redis://:se?cret@bad host/0", ["se", "cret"]),
        ("amqp://app:topsecret@h:99999/", ["topsecret"]),
        ("kafka://u:x/y?z@h,,k", ["x/y", "z@"]),
        ("kafka://h:bad?sasl.password=hunter2&rdkafka.ssl.key.pem=PEMDATA", ["hunter2", "PEMDATA"]),
    ])
    func unparsableURLsNeverShowThePassword(input: String, secretParts: [String]) {
        do {
            _ = try BrokerURL(input)
            Issue.record("'\(input)' parsed")
        } catch {
            let text = "\(error)"
            for part in secretParts {
                #expect(!text.contains(part), "\(text) shows '\(part)'")
            }
            #expect(text.contains("***"), "\(text)")
        }
    }

    /// Found by the `url` fuzz target (Fuzz/regressions/url): control characters before
    /// `://` and an invalid byte in a would-be password made the error scrubber trap.
    @Test func aURLWithControlCharactersIsAnErrorNotACrash() {
        let url = "s" + String(repeating: "\u{0}", count: 15) + "://:2n\u{FFFD}y?ytreeat@0s"
        #expect(throws: BrokerError.self) { try BrokerURL(url) }
    }
}
