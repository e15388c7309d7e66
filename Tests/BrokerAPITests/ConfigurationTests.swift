import BrokerAPI
import Configuration
import Foundation
import Testing

@Suite("Configuration")
struct ConfigurationTests {
    @Test func unknownSchemeListsRegisteredOnes() {
        do {
            _ = try Brokers.configuration(url: "nats://localhost:4222")
            Issue.record("accepted")
        } catch let error as BrokerError {
            #expect(error.code == .unknownScheme)
            #expect(error.message.contains("'nats'") && error.message.contains("memory"))
        } catch { Issue.record("\(error)") }
    }

    @Test func optionsFromURLAndCodeAreValidated() throws {
        let config = try Brokers.configuration(url: "memory://x?partitions=8", options: ["connect.timeout": "250ms"])
        #expect(config.int("partitions") == 8)
        #expect(config.connectTimeout == .milliseconds(250))
        #expect(config.autoCreate)  // default
    }

    @Test(arguments: [
        (["partitions": "0"], "partitions"),
        (["partitions": "many"], "partitions"),
        (["auto.create": "maybe"], "auto.create"),
        (["nope": "1"], "nope"),
    ])
    func invalidOptionsNameTheKey(options: [String: String], key: String) {
        do {
            _ = try Brokers.configuration(url: "memory://", options: options)
            Issue.record("accepted \(options)")
        } catch let error as BrokerError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("'\(key)'"), "\(error)")
        } catch { Issue.record("\(error)") }
    }

    @Test func secretsAreRedactedInDescriptions() throws {
        let config = try Brokers.configuration(url: "memory://vault?prefix=t1")
        #expect(config.description.contains("prefix=t1"))
        #expect(BrokerOption.looksSecret("sasl.password"))
    }

    @Test func readsURLAndBackendOptionsFromEnvironmentNames() async throws {
        let config = try await Brokers.configurationFromEnvironment(
            [
                "BROKER_URL": "memory://envstore", "MEMORY_PARTITIONS": "6", "MEMORY_CONNECT_TIMEOUT": "3s",
                "PATH": "/bin",
            ])
        #expect(config.url.hosts.first?.name == "envstore")
        #expect(config.int("partitions") == 6)
        #expect(config.connectTimeout == .seconds(3))
    }

    @Test func defaultsToMemory() async throws {
        let config = try await Brokers.configurationFromEnvironment([:])
        #expect(config.scheme == "memory")
    }

    @Test func unknownBrokerVariableIsAnError() async {
        do {
            _ = try await Brokers.configurationFromEnvironment(["BROKER_URLL": "memory://"])
            Issue.record("accepted a typo")
        } catch let error as BrokerError {
            #expect(error.message.contains("BROKER_URLL"))
        } catch { Issue.record("\(error)") }
    }

    @Test func configFileIsReadAndCheckedStrictly() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bk-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = dir.appendingPathComponent("good.json")
        try Data(
            #"{"broker": {"url": "memory://filestore"}, "memory": {"partitions": 3}, "app": {"anything": 1}}"#.utf8
        ).write(to: good)
        let config = try await Brokers.configurationFromEnvironment([:], configFile: good.path)
        #expect(config.url.hosts.first?.name == "filestore")
        #expect(config.int("partitions") == 3)

        // The environment wins over the file.
        let both = try await Brokers.configurationFromEnvironment(["MEMORY_PARTITIONS": "9"], configFile: good.path)
        #expect(both.int("partitions") == 9)

        let bad = dir.appendingPathComponent("bad.json")
        try Data(#"{"memory": {"partitionz": 3}}"#.utf8).write(to: bad)
        do {
            _ = try await Brokers.configurationFromEnvironment([:], configFile: bad.path)
            Issue.record("accepted unknown key")
        } catch let error as BrokerError {
            #expect(error.message.contains("memory.partitionz"), "\(error)")
        }
        do {
            _ = try await Brokers.configurationFromEnvironment(
                [:],
                configFile: dir.appendingPathComponent("missing.json").path
            )
            Issue.record("accepted a missing file")
        } catch let error as BrokerError {
            #expect(error.message.contains("missing.json"))
        }
    }

    @Test func configReaderWithInMemoryProvider() throws {
        let reader = ConfigReader(
            provider: InMemoryProvider(values: [
                "broker.url": "memory://reader", "memory.max.messages": 10,
            ])
        )
        let config = try Brokers.configuration(from: reader)
        #expect(config.int("max.messages") == 10)
    }
}
