import Foundation
import Testing

@testable import BrokerAPI

@Suite("message ids")
struct MessageIDTests {
    @Test func idsAreLowercaseVersion4UUIDs() {
        for _ in 0..<1_000 {
            let id = Message.newID()
            #expect(id.count == 36)
            #expect(UUID(uuidString: id) != nil, "\(id) is no UUID")
            #expect(id == id.lowercased())
            let characters = Array(id)
            #expect([8, 13, 18, 23].allSatisfy { characters[$0] == "-" })
            #expect(characters[14] == "4", "version nibble of \(id)")
            #expect("89ab".contains(characters[19]), "variant nibble of \(id)")
        }
    }

    @Test func idsAreUniqueAcrossPoolRefillsAndThreads() async {
        // 8 tasks × 20,000 ids: many 4 KiB pool refills, drawn concurrently.
        let ids = await withTaskGroup(of: [String].self) { group in
            for _ in 0..<8 { group.addTask { (0..<20_000).map { _ in Message.newID() } } }
            var all: [String] = []
            for await chunk in group { all += chunk }
            return all
        }
        #expect(ids.count == 160_000)
        #expect(Set(ids).count == ids.count)
    }

    @Test func formattingIsTheUUIDTextOfTheBytes() {
        let id = MessageIDs.format((0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210))
        // Little-endian bytes: ef cd ab 89 67 45 23 01 | 10 32 54 76 98 ba dc fe, with the
        // version (byte 6: 0x23 → 0x43) and variant (byte 8: 0x10 → 0x90) bits set.
        #expect(id == "efcdab89-6745-4301-9032-547698badcfe")
    }

    @Test func messagesGetDistinctIDsByDefault() {
        let a = Message(payload: Data())
        let b = Message(text: "x")
        #expect(a.id != b.id)
    }
}
