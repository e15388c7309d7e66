import Foundation

/// Starts the OS threads that backends run blocking C calls on.
///
/// Foundation's `Thread.name` does not reach the kernel on Linux: a thread started from the
/// cooperative pool kept the pool's name (`…root.default-qos`), so `top -H`, `perf` and
/// `/proc/<pid>/task/*/comm` could not tell a broker's threads apart. Threads started here
/// set their kernel name first (Linux keeps its first 15 bytes).
@_spi(BrokerBackend) public enum DedicatedThread {
    /// Runs `body` on a new thread named `name`, with `stackSize` bytes of stack when given
    /// (a C decoder that recurses once per nesting level of its input needs more than the
    /// default).
    public static func start(name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        // Named from inside the thread only. A name also set before `start()` never reached the
        // kernel, and sometimes kept the inside one from reaching it (a RabbitMQ publisher thread
        // kept the pool's name, so the dropped-broker test did not see it).
        let thread = Thread {
            setKernelName(name)
            blockSIGPIPE()
            body()
        }
        if let stackSize { thread.stackSize = stackSize }
        thread.start()
    }

    /// Runs `body` on a new thread named `name` and returns what it returns: one blocking call
    /// (creating or destroying a C client's handle, a raw client's run) kept off the
    /// cooperative pool.
    public static func run<T: Sendable>(name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            start(name: name) { continuation.resume(with: Result { try body() }) }
        }
    }

    /// ``run(name:_:)`` for a body that cannot fail.
    public static func run<T: Sendable>(name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            start(name: name) { continuation.resume(returning: body()) }
        }
    }

    /// Blocks SIGPIPE on the calling thread. hiredis writes to its socket with plain
    /// `write(2)`: on a connection the peer reset, that raises SIGPIPE for the writing thread,
    /// and its default action ends the whole process (an app's publisher died without a word
    /// when `brokerkit soak` cut the network). Blocked, the signal stays pending on this thread
    /// only and the write fails with EPIPE, which the client handles as a dropped connection.
    /// The app's own signal disposition is left alone.
    static func blockSIGPIPE() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Names the calling thread for the kernel too (Linux keeps the first 15 bytes; Foundation
    /// passes the name on only when it is set on the running thread).
    static func setKernelName(_ name: String) {
        var bytes = 0
        var cut = ""
        for character in name {
            let size = character.utf8.count
            if bytes + size > 15 { break }
            bytes += size
            cut.append(character)
        }
        Thread.current.name = cut
    }
}
