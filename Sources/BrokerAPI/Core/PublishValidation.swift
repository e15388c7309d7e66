/// Checks every publish gets before it reaches a backend (``BrokerClient`` runs them after the
/// destination name check), so errors read the same on every broker.
///
/// A message is refused, with nothing of its batch sent, when:
/// - it is larger than `max.message.bytes` (``BrokerError/Code/messageTooLarge``);
/// - a header name is empty, or reserved: every `x-brokerkit-*` name but the two job headers
///   (``HeaderName/jobName``, ``HeaderName/idempotencyKey``), which other programs may set to
///   enqueue jobs, and the broker-specific names a backend interprets (RabbitMQ's
///   `x-delivery-count`, `x-death`, …) (``BrokerError/Code/invalidMessage``);
/// - it has more than ``maxHeaderCount`` headers or more than ``maxHeaderBytes`` of header
///   names and values (``BrokerError/Code/messageTooLarge``).
@_spi(BrokerBackend) public enum PublishValidation {
    /// Most headers one message may carry.
    public static let maxHeaderCount = 256
    /// Most bytes of header names and values (UTF-8) one message may carry. RabbitMQ sends all
    /// headers in one frame; this keeps them well inside its default `frame.max` (128 KiB).
    public static let maxHeaderBytes = 65_536

    /// The reserved headers an app may still publish: job metadata.
    static let publishableReserved: Set<String> = [HeaderName.jobName, HeaderName.idempotencyKey]

    /// Checks a batch's sizes (against `max.message.bytes`) and headers and adds the trace
    /// context; the trace context is looked up once, not once per message. The caller (``BrokerClient``)
    /// has checked the destination name.
    /// An empty batch is returned as is. `reservedHeaders` says which of the backend's own
    /// header names (given in lower case) an app must not set.
    public static func prepare(
        _ messages: [Message],
        to destination: String,
        maxMessageBytes limit: Int,
        backend: String,
        reservedHeaders: @Sendable (String) -> Bool = { _ in false }
    ) throws -> [Message] {
        guard !messages.isEmpty else { return [] }
        // By index: `for message in messages` copied every message (a retain and a release
        // of each of its fields) just to read it.
        for index in messages.indices {
            let size = messages[index].encodedSize
            if size > limit {
                throw BrokerError(
                    .messageTooLarge,
                    "message '\(messages[index].id)' is \(size) bytes; the limit (max.message.bytes) is \(limit)",
                    backend: backend,
                    destination: destination
                )
            }
            if !messages[index].headers.isEmpty {
                try checkHeaders(
                    of: messages[index],
                    to: destination,
                    backend: backend,
                    reservedHeaders: reservedHeaders
                )
            }
        }
        // Without a trace to add, the caller's array is returned as is: no copy of each message.
        guard let trace = TraceContext.currentHeaders() else { return messages }
        return messages.map { message in
            var prepared = message
            TraceContext.add(trace, to: &prepared.headers)
            return prepared
        }
    }

    private static func checkHeaders(
        of message: Message,
        to destination: String,
        backend: String,
        reservedHeaders: (String) -> Bool
    ) throws {
        func fail(_ code: BrokerError.Code, _ why: String) -> BrokerError {
            BrokerError(
                code,
                "message '\(message.id)' \(why); nothing was sent",
                backend: backend,
                destination: destination
            )
        }
        let headers = message.headers
        if headers.count > maxHeaderCount {
            throw fail(.messageTooLarge, "has \(headers.count) headers; at most \(maxHeaderCount) are allowed")
        }
        var bytes = 0
        for (name, value) in headers {
            if name.isEmpty { throw fail(.invalidMessage, "has an empty header name") }
            bytes += name.utf8.count + value.utf8.count
            if isReserved(name, backendReserved: reservedHeaders) {
                throw fail(
                    .invalidMessage,
                    "sets the reserved header '\(name)': headers starting with '\(HeaderName.reservedPrefix)' (but for \(HeaderName.jobName) and \(HeaderName.idempotencyKey)) and those the \(backend) backend interprets are BrokerKit's own"
                )
            }
        }
        if bytes > maxHeaderBytes {
            throw fail(
                .messageTooLarge,
                "has \(bytes) bytes of header names and values; at most \(maxHeaderBytes) are allowed"
            )
        }
    }

    /// Whether an app may not publish header `name`.
    public static func isReserved(_ name: String, backendReserved: (String) -> Bool = { _ in false }) -> Bool {
        let lower = name.lowercased()
        if lower.hasPrefix(HeaderName.reservedPrefix) { return !publishableReserved.contains(lower) }
        return backendReserved(lower)
    }
}
