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
}
