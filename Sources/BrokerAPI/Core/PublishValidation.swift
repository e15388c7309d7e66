/// Checks every backend runs before publishing, so errors read the same on every broker.
public enum PublishValidation {
    /// Validates the destination name and message size, rejects reserved-header misuse, and
    /// injects the trace context. Returns the message to send.
    public static func prepare(
        _ message: Message, to destination: String, configuration: BrokerConfiguration, backend: String
    ) throws -> Message {
        try prepare([message], to: destination, configuration: configuration, backend: backend)[0]
    }

    /// ``prepare(_:to:configuration:backend:)`` for a batch: the destination name, the size
    /// limit and the trace context are looked up once, not once per message. An empty batch
    /// is returned as is.
    public static func prepare(
        _ messages: [Message], to destination: String, configuration: BrokerConfiguration, backend: String
    ) throws -> [Message] {
        guard !messages.isEmpty else { return [] }
        try DestinationName.validate(destination, backend: backend)
        let limit = configuration.maxMessageBytes
        // By index: `for message in messages` copied every message (a retain and a release
        // of each of its fields) just to read it.
        for index in messages.indices {
            let size = messages[index].encodedSize
            if size > limit {
                throw BrokerError(
                    .messageTooLarge,
                    "message '\(messages[index].id)' is \(size) bytes; the limit (max.message.bytes) is \(limit)",
                    backend: backend, destination: destination)
            }
            if messages[index].headers.keys.contains(where: \.isEmpty) {
                throw BrokerError(.invalidConfiguration, "message '\(messages[index].id)' has an empty header name", backend: backend, destination: destination)
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
}
