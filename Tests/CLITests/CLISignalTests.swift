import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `brokerkit demo --example jobs --wait-for-signal` is a worker process: SIGTERM while jobs
/// run drains them and exits 0.
@Suite("brokerkit CLI signals")
struct CLISignalTests {
    @Test("SIGTERM while jobs are running: the worker drains them, reports a graceful stop and exits 0")
    func sigtermDrainsRunningJobs() async throws {
        let worker = try RunningCLI(["demo", "--example", "jobs", "--wait-for-signal", "--size", "40"])
        defer { worker.kill() }
        // 40 jobs of 250 ms, two at a time: about 5 s of work. Signal once a few have completed.
        let ready = await worker.waitForStderr(timeout: .seconds(60)) { text in
            text.components(separatedBy: "completed jobs.resize-image").count - 1 >= 3
        }
        try #require(ready, "no job completed within 60 s; stderr:\n\(worker.stderr)")
        worker.signal(SIGTERM)
        let status = try #require(await worker.waitForExit(timeout: .seconds(60)), "still running 60 s after SIGTERM")

        let result = worker.result(status: status)
        try result.expectExit(0)
        #expect(result.stderr.contains("graceful shutdown: fetching no more jobs"), "stderr:\n\(result.stderr)")
        #expect(result.stdout.contains("stopped gracefully on signal"), "stdout:\n\(result.stdout)")
        #expect(result.stdout.contains("0 cut off"), "stdout:\n\(result.stdout)")
        #expect(result.stdout.contains("0 run twice"), "stdout:\n\(result.stdout)")
        // Numbers of the report line "N done before it, R running, D drained after it, 0 cut off".
        let line = try #require(
            result.stdout.split(separator: "\n").first { $0.contains("stopped gracefully on signal") }
        )
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        try #require(numbers.count == 4, "line: \(line)")
        let (before, running, drained, cutOff) = (numbers[0], numbers[1], numbers[2], numbers[3])
        #expect(before >= 3 && before < 40, "line: \(line)")
        #expect(running >= 1, "SIGTERM came while no job was running: \(line)")
        #expect(drained == running && cutOff == 0, "line: \(line)")
        #expect(result.stdout.contains("\(40 - before - drained) job(s) not started"), "stdout:\n\(result.stdout)")
    }

    @Test("--wait-for-signal applies to the jobs example only")
    func waitForSignalNeedsJobs() async throws {
        let result = try await CLI.run(["demo", "--example", "chat", "--wait-for-signal"])
        try result.expectExit(2)
        #expect(result.stderr.contains("--wait-for-signal"), "stderr: \(result.stderr)")
    }

    @Test("demo --example jobs rejects fewer than 6 jobs")
    func jobsSizeTooSmall() async throws {
        let result = try await CLI.run(["demo", "--example", "jobs", "--size", "5"])
        try result.expectExit(2)
        #expect(result.stderr.contains("at least 6"), "stderr: \(result.stderr)")
    }
}

/// `kill(2)` (a free function: `RunningCLI.kill()` hides the name inside the class).
private func send(_ signal: Int32, to pid: pid_t) {
    _ = kill(pid, signal)
}

/// A `brokerkit` process the test talks to while it runs.
final class RunningCLI: @unchecked Sendable {
    let arguments: [String]
    private let process = Process()
    private let scratch: URL
    private let outURL: URL
    private let errURL: URL
    private let outHandle: FileHandle
    private let errHandle: FileHandle

    init(_ arguments: [String]) throws {
        self.arguments = arguments
        let fm = FileManager.default
        scratch = fm.temporaryDirectory.appendingPathComponent("brokerkit-cli-\(UUID().uuidString)")
        try fm.createDirectory(at: scratch, withIntermediateDirectories: true)
        outURL = scratch.appendingPathComponent("stdout")
        errURL = scratch.appendingPathComponent("stderr")
        _ = fm.createFile(atPath: outURL.path, contents: nil)
        _ = fm.createFile(atPath: errURL.path, contents: nil)
        outHandle = try FileHandle(forWritingTo: outURL)
        errHandle = try FileHandle(forWritingTo: errURL)
        process.executableURL = try CLI.executable()
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("BROKER_") }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = outHandle
        process.standardError = errHandle
        try process.run()
    }

    var stdout: String { String(decoding: (try? Data(contentsOf: outURL)) ?? Data(), as: UTF8.self) }
    var stderr: String { String(decoding: (try? Data(contentsOf: errURL)) ?? Data(), as: UTF8.self) }

    /// Polls stderr until `condition` holds (true) or `timeout` passes (false).
    func waitForStderr(timeout: Duration, _ condition: (String) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(stderr) { return true }
            if !process.isRunning { return condition(stderr) }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    func signal(_ signal: Int32) {
        send(signal, to: process.processIdentifier)
    }

    /// The exit status, or nil if it still runs after `timeout`.
    func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationStatus
    }

    func result(status: Int32) -> CLIResult {
        CLIResult(arguments: arguments, status: status, stdout: stdout, stderr: stderr)
    }

    /// Kills it if it still runs and removes its output files.
    func kill() {
        if process.isRunning { process.terminate() }
        try? outHandle.close()
        try? errHandle.close()
        try? FileManager.default.removeItem(at: scratch)
    }
}
