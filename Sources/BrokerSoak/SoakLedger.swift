import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One process's append-only ledger: one line per event, `<µs since 1970>\t<event>\t<fields…>`.
///
/// Each line is one `write(2)` to a file opened with `O_APPEND`, made before the event's
/// effect on the broker (a handler records its outcome before it returns, so before the ack):
/// a process killed with SIGKILL loses nothing it wrote, and the kernel keeps lines from
/// concurrent handlers whole.
public final class SoakLedgerWriter: Sendable {
    private let fd: Int32
    public let path: String

    public init(path: String) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw SoakError("cannot open ledger \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    /// Microseconds since 1970, the ledger's clock (the same in every process of the machine).
    public static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    public func record(_ event: String, _ fields: [String], at time: Int64? = nil) {
        let micros = time ?? Self.now()
        var line = "\(micros)\t\(event)"
        for field in fields {
            line += "\t"
            // Fields never hold tabs or newlines (error texts are flattened).
            line += field.replacingOccurrences(of: "\t", with: " ").replacingOccurrences(of: "\n", with: " ")
        }
        line += "\n"
        var bytes = Array(line.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
        bytes.removeAll()
    }
}

/// One parsed ledger line.
public struct SoakEvent: Sendable, Equatable {
    public var micros: Int64
    public var name: String
    public var fields: [String]
    /// The file it came from (a process and its incarnation).
    public var source: String

    public init(micros: Int64, name: String, fields: [String], source: String) {
        self.micros = micros
        self.name = name
        self.fields = fields
        self.source = source
    }
}

/// Reads ledger files incrementally: each call returns the complete lines appended since the
/// last one (a line being written is left for the next call).
public final class SoakLedgerReader {
    private var offsets: [String: UInt64] = [:]
    public init() {}

    public func readNew(from paths: [String]) -> [SoakEvent] {
        var events: [SoakEvent] = []
        for path in paths {
            guard let handle = FileHandle(forReadingAtPath: path) else { continue }
            defer { try? handle.close() }
            let start = offsets[path] ?? 0
            try? handle.seek(toOffset: start)
            guard let data = try? handle.readToEnd(), !data.isEmpty else { continue }
            guard let lastNewline = data.lastIndex(of: UInt8(ascii: "\n")) else { continue }
            let complete = data[data.startIndex...lastNewline]
            offsets[path] = start + UInt64(complete.count)
            let source = URL(fileURLWithPath: path).lastPathComponent
            for line in complete.split(separator: UInt8(ascii: "\n")) {
                let parts = line.split(separator: UInt8(ascii: "\t"), omittingEmptySubsequences: false).map {
                    String(decoding: $0, as: UTF8.self)
                }
                guard parts.count >= 2, let micros = Int64(parts[0]) else { continue }
                events.append(
                    SoakEvent(micros: micros, name: parts[1], fields: Array(parts.dropFirst(2)), source: source)
                )
            }
        }
        return events
    }
}

/// An error of the soak harness itself (bad option, a process that cannot start).
public struct SoakError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Sequence numbers as one ledger field: `1,5,9`.
enum SeqList {
    static func format(_ seqs: [Int]) -> String { seqs.map(String.init).joined(separator: ",") }
    static func parse(_ text: String) -> [Int] { text.split(separator: ",").compactMap { Int($0) } }
}
