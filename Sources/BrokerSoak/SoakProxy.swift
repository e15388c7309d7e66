import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A loopback TCP proxy between the soak's processes and the broker, so that the harness can
/// cut the network: ``cut(for:)`` resets every open connection and, for the cut's length,
/// closes each new one as soon as it is accepted (the client sees a connection reset, as when
/// a link drops). Plain threads and blocking sockets: a proxy that carries a few dozen
/// connections needs no event loop.
public final class SoakProxy: Sendable {
    /// Where the broker is: a TCP address, or a Unix socket (a broker in its own network
    /// namespace, see `scripts/brokers.sh`).
    public enum Upstream: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public let port: Int
    let upstream: Upstream
    private let listener: Int32
    private struct State {
        var open: Set<Int32> = []
        var cutUntil: ContinuousClock.Instant?
        var stopped = false
        var connections = 0
    }
    private let state = Mutex(State())

    /// Listens on 127.0.0.1:`port` (0: any free port).
    public init(listenPort: Int = 0, upstream: Upstream) throws {
        self.upstream = upstream
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SoakError("proxy: socket failed") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(listenPort).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 128) == 0 else {
            close(fd)
            throw SoakError("proxy: cannot listen on 127.0.0.1:\(listenPort): \(String(cString: strerror(errno)))")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: actual.sin_port))
        listener = fd
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "soak-proxy"
        thread.start()
    }

    /// Connections accepted so far.
    public var connections: Int { state.withLock { $0.connections } }

    /// Drops every connection now and refuses new ones for `duration`.
    public func cut(for duration: Duration) {
        let open = state.withLock { s -> Set<Int32> in
            s.cutUntil = ContinuousClock.now + duration
            return s.open
        }
        for fd in open { Self.reset(fd) }
    }

    public func stop() {
        let open = state.withLock { s -> Set<Int32> in
            s.stopped = true
            return s.open
        }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// A reset, not an orderly close: SO_LINGER 0, then shutdown (the pump threads close).
    private static func reset(_ fd: Int32) {
        var off = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, socklen_t(MemoryLayout<linger>.size))
        shutdown(fd, Int32(SHUT_RDWR))
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return  // stopped
            }
            let (cut, stopped) = state.withLock { s -> (Bool, Bool) in
                let cut = s.cutUntil.map { ContinuousClock.now < $0 } ?? false
                return (cut, s.stopped)
            }
            if stopped || cut {
                Self.reset(client)
                close(client)
                if stopped { return }
                continue
            }
            guard let server = connectUpstream() else {
                Self.reset(client)
                close(client)
                continue
            }
            var one: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            state.withLock { s in
                s.open.insert(client)
                s.open.insert(server)
                s.connections += 1
            }
            let finished = PumpCount()
            for (from, to) in [(client, server), (server, client)] {
                let thread = Thread { [self] in
                    pump(from: from, to: to)
                    // The first pump to end takes the other direction down; the last closes both.
                    shutdown(to, Int32(SHUT_RDWR))
                    shutdown(from, Int32(SHUT_RDWR))
                    if finished.count.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue == 2 {
                        state.withLock { s in
                            s.open.remove(client)
                            s.open.remove(server)
                        }
                        close(client)
                        close(server)
                    }
                }
                thread.stackSize = 256 * 1024
                thread.start()
            }
        }
    }

    private func connectUpstream() -> Int32? {
        switch upstream {
        case .tcp(let host, let port):
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return nil }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr(host == "localhost" ? "127.0.0.1" : host)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if connected != 0 {
                close(fd)
                return nil
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            return fd
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return nil }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                close(fd)
                return nil
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if connected != 0 {
                close(fd)
                return nil
            }
            return fd
        }
    }

    private func pump(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { return }
            var offset = 0
            while offset < count {
                let sent = buffer.withUnsafeBytes {
                    send(to, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL))
                }
                if sent < 0, errno == EINTR { continue }
                if sent <= 0 { return }
                offset += sent
            }
        }
    }
}

/// How many of a connection's two pump threads have ended.
private final class PumpCount: Sendable {
    let count = Atomic<Int>(0)
}
