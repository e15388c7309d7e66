import BrokerAPI
import Foundation

/// Checks that a broker dropped without `close()` leaves nothing running: the threads it
/// started end and the sockets and pipes it opened close.
///
/// It reads `/proc/self`, so it sees the whole test process: run it with no other broker test
/// running at the same time (the project's test script runs `swift test --no-parallel`).
public enum DroppedBrokerCheck {
    /// A thread of this process: its kernel id and name.
    struct ThreadEntry: Hashable, CustomStringConvertible {
        let tid: String
        let name: String
        var description: String { "\(name) (tid \(tid))" }
    }

    /// An open socket or pipe of this process: its descriptor and what it points at
    /// (`socket:[inode]`, `pipe:[inode]`). Timer and event fds are left out: Dispatch opens
    /// those for the process as it goes.
    struct FileEntry: Hashable, CustomStringConvertible {
        let fd: String
        let target: String
        var description: String { "fd \(fd) → \(target)" }
    }

    static func threads() -> Set<ThreadEntry> {
        let tids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return Set(
            tids.compactMap { tid in
                guard let name = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8) else {
                    return nil
                }
                return ThreadEntry(tid: tid, name: name.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        )
    }

    static func files() -> Set<FileEntry> {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return Set(
            fds.compactMap { fd in
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)"),
                    target.hasPrefix("socket:") || target.hasPrefix("pipe:")
                else { return nil }
                return FileEntry(fd: fd, target: target)
            }
        )
    }

    /// What an app does with a broker before it forgets to close it: creates a queue,
    /// publishes one message and a batch of two, consumes and acks all three with a consumer
    /// it closes, deletes the queue, then consumes one more message from another queue with a
    /// consumer it forgets to close too. Returns that queue, for ``run(threadPrefixes:deadline:connect:use:)``
    /// to delete afterwards.
    public static func publishAndConsume(_ broker: any Broker) async throws -> [String] {
        let queue = "dropped-\(UUID().uuidString.prefix(8).lowercased())"
        try await broker.createQueue(queue, options: DestinationOptions(partitions: 1))
        _ = try await broker.publish(Message(text: "one"), to: queue)
        _ = try await broker.publish([Message(text: "two"), Message(text: "three")], to: queue)
        let consumer = try await broker.consumeQueue(queue)
        var texts: [String] = []
        while texts.count < 3, let delivery = try await consumer.next(timeout: .seconds(20)) {
            texts.append(delivery.message.text ?? "")
            try await delivery.ack()
        }
        await consumer.close()
        try await broker.deleteDestination(queue)
        guard texts.sorted() == ["one", "three", "two"] else {
            throw ConformanceFailure("consumed \(texts) from \(queue), expected one, two and three")
        }
        let other = queue + "-forgotten"
        try await broker.createQueue(other, options: DestinationOptions(partitions: 1))
        _ = try await broker.publish(Message(text: "four"), to: other)
        let forgotten = try await broker.consumeQueue(other)
        guard let delivery = try await forgotten.next(timeout: .seconds(20)), delivery.message.text == "four" else {
            throw ConformanceFailure("the forgotten consumer got nothing from \(other)")
        }
        try await delivery.ack()
        return [other]
    }

    /// Runs `use` on a broker from `connect` and drops it without closing it, then waits up to
    /// `deadline` for every thread whose name starts with one of `threadPrefixes`, and every
    /// socket and pipe, that appeared meanwhile to be gone. Throws a
    /// ``ConformanceFailure`` naming what is left, or when nothing appeared at all (then this
    /// check would prove nothing). The destinations `use` returns are deleted afterwards, over
    /// a new connection.
    public static func run(
        threadPrefixes: [String],
        deadline: Duration = .seconds(10),
        connect: () async throws -> any Broker,
        use: (any Broker) async throws -> [String]
    ) async throws {
        let threadsBefore = threads()
        let filesBefore = files()
        var started: Set<ThreadEntry> = []
        var opened: Set<FileEntry> = []
        var leftBehind: [String] = []
        do {
            let broker = try await connect()
            leftBehind = try await use(broker)
            started = threads().subtracting(threadsBefore).filter { entry in
                threadPrefixes.contains { entry.name.hasPrefix($0) }
            }
            opened = files().subtracting(filesBefore)
        }  // the broker is dropped here, never closed
        guard !started.isEmpty, opened.contains(where: { $0.target.hasPrefix("socket:") }) else {
            throw ConformanceFailure(
                "the broker started no thread named \(threadPrefixes) (\(started)) or opened no socket (\(opened)): nothing to check"
            )
        }
        let end = ContinuousClock.now + deadline
        while true {
            let threadsLeft = started.intersection(threads())
            let filesLeft = opened.intersection(files())
            if threadsLeft.isEmpty && filesLeft.isEmpty { break }
            if ContinuousClock.now >= end {
                throw ConformanceFailure(
                    "\(deadline) after a broker was dropped without close(), \(threadsLeft.count) of its \(started.count) threads still run (\(threadsLeft.sorted { $0.tid < $1.tid })) and \(filesLeft.count) of its \(opened.count) sockets and pipes are open (\(filesLeft.sorted { $0.fd < $1.fd }))"
                )
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let cleaner = try await connect()
        for destination in leftBehind { try await cleaner.deleteDestination(destination) }
        await cleaner.close()
    }
}
