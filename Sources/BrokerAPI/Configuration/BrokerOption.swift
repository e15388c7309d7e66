/// A backend option a user may set in the URL query, in code, in the environment or in a
/// config file. Unknown names and invalid values are errors naming the key.
public struct BrokerOption: Sendable, Hashable {
    /// The kind of value and its allowed range.
    public enum ValueType: Sendable, Hashable {
        case string
        case int(ClosedRange<Int>)
        case double(ClosedRange<Double>)
        case bool
        /// Seconds as a number, or with a unit: `250ms`, `5s`, `2m`, `1h`.
        case duration
        case choice([String])
    }

    /// Dotted name, e.g. `compression.type`. In the environment it is prefixed with the
    /// backend namespace and upper-cased: `KAFKA_COMPRESSION_TYPE`.
    public let name: String
    public let type: ValueType
    public let summary: String
    public let defaultValue: String?
    /// Secret values are redacted in every description.
    public let isSecret: Bool
    /// A pass-through family: every key starting with ``name`` (which ends with `.`) is
    /// accepted and handed to the backend, which validates it (e.g. `rdkafka.` → librdkafka).
    public let isPrefix: Bool

    public init(
        _ name: String,
        _ type: ValueType,
        default defaultValue: String? = nil,
        secret: Bool = false,
        _ summary: String
    ) {
        self.name = name
        self.type = type
        self.summary = summary
        self.defaultValue = defaultValue
        self.isSecret = secret || BrokerOption.looksSecret(name)
        self.isPrefix = false
    }

    /// A pass-through family of string options: every key starting with `prefix`.
    public init(prefix: String, _ summary: String) {
        self.name = prefix
        self.type = .string
        self.summary = summary
        self.defaultValue = nil
        self.isSecret = false
        self.isPrefix = true
    }

    /// Whether `key` is this option (or, for a prefix family, one of its members).
    public func matches(_ key: String) -> Bool {
        isPrefix ? key.hasPrefix(name) && key.count > name.count : key == name
    }

    /// Checks `value`; returns it normalized (trimmed, lower-cased for choices and bools).
    public func validate(_ value: String, backend: String) throws -> String {
        let text = value.trimmingWhitespace()
        func fail(_ why: String) -> BrokerError {
            .invalidConfiguration(
                "option '\(name)' of \(backend): \(isSecret ? "value" : "'\(text)'") \(why)",
                backend: backend
            )
        }
        switch type {
        case .string:
            return text
        case .int(let range):
            guard let number = Int(text) else { throw fail("is not an integer") }
            guard range.contains(number) else { throw fail("is outside \(range.lowerBound)...\(range.upperBound)") }
            return String(number)
        case .double(let range):
            guard let number = Double(text) else { throw fail("is not a number") }
            guard range.contains(number) else { throw fail("is outside \(range.lowerBound)...\(range.upperBound)") }
            return text
        case .bool:
            switch text.lowercased() {
            case "true", "1", "yes", "on": return "true"
            case "false", "0", "no", "off": return "false"
            default: throw fail("is not a boolean (true/false)")
            }
        case .duration:
            guard BrokerOption.parseDuration(text) != nil else {
                throw fail("is not a duration (seconds, or with a unit: 250ms, 5s, 2m, 1h)")
            }
            return text
        case .choice(let allowed):
            let lower = text.lowercased()
            guard allowed.contains(lower) else { throw fail("is not one of \(allowed.joined(separator: ", "))") }
            return lower
        }
    }

    /// Parses `5`, `1.5`, `250ms`, `5s`, `2m`, `1h`.
    public static func parseDuration(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)), value >= 0 { return .interval(value * factor) }
        }
        if let value = Double(text), value >= 0 { return .interval(value) }
        return nil
    }

    /// Names that hold secrets: anything with password, secret, token or key material.
    public static func looksSecret(_ name: String) -> Bool {
        let lower = name.lowercased()
        return [
            "password", "secret", "token", "passwd", "sasl.password", "key.password", "key.pem", "private.key",
            "credential",
        ].contains { lower.contains($0) }
    }

    /// Options every backend understands.
    public static let common: [BrokerOption] = [
        BrokerOption("connect.timeout", .duration, default: "5s", "How long connecting may take before it fails."),
        BrokerOption("operation.timeout", .duration, default: "30s", "How long one broker operation may take."),
        BrokerOption("auto.create", .bool, default: "true", "Create queues on first publish / consume."),
        BrokerOption(
            "max.message.bytes",
            .int(1...1_073_741_824),
            default: "8388608",
            "Largest message (payload + key + headers) a publish accepts."
        ),
        BrokerOption("prefix", .string, default: "", "Prepended to every destination name (multi-tenant namespaces)."),
    ]
}
