import Foundation
import Testing

/// End-to-end tests of the `brokerkit` executable, run as a subprocess.
@Suite("brokerkit CLI")
struct CLITests {
    // MARK: capabilities

    @Test("capabilities lists memory with yes for queues")
    func capabilitiesMatrix() async throws {
        let result = try await CLI.run(["capabilities"])
        try result.expectExit(0)
        let lines = result.stdout.split(separator: "\n").map(String.init)
        let header = try #require(lines.first, "no output")
        #expect(header.split(separator: " ").contains("memory"), "header: \(header)")
        let queues = try #require(lines.first { $0.hasPrefix("queues ") }, "no 'queues' row in:\n\(result.stdout)")
        #expect(queues.split(separator: " ").last == "yes", "queues row: \(queues)")
        // Every backend is a column, and its C library is listed with its version.
        for backend in ["kafka", "amqp", "redis"] {
            #expect(
                header.split(separator: " ").contains(Substring(backend)),
                "\(backend) is not a column:\n\(result.stdout)"
            )
            #expect(
                lines.contains { $0.hasPrefix("\(backend): ") && $0.contains("linked, registered") },
                "no library line for \(backend):\n\(result.stdout)"
            )
        }
    }

    @Test("capabilities --format json is valid JSON")
    func capabilitiesJSON() async throws {
        let result = try await CLI.run(["capabilities", "--format", "json"])
        try result.expectExit(0)
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        )
        let backends = try #require(object["backends"] as? [[String: Any]])
        let memory = try #require(backends.first { $0["name"] as? String == "memory" })
        let capabilities = try #require(memory["capabilities"] as? [String: Bool])
        #expect(capabilities["queues"] == true)
        #expect(capabilities["cross-process"] == false)
    }

    @Test("capabilities --format markdown prints a table")
    func capabilitiesMarkdown() async throws {
        let result = try await CLI.run(["capabilities", "--format", "markdown"])
        try result.expectExit(0)
        #expect(result.stdout.contains("| queues | "))
        #expect(result.stdout.contains("|---|"))
    }

    // MARK: publish / consume on memory://

    @Test("publish to memory prints a receipt as JSON")
    func publishPrintsReceipt() async throws {
        let result = try await CLI.run([
            "publish", "--broker", "memory://", "--to", "orders", "--payload", "hello", "--key", "k1",
        ])
        try result.expectExit(0)
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.count == 1, "stdout: \(result.stdout)")
        let receipt = try CLI.jsonObject(String(try #require(lines.first)))
        #expect(receipt["destination"] as? String == "orders")
        #expect((receipt["id"] as? String)?.isEmpty == false)
        #expect(receipt["position"] is String, "position: \(String(describing: receipt["position"]))")
    }

    @Test("publish --count prints one receipt per numbered copy")
    func publishBatch() async throws {
        let result = try await CLI.run(["publish", "--to", "batch", "--payload", "n={n}", "--count", "3"])
        try result.expectExit(0)
        let receipts = try result.stdout.split(separator: "\n").map { try CLI.jsonObject(String($0)) }
        #expect(receipts.count == 3)
        #expect(Set(receipts.compactMap { $0["id"] as? String }).count == 3)
    }

    @Test("consume on an empty memory queue exits 0 without output")
    func consumeEmptyQueue() async throws {
        let started = ContinuousClock.now
        let result = try await CLI.run(["consume", "--from", "empty", "--count", "1", "--timeout", "1"])
        try result.expectExit(0)
        #expect(result.stdout.isEmpty, "stdout: \(result.stdout)")
        #expect(ContinuousClock.now - started < .seconds(30))
    }

    // MARK: broker errors exit 1

    @Test("a malformed broker URL exits 1 naming the URL problem")
    func badURL() async throws {
        let result = try await CLI.run(["publish", "--broker", "nope", "--to", "q", "--payload", "x"])
        try result.expectExit(1)
        #expect(result.stderr.hasPrefix("error: "), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("invalid broker URL"), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("'nope'"), "stderr: \(result.stderr)")
    }

    @Test("an unregistered scheme exits 1 and never prints the password")
    func unknownSchemeRedacted() async throws {
        let result = try await CLI.run([
            "publish", "--broker", "amqp://u:secret@h", "--option", "connect.timeout=1s", "--to", "q", "--payload", "x",
        ])
        try result.expectExit(1)
        #expect(result.stderr.hasPrefix("error: "), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("amqp"), "stderr: \(result.stderr)")
        #expect(
            !result.stdout.contains("secret") && !result.stderr.contains("secret"),
            "password leaked:\n\(result.stdout)\n\(result.stderr)"
        )
    }

    @Test("BROKER_URL is used when --broker is not given, and redacted too")
    func brokerURLFromEnvironment() async throws {
        let result = try await CLI.run(["stats"], environment: ["BROKER_URL": "amqp://u:hunter2@h"])
        try result.expectExit(1)
        #expect(result.stderr.contains("amqp"), "stderr: \(result.stderr)")
        #expect(!result.stderr.contains("hunter2") && !result.stdout.contains("hunter2"))
    }

    @Test("an unknown backend option exits 1 naming the key")
    func unknownOption() async throws {
        let result = try await CLI.run(["publish", "--option", "foo=bar", "--to", "q", "--payload", "x"])
        try result.expectExit(1)
        #expect(result.stderr.contains("'foo'"), "stderr: \(result.stderr)")
    }

    // MARK: usage errors exit 2

    @Test("a missing required --to exits 2 with usage")
    func missingTo() async throws {
        let result = try await CLI.run(["publish", "--payload", "x"])
        try result.expectExit(2)
        #expect(result.stderr.contains("--to"), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("Usage:"), "stderr: \(result.stderr)")
    }

    @Test(
        "bad arguments exit 2",
        arguments: [
            ["publish", "--to", "q", "--bogus"],
            ["publish", "--to", "q", "--count", "0"],
            ["publish", "--to", "q", "--header", "no-equals-sign"],
            ["publish", "--to", "q", "--option", "no-equals-sign"],
            ["publish", "--to", "q", "--payload", "x", "--file", "/dev/null"],
            ["consume", "--from", "q", "--count", "0"],
            ["consume", "--from", "q", "--timeout", "0"],
            ["consume", "--from", "q", "--stream", "--start", "nonsense:"],
            ["consume", "--from", "q", "--group", "g"],
            ["capabilities", "--format", "yaml"],
            ["dlq", "list", "q", "--limit", "0"],
            ["nosuchcommand"],
        ]
    )
    func usageErrors(_ arguments: [String]) async throws {
        let result = try await CLI.run(arguments)
        try result.expectExit(2)
        #expect(result.stderr.contains("Error:"), "stderr: \(result.stderr)")
    }

    // MARK: help

    @Test("root --help explains that memory:// is per process")
    func rootHelp() async throws {
        let result = try await CLI.run(["--help"])
        try result.expectExit(0)
        let help = result.stdout.replacingOccurrences(of: "\n", with: " ")
        #expect(help.contains("memory://"))
        #expect(help.contains("one process"), "help: \(result.stdout)")
        for command in ["publish", "consume", "stats", "dlq", "capabilities", "demo"] {
            #expect(help.contains(command), "help lacks \(command)")
        }
    }

    // MARK: demo

    @Test("demo runs an example on memory:// and prints its report", arguments: ["chat", "commerce", "jobs"])
    func demo(_ example: String) async throws {
        let result = try await CLI.run(["demo", "--example", example], timeout: .seconds(120))
        try result.expectExit(0)
        #expect(
            !result.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
            "no report; stderr: \(result.stderr)"
        )
    }
}

// MARK: - Running the binary

/// The result of one `brokerkit` run.
struct CLIResult {
    let arguments: [String]
    let status: Int32
    let stdout: String
    let stderr: String

    func expectExit(_ expected: Int32, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try #require(
            status == expected,
            "brokerkit \(arguments.joined(separator: " ")) exited \(status), expected \(expected)\nstdout:\n\(stdout)\nstderr:\n\(stderr)",
            sourceLocation: sourceLocation
        )
    }
}

enum CLI {
    struct NotFound: Error, CustomStringConvertible {
        let searched: [String]
        var description: String {
            "brokerkit executable not found (build it with `swift build --product brokerkit`, or set BROKERKIT_BINARY). Searched:\n"
                + searched.joined(separator: "\n")
        }
    }

    /// Finds the built `brokerkit`: `BROKERKIT_BINARY`, next to the test bundle (walking up to
    /// the products directory), or `.build/<config>/brokerkit` in the package.
    static func executable() throws -> URL {
        let fm = FileManager.default
        var candidates: [URL] = []
        if let override = ProcessInfo.processInfo.environment["BROKERKIT_BINARY"], !override.isEmpty {
            candidates.append(URL(fileURLWithPath: override))
        }
        var starts = [Bundle.main.bundleURL, Bundle.main.executableURL, URL(fileURLWithPath: CommandLine.arguments[0])]
            .compactMap { $0 }
        starts += Bundle.allBundles.map(\.bundleURL)
        for start in starts {
            var dir = start.standardizedFileURL
            for _ in 0..<5 {
                candidates.append(dir.appendingPathComponent("brokerkit"))
                dir = dir.deletingLastPathComponent()
            }
        }
        // Tests/CLITests/CLITests.swift -> package root.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let build = root.appendingPathComponent(".build")
        candidates.append(build.appendingPathComponent("debug/brokerkit"))
        if let triples = try? fm.contentsOfDirectory(atPath: build.path) {
            for triple in triples.sorted() {
                candidates.append(build.appendingPathComponent(triple).appendingPathComponent("debug/brokerkit"))
            }
        }
        candidates.append(build.appendingPathComponent("release/brokerkit"))
        for candidate in candidates {
            var isDirectory: ObjCBool = false
            if fm.fileExists(atPath: candidate.path, isDirectory: &isDirectory), !isDirectory.boolValue,
                fm.isExecutableFile(atPath: candidate.path)
            {
                return candidate
            }
        }
        var seen = Set<String>()
        throw NotFound(searched: candidates.map(\.path).filter { seen.insert($0).inserted })
    }

    /// Runs `brokerkit arguments` (or another `program`) with `BROKER_URL` unset (unless given
    /// in `environment`); kills it after `timeout`.
    static func run(
        _ arguments: [String],
        environment: [String: String] = [:],
        timeout: Duration = .seconds(60),
        program: URL? = nil
    ) async throws -> CLIResult {
        let executable = try program ?? executable()
        let fm = FileManager.default
        let scratch = fm.temporaryDirectory.appendingPathComponent("brokerkit-cli-\(UUID().uuidString)")
        try fm.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: scratch) }
        let outURL = scratch.appendingPathComponent("stdout")
        let errURL = scratch.appendingPathComponent("stderr")
        _ = fm.createFile(atPath: outURL.path, contents: nil)
        _ = fm.createFile(atPath: errURL.path, contents: nil)
        let outHandle = try FileHandle(forWritingTo: outURL)
        let errHandle = try FileHandle(forWritingTo: errURL)

        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("BROKER_") }
        for (key, value) in environment { env[key] = value }

        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = env
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = outHandle
        process.standardError = errHandle
        let box = ProcessBox(process)
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            box.terminateIfRunning()
        }
        defer { watchdog.cancel() }

        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { finished in continuation.resume(returning: finished.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
            }
        }
        try? outHandle.close()
        try? errHandle.close()
        let stdout = String(decoding: (try? Data(contentsOf: outURL)) ?? Data(), as: UTF8.self)
        let stderr = String(decoding: (try? Data(contentsOf: errURL)) ?? Data(), as: UTF8.self)
        return CLIResult(arguments: arguments, status: status, stdout: stdout, stderr: stderr)
    }

    static func jsonObject(_ line: String) throws -> [String: Any] {
        try #require(
            try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
            "not a JSON object: \(line)"
        )
    }
}

/// Lets the timeout task stop the process.
final class ProcessBox: @unchecked Sendable {
    private let process: Process
    init(_ process: Process) { self.process = process }
    func terminateIfRunning() {
        if process.isRunning { process.terminate() }
    }
}
