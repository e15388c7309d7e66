import BrokerAPI
import Foundation
import KafkaBackend
import RabbitBackend
import RedisStreamsBackend

/// The fuzz targets: what BrokerKit reads from outside (a broker URL and options, a config
/// file, and each backend's records) fed with arbitrary bytes. A target returns normally for
/// any input: bad input is an error or a defect, never a crash, a hang or a broken promise.
/// Where a target can check more than "did not crash", it does, and traps when the check
/// fails (libFuzzer reports a trap as a crash and keeps the input):
///
/// - `url`: a password in a URL is never printed (description, redacted form, errors).
/// - `redis`, `amqp`, `kafka`: a record BrokerKit accepts (no defect) keeps its id, key,
///   headers and payload when BrokerKit writes its copy (a retry, a DLQ entry) and reads
///   that back.
///
/// `scripts/fuzz.sh` runs each under libFuzzer (`Sources/BrokerFuzz`); the unit tests run
/// every committed corpus and regression input through them (`FuzzCorpusTests`).
public enum FuzzTarget: String, CaseIterable, Sendable {
    case url, config, redis, amqp, kafka

    /// Runs the target on `data`.
    public func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .url: FuzzTarget.url(data)
        case .config: FuzzTarget.config(data)
        case .redis: FuzzTarget.redis(data)
        case .amqp: FuzzTarget.amqp(data)
        case .kafka: FuzzTarget.kafka(data)
        }
    }

    public func run(_ data: Data) { data.withUnsafeBytes { run($0) } }

    /// Every backend, as the CLI registers them.
    static let registry: BrokerRegistry = {
        let registry = BrokerRegistry()
        RedisStreamsBackend.register(in: registry)
        RabbitBackend.register(in: registry)
        KafkaBackend.register(in: registry)
        return registry
    }()

    static func fail(_ what: String, _ input: String) -> Never {
        fatalError("fuzz invariant broken: \(what); input: \(input.debugDescription)")
    }

    // MARK: - url

    /// First line: a broker URL; further lines: `name=value` options.
    static func url(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        let (outputs, password) = urlOutputs(text)
        // Only a password that is distinctive in the input can be told apart from other text
        // that happens to contain the same characters.
        guard let password, password.count >= 6, text.components(separatedBy: password).count == 2 else { return }
        // BrokerKit's own words may contain it (a password "frame.max" is also an option name
        // the unknown-option error lists): the same input with another password of the same
        // length shows how often it appears without coming from the URL.
        let other = String(repeating: "a", count: password.count)
        let (baseline, _) = urlOutputs(text.replacingOccurrences(of: password, with: other))
        func occurrences(_ outputs: [String]) -> Int {
            outputs.reduce(0) { $0 + $1.components(separatedBy: password).count - 1 }
        }
        if occurrences(outputs) > occurrences(baseline), let output = outputs.first(where: { $0.contains(password) }) {
            fail("password printed in '\(output)'", text)
        }
    }

    /// What BrokerKit prints for a URL input: its redacted form, the parsed URL's description
    /// and redacted form, and the configuration's description or the error; and the password.
    static func urlOutputs(_ text: String) -> (outputs: [String], password: String?) {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let url = lines.isEmpty ? "" : lines.removeFirst()
        var options: [String: String] = [:]
        for line in lines {
            guard let equals = line.firstIndex(of: "=") else { continue }
            options[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        var outputs: [String] = [BrokerURL.redact(url)]
        var password: String?
        do {
            let parsed = try BrokerURL(url)
            password = parsed.password
            outputs += [parsed.description, parsed.redacted]
            let configuration = try Brokers.configuration(url: url, options: options, registry: registry)
            outputs.append(configuration.description)
        } catch {
            outputs.append("\(error)")
        }
        return (outputs, password)
    }

    // MARK: - config

    /// The bytes as a JSON config file, read as `BROKER_CONFIG_FILE` is.
    static func config(_ data: UnsafeRawBufferPointer) {
        let path = FuzzTarget.configPath
        guard FileManager.default.createFile(atPath: path, contents: Data(data)) else { return }
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            _ = try? await Brokers.configurationFromEnvironment([:], configFile: path, registry: FuzzTarget.registry)
            done.signal()
        }
        done.wait()
    }

    static let configPath = NSTemporaryDirectory() + "/brokerkit-fuzz-config-\(getpid()).json"

    // MARK: - redis

    /// The bytes as what a Redis server sends (RESP).
    static func redis(_ data: UnsafeRawBufferPointer) {
        guard let entries = RedisUntrustedInput.decode(resp: data) else { return }
        for entry in entries where entry.defect == nil {
            checkCopy(entry.message, entry.copy, data)
        }
    }

    // MARK: - amqp

    /// First two bytes: the length of the content header's property bytes that follow; the
    /// rest is the body.
    static func amqp(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 2 else { return }
        let length = min(Int(data[0]) << 8 | Int(data[1]), data.count - 2)
        let properties = UnsafeRawBufferPointer(rebasing: data[2..<(2 + length)])
        let body = Data(data[(2 + length)...])
        let decoded = RabbitUntrustedInput.decode(properties: properties, body: body)
        guard let message = decoded.message, decoded.defect == nil else { return }
        guard let copy = decoded.copy else { fail("an accepted message could not be copied", describe(data)) }
        checkCopy(message, copy, data)
    }

    // MARK: - kafka

    /// A record: byte 0 says whether there is a key (bit 0) and a payload (bit 1), bytes 1–8
    /// the timestamp in milliseconds (big-endian, signed); then the key and the payload, each
    /// a 2-byte length and its bytes, then headers: a 1-byte name length, the name, a 2-byte
    /// value length (0xFFFF: a null value) and the value, until the input ends.
    static func kafka(_ data: UnsafeRawBufferPointer) {
        var reader = ByteReader(data)
        guard let flags = reader.byte(), let stamp = reader.bytes(8) else { return }
        let millis = stamp.reduce(Int64(0)) { $0 << 8 | Int64($1) }
        let key = flags & 1 != 0 ? reader.chunk(lengthBytes: 2) ?? [] : nil
        let value = flags & 2 != 0 ? reader.chunk(lengthBytes: 2) ?? [] : nil
        var headers: [KafkaUntrustedInput.Header] = []
        while let name = reader.chunk(lengthBytes: 1) {
            guard let length = reader.bytes(2).map({ Int($0[0]) << 8 | Int($0[1]) }) else { break }
            headers.append(
                .init(name: name, value: length == 0xFFFF ? nil : reader.bytes(min(length, reader.remaining)) ?? [])
            )
        }
        let decoded = KafkaUntrustedInput.decode(key: key, value: value, headers: headers, timestampMillis: millis)
        if let attempt = decoded.attempt { _ = Int(attempt) }
        _ = decoded.envelope?.replayTarget(dlqOf: "fuzz")
        guard decoded.defect == nil else { return }
        guard let copy = decoded.copy else { fail("an accepted record could not be copied", describe(data)) }
        checkCopy(decoded.message, copy, data)
    }

    // MARK: - shared checks

    /// A copy BrokerKit writes of an accepted message must read back as the same message.
    static func checkCopy(_ message: Message, _ copy: Message, _ data: UnsafeRawBufferPointer) {
        guard copy.id == message.id, copy.key == message.key, copy.payload == message.payload,
            copy.headers == message.headers
        else {
            fail("the copy of an accepted message differs: \(message) became \(copy)", describe(data))
        }
    }

    static func describe(_ data: UnsafeRawBufferPointer) -> String {
        data.map { String(format: "%02x", $0) }.joined()
    }
}

/// Reads fields off the front of a fuzz input; `nil` once it runs out.
struct ByteReader {
    private let data: UnsafeRawBufferPointer
    private var offset = 0
    init(_ data: UnsafeRawBufferPointer) { self.data = data }

    var remaining: Int { data.count - offset }

    mutating func byte() -> UInt8? { bytes(1)?.first }

    mutating func bytes(_ count: Int) -> [UInt8]? {
        guard count >= 0, count <= remaining else { return nil }
        defer { offset += count }
        return Array(data[offset..<(offset + count)])
    }

    /// A length (`lengthBytes` bytes, big-endian) and that many bytes (fewer if the input ends).
    mutating func chunk(lengthBytes: Int) -> [UInt8]? {
        guard let prefix = bytes(lengthBytes) else { return nil }
        let length = prefix.reduce(0) { $0 << 8 | Int($1) }
        return bytes(min(length, remaining))
    }
}
