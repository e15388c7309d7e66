import BrokerAPI
import CHiredis

/// The Redis Streams backend over hiredis. Linked and versioned here; the broker
/// implementation lands with its own issue, so it is not registered for `redis://` yet.
public enum RedisStreamsBackend {
    /// The linked hiredis version, e.g. `0.14.1`.
    public static var libraryVersion: String { "\(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)" }
}
