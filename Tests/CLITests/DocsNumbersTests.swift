import Foundation
import Testing

/// docs/choosing-a-broker.md may cite only what `scripts/compare.sh` measured (docs/compare.md).
@Suite("docs cite measured numbers")
struct DocsNumbersTests {
    static let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs")

    /// Measured-looking figures: decimals (5.70, 0.82) and thousands (28,985); plain small
    /// integers (3 groups, 8 handlers) are settings, not measurements.
    static func figures(in text: String) -> Set<String> {
        let pattern = try! NSRegularExpression(
            pattern: #"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])\d+\.\d+(?![\w.])"#
        )
        let range = NSRange(text.startIndex..., in: text)
        return Set(
            pattern.matches(in: text, range: range).compactMap { Range($0.range, in: text).map { String(text[$0]) } }
        )
    }

    @Test("every figure in choosing-a-broker.md appears in compare.md")
    func guideCitesCompare() throws {
        let guide = try String(contentsOf: Self.docs.appendingPathComponent("choosing-a-broker.md"), encoding: .utf8)
        let compare = try String(contentsOf: Self.docs.appendingPathComponent("compare.md"), encoding: .utf8)
        let measured = Self.figures(in: compare)
        // Settings and versions the guide states, which compare.md spells differently.
        let settings: Set<String> = [
            "5,000", "10,000", "15,000", "8,000", "1,000", "0-9-1", "7.0.15", "3.10.8", "0.2.3",
        ]
        let cited = Self.figures(in: guide).subtracting(settings)
        #expect(cited.count > 30, "found only \(cited.sorted())")
        let unknown = cited.filter { !measured.contains($0) }.sorted()
        #expect(unknown.isEmpty, "choosing-a-broker.md cites figures that docs/compare.md does not contain: \(unknown)")
    }
}
