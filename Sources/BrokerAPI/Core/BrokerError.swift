/// The one error type every BrokerKit backend throws.
///
/// Codes are stable: match on ``code`` (a struct with static members, so new codes do not
/// break exhaustive switches in user code). The ``description`` names the broker, the
/// destination and the offending key or value; it never contains a password.
///
/// ```swift
/// do { try await broker.publish(message, to: "orders") }
/// catch let error as BrokerError where error.code == .messageTooLarge { ... }
/// ```
public struct BrokerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A stable error code.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Backing: String, Sendable, Hashable {
            case connectionFailed = "connection_failed"
            case timeout
            case invalidConfiguration = "invalid_configuration"
            case unknownScheme = "unknown_scheme"
            case unknownDestination = "unknown_destination"
            case invalidDestination = "invalid_destination"
            case wrongDestinationKind = "wrong_destination_kind"
            case messageTooLarge = "message_too_large"
            case invalidMessage = "invalid_message"
            case decodingFailed = "decoding_failed"
            case closed
            case alreadySettled = "already_settled"
            case unsupported
            case authenticationFailed = "authentication_failed"
            case brokerError = "broker_error"
            case jobFailed = "job_failed"
            case jobTimeout = "job_timeout"
        }
        fileprivate let backing: Backing
        public var description: String { backing.rawValue }

        /// The broker could not be reached or the connection dropped.
        public static let connectionFailed = Code(backing: .connectionFailed)
        /// An operation did not complete in time.
        public static let timeout = Code(backing: .timeout)
        /// A URL, option or setting is wrong; the message names the key.
        public static let invalidConfiguration = Code(backing: .invalidConfiguration)
        /// No backend is registered for the URL's scheme.
        public static let unknownScheme = Code(backing: .unknownScheme)
        /// The queue, stream or topic does not exist (and auto-creation is off).
        public static let unknownDestination = Code(backing: .unknownDestination)
        /// A destination or group name is not allowed.
        public static let invalidDestination = Code(backing: .invalidDestination)
        /// A queue was used as a stream, or the other way round.
        public static let wrongDestinationKind = Code(backing: .wrongDestinationKind)
        /// The message exceeds the backend's maximum size.
        public static let messageTooLarge = Code(backing: .messageTooLarge)
        /// A message an app tried to publish breaks a rule: a reserved or empty header name, too
        /// many headers, or headers too large. Nothing was sent.
        public static let invalidMessage = Code(backing: .invalidMessage)
        /// A payload could not be decoded.
        public static let decodingFailed = Code(backing: .decodingFailed)
        /// The broker, consumer or publisher was closed.
        public static let closed = Code(backing: .closed)
        /// A delivery was acked, nacked or dead-lettered twice.
        public static let alreadySettled = Code(backing: .alreadySettled)
        /// The backend does not support the operation (see ``BrokerCapabilities``).
        public static let unsupported = Code(backing: .unsupported)
        /// The broker rejected the credentials.
        public static let authenticationFailed = Code(backing: .authenticationFailed)
        /// The broker returned an error not covered by another code.
        public static let brokerError = Code(backing: .brokerError)
        /// A job handler failed.
        public static let jobFailed = Code(backing: .jobFailed)
        /// A job handler exceeded its timeout.
        public static let jobTimeout = Code(backing: .jobTimeout)
    }

    /// The stable code.
    public let code: Code
    /// A human-readable explanation naming the broker, destination and offending value.
    public let message: String
    /// The backend that raised the error (`memory`, `kafka`, `amqp`, `redis`), if known.
    public let backend: String?
    /// The destination involved, if any.
    public let destination: String?

    public init(_ code: Code, _ message: String, backend: String? = nil, destination: String? = nil) {
        self.code = code
        self.message = message
        self.backend = backend
        self.destination = destination
    }

    public var description: String {
        var prefix = "BrokerError.\(code)"
        if let backend { prefix += " [\(backend)]" }
        if let destination { prefix += " destination '\(destination)'" }
        return "\(prefix): \(message)"
    }

    /// Whether retrying the same operation later may succeed.
    public var isRetriable: Bool {
        switch code.backing {
        case .connectionFailed, .timeout, .brokerError: return true
        default: return false
        }
    }

    // Convenience constructors keep call sites short and messages uniform.
    public static func invalidConfiguration(_ message: String, backend: String? = nil) -> BrokerError {
        BrokerError(.invalidConfiguration, message, backend: backend)
    }
    public static func closed(_ what: String, backend: String? = nil, destination: String? = nil) -> BrokerError {
        BrokerError(.closed, "\(what) is closed", backend: backend, destination: destination)
    }
}
