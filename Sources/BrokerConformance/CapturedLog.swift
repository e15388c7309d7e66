import Logging
import Synchronization

/// Log lines a test can read back: pass ``logger`` to the code under test, then read
/// ``lines`` (to check that a failure is reported, and not reported a thousand times).
public final class CapturedLog: Sendable {
    public let lines = Mutex<[(level: Logger.Level, message: String)]>([])

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
