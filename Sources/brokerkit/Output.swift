import BrokerAPI
import Foundation

/// Unbuffered line output (so piped `consume` output appears as messages arrive).
enum Output {
    static func line(_ text: String) {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    static func error(_ text: String) {
        let body = text.hasSuffix("\n") ? text : text + "\n"
        FileHandle.standardError.write(Data(body.utf8))
    }
}

/// A JSON value whose objects keep their key order (for readable, stable output).
enum JSON {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case null
    case array([JSON])
    case object([(String, JSON)])

    static func optional(_ text: String?) -> JSON { text.map(JSON.string) ?? .null }

    /// A string → string map with sorted keys.
    static func dictionary(_ map: [String: String]) -> JSON {
        .object(map.keys.sorted().map { ($0, .string(map[$0]!)) })
    }

    /// Compact, single-line JSON text.
    var text: String {
        var out = ""
        write(to: &out)
        return out
    }

    private func write(to out: inout String) {
        switch self {
        case .string(let s): JSON.writeString(s, to: &out)
        case .int(let i): out += String(i)
        case .double(let d): out += d.isFinite ? String(d) : "null"
        case .bool(let b): out += b ? "true" : "false"
        case .null: out += "null"
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.write(to: &out)
            }
            out += "]"
        case .object(let fields):
            out += "{"
            for (i, (key, value)) in fields.enumerated() {
                if i > 0 { out += "," }
                JSON.writeString(key, to: &out)
                out += ":"
                value.write(to: &out)
            }
            out += "}"
        }
    }

    private static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

extension JSON {
    /// `payload` (UTF-8 text, or base64 when asked or not valid UTF-8) plus `payload_encoding`.
    static func payloadFields(_ payload: Data, forceBase64: Bool) -> [(String, JSON)] {
        if !forceBase64, let text = String(data: payload, encoding: .utf8) {
            return [("payload", .string(text)), ("payload_encoding", .string("utf-8"))]
        }
        return [("payload", .string(payload.base64EncodedString())), ("payload_encoding", .string("base64"))]
    }

    static func position(_ position: Position?) -> JSON { optional(position?.description) }
}

/// Left-aligned (text) and right-aligned (numbers) plain-text tables.
struct TextTable {
    var header: [String]
    var rows: [[String]] = []
    /// Columns rendered right-aligned.
    var numeric: Set<Int> = []

    func render() -> String {
        let all = [header] + rows
        let columns = all.map(\.count).max() ?? 0
        var widths = Array(repeating: 0, count: columns)
        for row in all {
            for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        return all.map { row in
            row.enumerated().map { i, cell in
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                return numeric.contains(i) ? pad + cell : (i == row.count - 1 ? cell : cell + pad)
            }.joined(separator: "  ")
        }.map { line in
            var line = line
            while line.last == " " { line.removeLast() }
            return line
        }.joined(separator: "\n")
    }
}
