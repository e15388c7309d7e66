@_spi(BrokerBackend) import BrokerAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The threads BrokerKit runs C clients on must not let a write to a dropped connection kill
/// the app. hiredis writes with plain `write(2)`: on a socket the peer reset, that raises
/// SIGPIPE, whose default action ends the process (found by `brokerkit soak`: both publisher
/// processes died without a word when its proxy cut the network).
@Suite("Signal safety")
struct SignalSafetyTests {
    @Test func aWriteToAClosedSocketOnAConnectionThreadFailsWithEPIPE() async throws {
        let thread = ConnectionThread(name: "sigpipe-test")
        defer { thread.shutdown() }
        let error = try await thread.run { () -> Int32 in
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { return -1 }
            close(fds[1])
            let byte: [UInt8] = [1]
            let written = write(fds[0], byte, 1)  // as hiredis writes: no MSG_NOSIGNAL
            let code = written < 0 ? errno : 0
            close(fds[0])
            return code
        }
        #expect(error == EPIPE)
    }

    @Test func aWriteToAClosedSocketOnADedicatedThreadFailsWithEPIPE() async throws {
        let error = await DedicatedThread.run(name: "sigpipe-test") { () -> Int32 in
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { return -1 }
            close(fds[1])
            let byte: [UInt8] = [1]
            let written = write(fds[0], byte, 1)
            let code = written < 0 ? errno : 0
            close(fds[0])
            return code
        }
        #expect(error == EPIPE)
    }
}
