/// Checks every backend runs before publishing, so errors read the same on every broker.
public enum PublishValidation {
    /// Validates the destination name and message size, rejects reserved-header misuse, and
    /// injects the trace context. Returns the message to send.
    public static func prepare(
        _ message: Message, to destination: String, configuration: BrokerConfiguration, backend: String
    ) throws -> Message {
        try DestinationName.validate(destination, backend: backend)
        let size = message.encodedSize
        let limit = configuration.maxMessageBytes
        if size > limit {
            throw BrokerError(
                .messageTooLarge,
                "message '\(message.id)' is \(size) bytes; the limit (max.message.bytes) is \(limit)",
                backend: backend, destination: destination)
        }
        for key in message.headers.keys where key.isEmpty {
            throw BrokerError(.invalidConfiguration, "message '\(message.id)' has an empty header name", backend: backend, destination: destination)
        }
        var prepared = message
        TraceContext.inject(into: &prepared.headers)
        return prepared
    }
}
