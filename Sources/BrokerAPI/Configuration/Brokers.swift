import Configuration
import Foundation
import Logging
import SystemPackage

/// The entry point: pick and connect a backend by URL or configuration.
///
/// ```swift
/// // BROKER_URL=kafka://localhost:9092 KAFKA_COMPRESSION_TYPE=snappy
/// let broker = try await Brokers.connect(config: ConfigReader(provider: EnvironmentVariablesProvider()))
/// ```
public enum Brokers {
    /// The URL used when none is configured.
    public static let defaultURL = "memory://"

    /// Validates `url` plus `options` against the backend registered for the URL's scheme.
    public static func configuration(
        url: String,
        options: [String: String] = [:],
        registry: BrokerRegistry = .shared
    ) throws -> BrokerConfiguration {
        let parsed = try BrokerURL(url)
        guard let backend = registry.backend(for: parsed.scheme) else {
            throw BrokerError(
                .unknownScheme,
                "no backend registered for scheme '\(parsed.scheme)' in '\(parsed.redacted)'; registered: \(registry.schemes.joined(separator: ", ")). Link and register the backend (e.g. KafkaBackend.register())"
            )
        }
        let specs = BrokerOption.common + backend.options
        var merged: [String: String] = [:]
        for item in parsed.query { merged[item.key] = item.value }
        for (key, value) in options { merged[key] = value }
        var validated: [String: String] = [:]
        for (key, value) in merged {
            guard let spec = specs.first(where: { $0.matches(key) }) else {
                throw BrokerError.invalidConfiguration(
                    "unknown option '\(key)' for \(backend.name) (\(parsed.redacted)); known options: \(specs.map(\.name).sorted().joined(separator: ", "))",
                    backend: backend.name
                )
            }
            validated[key] = try spec.validate(value, backend: backend.name)
        }
        return BrokerConfiguration(url: parsed, options: validated, specs: specs)
    }

    /// Connects to the broker at `url`.
    public static func connect(
        url: String,
        options: [String: String] = [:],
        registry: BrokerRegistry = .shared,
        logger: Logger = Logger(label: "brokerkit")
    ) async throws -> BrokerClient {
        let configuration = try configuration(url: url, options: options, registry: registry)
        return try await connect(configuration, registry: registry, logger: logger)
    }

    /// Connects with a validated configuration.
    public static func connect(
        _ configuration: BrokerConfiguration,
        registry: BrokerRegistry = .shared,
        logger: Logger = Logger(label: "brokerkit")
    ) async throws -> BrokerClient {
        guard let backend = registry.backend(for: configuration.scheme) else {
            throw BrokerError(.unknownScheme, "no backend registered for scheme '\(configuration.scheme)'")
        }
        var logger = logger
        logger[metadataKey: "broker"] = "\(configuration.url.redacted)"
        return try await backend.connect(configuration: configuration, logger: logger)
    }

    /// Reads `broker.url` (env `BROKER_URL`, default `memory://`) and the chosen backend's
    /// options under its namespace (`kafka.compression.type`, env `KAFKA_COMPRESSION_TYPE`).
    public static func configuration(
        from reader: ConfigReader,
        registry: BrokerRegistry = .shared
    ) throws -> BrokerConfiguration {
        let url = reader.string(forKey: "broker.url", isSecret: true) ?? defaultURL
        let parsed = try BrokerURL(url)
        guard let backend = registry.backend(for: parsed.scheme) else {
            return try configuration(url: url, registry: registry)  // throws unknownScheme
        }
        var options: [String: String] = [:]
        for spec in BrokerOption.common + backend.options where !spec.isPrefix {
            let key = ConfigKey(backend.optionNamespace + "." + spec.name)
            if let value = reader.string(forKey: key, isSecret: spec.isSecret) {
                options[spec.name] = value
            } else if let value = reader.int(forKey: key) {
                options[spec.name] = String(value)
            } else if let value = reader.double(forKey: key) {
                options[spec.name] = String(value)
            } else if let value = reader.bool(forKey: key) {
                options[spec.name] = String(value)
            }
        }
        return try configuration(url: url, options: options, registry: registry)
    }

    /// Connects using a `ConfigReader` (see ``configuration(from:registry:)``).
    public static func connect(
        config reader: ConfigReader,
        registry: BrokerRegistry = .shared,
        logger: Logger = Logger(label: "brokerkit")
    ) async throws -> BrokerClient {
        try await connect(try configuration(from: reader, registry: registry), registry: registry, logger: logger)
    }

    /// The configuration from the process environment and, if given (or named by
    /// `BROKER_CONFIG_FILE`), a JSON config file; the environment wins.
    ///
    /// Unlike a bare `ConfigReader`, this checks the sources it owns strictly: every
    /// `BROKER_*` variable and every key under `broker` or a backend namespace in the file
    /// must be known, so a typo is an error naming the key instead of silence.
    ///
    /// `url` and `options`, when given (e.g. from command-line flags), win over both sources.
    public static func configurationFromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment,
        configFile: String? = nil,
        url: String? = nil,
        options: [String: String] = [:],
        registry: BrokerRegistry = .shared
    ) async throws -> BrokerConfiguration {
        let knownBrokerVars: Set<String> = ["BROKER_URL", "BROKER_CONFIG_FILE"]
        for name in environment.keys.sorted() where name.hasPrefix("BROKER_") && !knownBrokerVars.contains(name) {
            throw BrokerError.invalidConfiguration(
                "unknown environment variable '\(name)'; BrokerKit reads BROKER_URL, BROKER_CONFIG_FILE and backend options such as KAFKA_COMPRESSION_TYPE"
            )
        }
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(
                environmentVariables: environment,
                secretsSpecifier: .dynamic { key, _ in key == "BROKER_URL" || BrokerOption.looksSecret(key) }
            )
        ]
        if let path = configFile ?? environment["BROKER_CONFIG_FILE"], !path.isEmpty {
            try checkConfigFile(path, registry: registry)
            do {
                providers.append(try await FileProvider<JSONSnapshot>(filePath: FilePath(path)))
            } catch {
                throw BrokerError.invalidConfiguration("cannot read config file '\(path)': \(error)")
            }
        }
        let fromSources = try configuration(from: ConfigReader(providers: providers), registry: registry)
        guard url != nil || !options.isEmpty else { return fromSources }
        if let url, try BrokerURL(url).scheme != fromSources.scheme {
            // Another backend: the environment's options belong to the old one.
            return try configuration(url: url, options: options, registry: registry)
        }
        let merged = fromSources.options.merging(options) { $1 }
        return try configuration(url: url ?? fromSources.url.source, options: merged, registry: registry)
    }

    /// Connects using ``configurationFromEnvironment(_:configFile:url:options:registry:)``.
    public static func connectFromEnvironment(
        configFile: String? = nil,
        registry: BrokerRegistry = .shared,
        logger: Logger = Logger(label: "brokerkit")
    ) async throws -> BrokerClient {
        try await connect(
            try await configurationFromEnvironment(configFile: configFile, registry: registry),
            registry: registry,
            logger: logger
        )
    }

    /// Rejects unknown keys under `broker.` and under every registered backend's namespace.
    static func checkConfigFile(_ path: String, registry: BrokerRegistry) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BrokerError.invalidConfiguration("config file '\(path)' does not exist or cannot be read")
        }
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: data) } catch {
            throw BrokerError.invalidConfiguration(
                "config file '\(path)' is not valid JSON: \(error.localizedDescription)"
            )
        }
        guard let object = root as? [String: Any] else {
            throw BrokerError.invalidConfiguration("config file '\(path)' must contain a JSON object")
        }
        var flat: [String] = []
        func walk(_ value: Any, _ prefix: String) {
            if let dict = value as? [String: Any] {
                for (k, v) in dict { walk(v, prefix.isEmpty ? k : prefix + "." + k) }
            } else {
                flat.append(prefix)
            }
        }
        walk(object, "")
        let backends = registry.all
        for key in flat.sorted() {
            if key.hasPrefix("broker.") {
                guard key == "broker.url" else {
                    throw BrokerError.invalidConfiguration(
                        "unknown key '\(key)' in config file '\(path)'; under 'broker' only 'url' is read"
                    )
                }
                continue
            }
            for backend in backends where key.hasPrefix(backend.optionNamespace + ".") {
                let option = String(key.dropFirst(backend.optionNamespace.count + 1))
                let specs = BrokerOption.common + backend.options
                guard specs.contains(where: { $0.name == option }) else {
                    throw BrokerError.invalidConfiguration(
                        "unknown key '\(key)' in config file '\(path)' for \(backend.name); known: \(specs.map { backend.optionNamespace + "." + $0.name }.sorted().joined(separator: ", "))",
                        backend: backend.name
                    )
                }
            }
        }
    }
}
