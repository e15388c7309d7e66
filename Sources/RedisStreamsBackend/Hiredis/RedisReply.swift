import Foundation

/// A decoded hiredis reply (RESP2).
enum RedisReply: Sendable {
    case string(Data)
    case status(String)
    case integer(Int64)
    case array([RedisReply])
    case null
    case error(String)
    /// A stream's entry list, parsed while decoding (XREADGROUP replies only: see
    /// `HiredisConnection.decodeStreamRead`).
    case entries(StreamEntries)

    var text: String? {
        switch self {
        case .string(let data): return String(decoding: data, as: UTF8.self)
        case .status(let text): return text
        case .integer(let value): return String(value)
        default: return nil
        }
    }

    var data: Data? {
        switch self {
        case .string(let data): return data
        case .status(let text): return Data(text.utf8)
        default: return nil
        }
    }

    var integer: Int64? {
        switch self {
        case .integer(let value): return value
        case .string, .status: return text.flatMap { Int64($0) }
        default: return nil
        }
    }

    var array: [RedisReply]? {
        if case .array(let items) = self { return items }
        return nil
    }

    var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    var errorText: String? {
        if case .error(let text) = self { return text }
        return nil
    }
}

/// Entries parsed straight from a hiredis reply.
struct StreamEntries: Sendable {
    let valid: [RedisMessageMapping.Entry]
    let deleted: [String]
}

/// One argument of a Redis command: text or raw bytes. Kept as given and copied straight
/// into the command buffer (no intermediate `Data` for text: converting every field name and
/// id went through a generic, dynamically cast initializer and showed up in profiles).
struct RedisArgument: Sendable, ExpressibleByStringLiteral {
    private enum Storage: Sendable {
        case text(String)
        case data(Data)
    }
    private let storage: Storage
    init(_ text: String) { storage = .text(text) }
    init(_ data: Data) { storage = .data(data) }
    init(_ value: Int) { storage = .text(String(value)) }
    init(_ value: Int64) { storage = .text(String(value)) }
    init(stringLiteral value: String) { self.init(value) }

    /// Whether this is the text `command` (exactly).
    func isText(_ command: String) -> Bool {
        if case .text(let text) = storage { return text == command }
        return false
    }

    /// Length in bytes.
    var count: Int {
        switch storage {
        case .text(let text): return text.utf8.count
        case .data(let data): return data.count
        }
    }

    /// Copies the bytes to `destination` (which has room for ``count`` bytes).
    func copyBytes(to destination: UnsafeMutableRawPointer) {
        switch storage {
        case .text(var text):
            text.withUTF8 { source in
                if let base = source.baseAddress { destination.copyMemory(from: base, byteCount: source.count) }
            }
        case .data(let data):
            data.withUnsafeBytes { source in
                if let base = source.baseAddress { destination.copyMemory(from: base, byteCount: source.count) }
            }
        }
    }
}

/// A failure talking to Redis below the BrokerError level: I/O (reconnect and retry may
/// help) or a server error reply (it will not).
enum RedisFailure: Error, CustomStringConvertible {
    case io(String)
    case server(String)

    var description: String {
        switch self {
        case .io(let text): return "I/O error: \(text)"
        case .server(let text): return text
        }
    }
}
