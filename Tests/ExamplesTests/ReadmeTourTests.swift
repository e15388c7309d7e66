import Foundation
import Testing

/// README.md's tour is ReadmeTour.swift, all of it: compiled with the imports it shows, run on
/// memory:// here, and compared with the README's copy.
@Suite("README tour")
struct ReadmeTourTests {
    @Test func theTourRunsOnMemory() async throws {
        try await tour(url: "memory://tour-\(UUID().uuidString.prefix(6))")
    }

    @Test func theReadmeShowsTheTourAsCompiled() throws {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        let root = here.deletingLastPathComponent().deletingLastPathComponent()
        let tour = try String(contentsOf: here.appendingPathComponent("ReadmeTour.swift"), encoding: .utf8)
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        #expect(
            readme.contains("```swift\n" + tour + "```"),
            "README.md's tour differs from Tests/ExamplesTests/ReadmeTour.swift"
        )
    }
}
