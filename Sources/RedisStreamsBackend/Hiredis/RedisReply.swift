import Foundation

/// A decoded hiredis reply (RESP2).
enum RedisReply: Sendable, Equatable {
    case string(Data)
    case status(String)
    case integer(Int64)
    case array([RedisReply])
    case null
    case error(String)

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

    var isNull: Bool { self == .null }

    var errorText: String? {
        if case .error(let text) = self { return text }
        return nil
    }
}

/// One argument of a Redis command: text or raw bytes.
struct RedisArgument: Sendable, ExpressibleByStringLiteral {
    let bytes: Data
    init(_ text: String) { bytes = Data(text.utf8) }
    init(_ data: Data) { bytes = data }
    init(_ value: Int) { bytes = Data(String(value).utf8) }
    init(_ value: Int64) { bytes = Data(String(value).utf8) }
    init(stringLiteral value: String) { self.init(value) }
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
