/// The validated configuration a backend connects with: the URL plus backend options.
///
/// Build one with ``Brokers/configuration(url:options:registry:)`` or from a `ConfigReader` with
/// ``Brokers/configuration(from:registry:)``; ``description`` never shows passwords.
public struct BrokerConfiguration: Sendable, CustomStringConvertible {
    /// The parsed URL.
    public let url: BrokerURL
    /// Validated options by name (URL query and explicit options merged; explicit wins).
    public let options: [String: String]
    /// The option specs the values were checked against.
    public let specs: [BrokerOption]

    init(url: BrokerURL, options: [String: String], specs: [BrokerOption]) {
        self.url = url
        self.options = options
        self.specs = specs
    }

    /// The backend name (the URL scheme).
    public var scheme: String { url.scheme }

    /// The option's value, or its default.
    public func string(_ name: String) -> String? {
        options[name] ?? specs.first { $0.name == name }?.defaultValue
    }
    public func int(_ name: String) -> Int? { string(name).flatMap { Int($0) } }
    public func double(_ name: String) -> Double? { string(name).flatMap { Double($0) } }
    public func bool(_ name: String) -> Bool? { string(name).map { $0 == "true" } }
    public func duration(_ name: String) -> Duration? { string(name).flatMap(BrokerOption.parseDuration) }
    /// The options of a pass-through family (see ``BrokerOption/init(prefix:_:)``), with the
    /// prefix removed: `rdkafka.fetch.wait.max.ms` → `fetch.wait.max.ms`.
    public func options(withPrefix prefix: String) -> [String: String] {
        var found: [String: String] = [:]
        for (key, value) in options where key.hasPrefix(prefix) { found[String(key.dropFirst(prefix.count))] = value }
        return found
    }

    /// `connect.timeout`.
    public var connectTimeout: Duration { duration("connect.timeout") ?? .seconds(5) }
    /// `operation.timeout`.
    public var operationTimeout: Duration { duration("operation.timeout") ?? .seconds(30) }
    /// `auto.create`.
    public var autoCreate: Bool { bool("auto.create") ?? true }
    /// `max.message.bytes`.
    public var maxMessageBytes: Int { int("max.message.bytes") ?? 8 * 1024 * 1024 }
    /// `prefix`.
    public var prefix: String { string("prefix") ?? "" }

    public var description: String {
        let shown = options.keys.sorted().map { key -> String in
            let secret = (specs.first { $0.matches(key) }?.isSecret ?? false) || BrokerOption.looksSecret(key)
            return "\(key)=\(secret ? "***" : options[key]!)"
        }
        return "BrokerConfiguration(\(url.redacted)\(shown.isEmpty ? "" : ", " + shown.joined(separator: ", ")))"
    }
}
