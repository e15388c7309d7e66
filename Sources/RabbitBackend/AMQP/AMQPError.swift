@_spi(BrokerBackend) import BrokerAPI
import CRabbitMQ

/// Maps rabbitmq-c statuses and AMQP reply codes to ``BrokerError``s that name the broker,
/// the destination and, for 406 PRECONDITION_FAILED, the offending argument (RabbitMQ's reply
/// text names it: "inequivalent arg 'x-queue-type' for queue 'orders' ...").
enum AMQPError {
    static let backend = "amqp"

    /// The text of a rabbitmq-c status code.
    static func statusText(_ status: Int32) -> String {
        String(cString: amqp_error_string2(status))
    }

    /// An error for a `channel.close` / `connection.close` the broker sent.
    static func server(code: UInt16, text: String, what: String, destination: String?, url: String) -> BrokerError {
        let detail = "\(what) failed on \(url): \(code) \(text)"
        switch code {
        case 311:  // CONTENT_TOO_LARGE
            return BrokerError(.messageTooLarge, detail, backend: backend, destination: destination)
        case 320:  // CONNECTION_FORCED (broker shutting down)
            return BrokerError(.connectionFailed, detail, backend: backend, destination: destination)
        case 403:  // ACCESS_REFUSED
            return BrokerError(.authenticationFailed, detail, backend: backend, destination: destination)
        case 404:  // NOT_FOUND
            return BrokerError(.unknownDestination, detail, backend: backend, destination: destination)
        case 406:  // PRECONDITION_FAILED
            if text.contains("larger than configured max size") || text.contains("message size") {
                return BrokerError(.messageTooLarge, detail, backend: backend, destination: destination)
            }
            if text.contains("inequivalent arg 'x-queue-type'") && text.contains("stream") {
                return BrokerError(
                    .wrongDestinationKind,
                    detail + " (a stream and a queue cannot share a name)",
                    backend: backend,
                    destination: destination
                )
            }
            if text.contains("inequivalent arg") {
                return BrokerError(
                    .invalidConfiguration,
                    detail
                        + " (the queue exists with other arguments; delete it or match its settings, e.g. option queue.type)",
                    backend: backend,
                    destination: destination
                )
            }
            return BrokerError(.brokerError, detail, backend: backend, destination: destination)
        case 530:  // NOT_ALLOWED (e.g. vhost missing or not permitted)
            return BrokerError(.invalidConfiguration, detail, backend: backend, destination: destination)
        default:
            return BrokerError(.brokerError, detail, backend: backend, destination: destination)
        }
    }

    /// An error for a rabbitmq-c library status (socket, timeout, protocol state).
    static func library(_ status: Int32, what: String, destination: String?, url: String) -> BrokerError {
        if status == AMQP_STATUS_TIMEOUT.rawValue {
            return BrokerError(
                .timeout,
                "\(what) on \(url) did not complete within operation.timeout",
                backend: backend,
                destination: destination
            )
        }
        return BrokerError(
            .connectionFailed,
            "\(what) on \(url) failed: \(statusText(status))",
            backend: backend,
            destination: destination
        )
    }
}
