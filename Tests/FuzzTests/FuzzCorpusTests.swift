@_spi(BrokerBackend) import BrokerAPI
import BrokerFuzzTargets
import Foundation
import Testing

@testable import KafkaBackend
@testable import RabbitBackend
@testable import RedisStreamsBackend

/// The fuzz targets on their committed inputs: the seed corpus (`Fuzz/corpus/<target>`) and
/// every input a fuzzing run found a crash with (`Fuzz/regressions/<target>`, kept after the
/// fix). A target that crashes or breaks its invariant on one ends the test process.
/// `scripts/fuzz.sh` fuzzes from the same corpus.
@Suite("fuzz corpus and regressions")
struct FuzzCorpusTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func inputs(_ kind: String, _ target: FuzzTarget) throws -> [URL] {
        let directory = fuzzDirectory.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
        guard FileManager.default.fileExists(atPath: directory.path) else { return [] }
        return try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
            .filter { !$0.lastPathComponent.hasPrefix(".") }.sorted { $0.path < $1.path }
    }

    static func input(_ target: FuzzTarget, _ name: String) throws -> Data {
        try Data(contentsOf: fuzzDirectory.appendingPathComponent("corpus/\(target.rawValue)/\(name)"))
    }

    @Test(arguments: FuzzTarget.allCases)
    func everyCommittedInputRuns(_ target: FuzzTarget) throws {
        let seeds = try Self.inputs("corpus", target)
        #expect(seeds.count >= 4, "the seed corpus of \(target) is missing (Fuzz/make-seeds.py writes it)")
        for url in try seeds + Self.inputs("regressions", target) {
            target.run(try Data(contentsOf: url))
        }
    }

    // The seeds reach the decoders they are for (a seed rejected up front fuzzes nothing).

    @Test func amqpSeedsDecodeAsDeliveries() throws {
        let seed = try Self.input(.amqp, "brokerkit")
        let length = Int(seed[0]) << 8 | Int(seed[1])
        let decoded = seed.withUnsafeBytes {
            RabbitUntrustedInput.decode(
                properties: UnsafeRawBufferPointer(rebasing: $0[2..<(2 + length)]),
                body: Data(seed[(2 + length)...])
            )
        }
        let message = try #require(decoded.message)
        #expect(decoded.defect == nil)
        #expect(message.id == "m-1" && message.key == "user-1" && message.headers == ["source": "cli"])
        #expect(decoded.copy?.headers == message.headers && decoded.copy?.key == "user-1")
        let foreign = try Self.input(.amqp, "foreign")
        let foreignLength = Int(foreign[0]) << 8 | Int(foreign[1])
        let bad = foreign.withUnsafeBytes {
            RabbitUntrustedInput.decode(
                properties: UnsafeRawBufferPointer(rebasing: $0[2..<(2 + foreignLength)]),
                body: Data()
            )
        }
        #expect(bad.message != nil)
    }

    @Test func redisSeedsDecodeAsEntries() throws {
        let seed = try Self.input(.redis, "xreadgroup")
        let entries = try #require(seed.withUnsafeBytes { RedisUntrustedInput.decode(resp: $0) })
        // The fast path and the reply tree both read the two entries.
        let first = entries.filter { $0.entryID == "1700000000000-0" }
        #expect(first.count == 2)
        #expect(
            first.allSatisfy {
                $0.message.key == "user-1" && $0.message.headers == ["source": "cli"] && $0.defect == nil
            }
        )
        #expect(entries.contains { $0.attempt == 3 })
        let foreign = try Self.input(.redis, "foreign")
        let bad = try #require(foreign.withUnsafeBytes { RedisUntrustedInput.decode(resp: $0) })
        #expect(bad.first?.defect?.contains("attempt") == true)
        let dlq = try #require(
            try Self.input(.redis, "dlq-entry").withUnsafeBytes { RedisUntrustedInput.decode(resp: $0) }
        )
        #expect(dlq.first?.envelope?.originalDestination == "orders" && dlq.first?.envelope?.attempts == 5)
    }

    @Test func kafkaSeedsDecodeAsRecords() {
        let decoded = KafkaUntrustedInput.decode(
            key: Array("user-1".utf8),
            value: Array("p".utf8),
            headers: [
                .init(name: Array("x-brokerkit-id".utf8), value: Array("m-1".utf8)),
                .init(name: Array("source".utf8), value: nil),
            ],
            timestampMillis: 1_700_000_000_000
        )
        #expect(decoded.defect == nil)
        #expect(decoded.message.id == "m-1" && decoded.message.headers == ["source": ""])
        #expect(decoded.copy?.id == "m-1" && decoded.copy?.headers == ["source": ""])
        let bad = KafkaUntrustedInput.decode(key: [0xC3, 0x28], value: nil, headers: [], timestampMillis: -1)
        #expect(bad.defect == "the key is not valid UTF-8")
    }

    // Found by fuzzing, checked here directly too.

    /// `kafka` target (Fuzz/regressions/kafka): a record whose timestamp is past what a Date
    /// converts back to Int64 milliseconds trapped when its retry or DLQ copy was built.
    @Test func copiesOfRecordsWithAnyTimestampAreBuilt() {
        for seconds in [9.3e15, 1e300, -1e300, .infinity, -5] {
            let message = Message(
                id: "m",
                key: nil,
                payload: Data(),
                headers: [:],
                timestamp: Date(timeIntervalSince1970: seconds)
            )
            let record = OutgoingRecord(topic: "t", message: message)
            #expect(EpochMillis.range.contains(record.timestampMilliseconds))
            let fields = RedisMessageMapping.fields(for: message, firstFailureAt: message.timestamp)
            #expect(fields.count == 8)
        }
    }

    /// `amqp` target (Fuzz/regressions/amqp): a bad header name inside nested arrays was
    /// looked for 2ⁿ times for n levels. 30 levels: instant now, about 2³⁰ steps before.
    @Test(.timeLimit(.minutes(1)))
    func aBadKeyDeepInNestedArraysIsFoundInOnePass() {
        var bad = AMQPTable([AMQPTable.Entry(key: "\u{FFFD}", value: .void)])
        bad.invalidKey = "\u{FFFD}"
        var value = AMQPValue.table(bad)
        for _ in 0..<30 { value = .array([.void, value]) }
        #expect(value.invalidKey == "\u{FFFD}")
    }
}
