import Foundation

/// Milliseconds since 1970 as the brokers store them, for dates BrokerKit writes.
@_spi(BrokerBackend) public enum EpochMillis {
    /// The dates BrokerKit writes: years 1970 to 9999.
    public static let range: ClosedRange<Int64> = 0...253_402_300_799_999

    /// `date` in whole milliseconds, clamped to ``range``. A date read from a broker can be
    /// anything (a Kafka record's timestamp is whatever its producer sent, up to `Int64.max`
    /// milliseconds), and converting one past `Int64.max` back to an integer trapped when
    /// BrokerKit wrote a retry or DLQ copy of the record (found by the `kafka` fuzz target).
    public static func of(_ date: Date) -> Int64 {
        let millis = (date.timeIntervalSince1970 * 1000).rounded()
        guard millis.isFinite else { return millis > 0 ? range.upperBound : range.lowerBound }
        return Int64(min(max(Double(range.lowerBound), millis), Double(range.upperBound)))
    }
}
