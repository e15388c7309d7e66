import Logging
import Synchronization

/// Log lines a test can read back: pass ``logger`` to the code under test, then read
/// ``lines`` (to check that a failure is reported, and not reported a thousand times).
public final class CapturedLog: Sendable {
    public typealias Line = (level: Logger.Level, message: String)
    private let storage = Mutex<[Line]>([])

    /// The lines, behind their lock (not the `Mutex` itself: the ThreadSanitizer build swaps
    /// in a module-internal one, see `TSanMutex.swift`).
    public struct Lines: Sendable {
        let log: CapturedLog
        public func withLock<Result>(_ body: (inout [Line]) -> Result) -> Result { log.storage.withLock { body(&$0) } }
    }
    public var lines: Lines { Lines(log: self) }

    public init() {}

    public var logger: Logger {
        Logger(label: "test") { _ in CapturingHandler(log: self) }
    }

    struct CapturingHandler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            log.lines.withLock { $0.append((event.level, "\(event.message)")) }
        }
    }
}
