import BrokerAPI
import BrokerConformance
import BrokerSoak
import BrokerTestSupport
import Foundation
import Testing

/// `brokerkit soak`, the short version `make test` runs: 5,000 messages to a queue and to a
/// stream with two groups, 200 delayed jobs, 3 worker processes, a worker killed with
/// SIGKILL, a broker restart and a network cut (real brokers), a publisher killed mid-batch.
/// The run fails (exit 1) if one confirmed message is lost, a poison message is missing from
/// the DLQ, or a delayed job ran early; the test also reads the JSON ledger itself.
enum SoakRun {
    /// `stallProbe`: the Kafka broker (host:port) to run scripts/kafka-dead-member-probe.sh
    /// against when a consumer group stalls (see `check`).
    static func run(
        _ arguments: [String],
        timeout: Duration = .seconds(600),
        stallProbe: String? = nil
    ) async throws -> SoakReport {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "brokerkit-soak-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let result = try await CLI.run(
            [
                "soak", "--messages", "5000", "--rate", "500", "--jobs", "200", "--kill", "1", "--publisher-kills", "1",
                "--format", "json", "--dir", directory,
            ]
                + arguments,
            timeout: timeout
        )
        let report = try #require(
            try? JSONDecoder().decode(SoakReport.self, from: Data(result.stdout.utf8)),
            "no JSON ledger (exit \(result.status))\nstdout:\n\(result.stdout)\nstderr (last 4,000 characters):\n\(result.stderr.suffix(4000))"
        )
        var brokerHoldsDeadMembers: String?
        if let stallProbe, isStalled(report) {
            brokerHoldsDeadMembers = try await probeDeadMemberEviction(stallProbe)
        }
        check(report, brokerHoldsDeadMembers: brokerHoldsDeadMembers)
        #expect(
            result.status == (report.passed ? 0 : 1),
            "exit \(result.status) with a ledger that \(report.passed ? "passed" : "failed")"
        )
        return report
    }

    /// Messages or jobs still on the broker when the settle time ended.
    static func isStalled(_ report: SoakReport) -> Bool {
        report.consumers.contains { $0.unfinished > 0 } || report.jobs.unfinished > 0
    }

    /// Whether a worker was killed after the last broker restart (or with no restart at all):
    /// only then can a broker that never evicts a dead member (see below) stop the groups, as
    /// noida-db forgets the dead member when it restarts.
    static func killedAfterLastRestart(_ report: SoakReport) -> Bool {
        let lastRestart = report.faults.filter { $0.kind == "restart-broker" }.map(\.atSeconds).max() ?? -1
        return report.faults.contains { $0.kind == "kill-worker" && $0.atSeconds > lastRestart }
    }

    /// Runs scripts/kafka-dead-member-probe.sh (kcat only, no BrokerKit code): the probe's
    /// output when the broker holds a rebalance for a member killed without leaving, `nil`
    /// when it evicts the member as the Kafka protocol says. A probe that cannot run fails.
    static func probeDeadMemberEviction(_ broker: String) async throws -> String? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let probe = try await CLI.run(
            [broker],
            timeout: .seconds(150),
            program: root.appendingPathComponent("scripts/kafka-dead-member-probe.sh")
        )
        #expect(
            probe.status == 0 || probe.status == 3,
            "the dead-member probe did not run (exit \(probe.status)): \(probe.stdout)\(probe.stderr)"
        )
        return probe.status == 3 ? probe.stdout : nil
    }

    /// What every backend's short run must show. A consumer group that stops making progress
    /// after the faults (messages still on the broker when the settle time ends, so poison ones
    /// not yet dead-lettered) is a failure, unless `brokerHoldsDeadMembers` says the broker
    /// itself was seen (by the probe above) keeping a rebalance waiting for a SIGKILLed member
    /// (noida-db 0.2.3 does; Apache Kafka evicts the member after session.timeout.ms) and a
    /// worker was killed after the last broker restart (docs/reliability.md, "Kafka: groups
    /// that stopped after a worker was killed"). Then the stall is recorded as a known issue. A
    /// lost message, a non-poison message in the DLQ or an early job fails the test either way.
    static func check(_ report: SoakReport, brokerHoldsDeadMembers: String? = nil) {
        let summary = SoakOutput.render(report, format: .text)
        let knownStall = isStalled(report) && brokerHoldsDeadMembers != nil && killedAfterLastRestart(report)
        if knownStall, let brokerHoldsDeadMembers {
            withKnownIssue(
                "the test broker holds a Kafka rebalance for a SIGKILLed member, so the groups stopped (issue 24): \(brokerHoldsDeadMembers)",
                isIntermittent: true
            ) {
                #expect(report.failures.isEmpty, "\(report.failures.joined(separator: "\n"))\n\(summary)")
                for consumer in report.consumers {
                    #expect(
                        consumer.unfinished == 0,
                        "\(consumer.consumer): \(consumer.unfinished) not handled in time"
                    )
                    #expect(
                        consumer.poisonMissingFromDLQ.isEmpty,
                        "\(consumer.consumer): poison messages not dead-lettered"
                    )
                    #expect(
                        consumer.deadLettered == consumer.poisonExpected,
                        "\(consumer.consumer): \(consumer.deadLettered) dead-lettered, \(consumer.poisonExpected) poison"
                    )
                }
                #expect(report.jobs.unfinished == 0 && report.jobs.ran == report.jobs.confirmed)
            }
        } else {
            #expect(report.failures.isEmpty, "\(report.failures.joined(separator: "\n"))\n\(summary)")
        }
        for consumer in report.consumers {
            #expect(consumer.lost.isEmpty, "\(consumer.consumer): lost \(consumer.lost.count)")
            #expect(consumer.unexpectedInDLQ.isEmpty, "\(consumer.consumer): messages that are not poison in the DLQ")
            if !knownStall {
                #expect(consumer.unfinished == 0, "\(consumer.consumer): \(consumer.unfinished) not handled in time")
                #expect(
                    consumer.poisonMissingFromDLQ.isEmpty,
                    "\(consumer.consumer): the DLQ is not the poison messages"
                )
                #expect(
                    consumer.deadLettered == consumer.poisonExpected,
                    "\(consumer.consumer): \(consumer.deadLettered) dead-lettered, \(consumer.poisonExpected) poison"
                )
            }
            #expect(consumer.poisonExpected > 100, "too few poison messages to prove anything")
            #expect(
                consumer.expected == 5000 || report.publishing.contains { $0.notConfirmed > 0 },
                "\(consumer.consumer): \(consumer.expected) confirmed"
            )
        }
        #expect(report.jobs.early.isEmpty, "delayed jobs ran early: \(report.jobs.early)")
        #expect(report.jobs.lost.isEmpty, "delayed jobs lost: \(report.jobs.lost)")
        #expect(report.jobs.confirmed == 200)
        if !knownStall {
            #expect(
                report.jobs.unfinished == 0 && report.jobs.ran == report.jobs.confirmed,
                "delayed jobs that never ran: \(report.jobs.unfinished)"
            )
        }
    }
}

@Suite("brokerkit soak")
struct SoakTests {
    /// memory:// runs publishers and workers as tasks of one process: a kill cancels a worker.
    @Test func memoryLosesNothing() async throws {
        let report = try await SoakRun.run([
            "--broker", "memory://", "--restarts", "0", "--cuts", "0", "--settle", "60",
        ])
        #expect(report.faults.map(\.kind).sorted() == ["kill-publisher", "kill-worker"])
    }

    @Test func badOptionsExitTwoNamingThem() async throws {
        for (arguments, named) in [
            (["--messages", "0"], "--messages"), (["--poison", "120"], "--poison"),
            (["--poison", "60", "--flaky", "50"], "--flaky"),
            (["--cut-seconds", "0"], "--cut-seconds"),
            (["--broker", "redis://127.0.0.1:1", "--restarts", "1"], "--restart-command"),
            (["--proxy-upstream", "nowhere"], "--proxy-upstream"), (["--format", "yaml"], "--format"),
        ] {
            let result = try await CLI.run(["soak"] + arguments)
            #expect(result.status == 2, "soak \(arguments) exited \(result.status)")
            #expect(
                result.stderr.contains(named),
                "soak \(arguments): the error does not name \(named): \(result.stderr)"
            )
        }
        let help = try await CLI.run(["soak", "--help"])
        for option in [
            "--messages", "--keys", "--workers", "--poison", "--flaky", "--kill", "--restarts", "--restart-command",
            "--cuts", "--format", "--svg",
        ] {
            #expect(help.stdout.contains(option), "--help does not explain \(option)")
        }
    }

    /// A publisher killed while it dispatched the delayed jobs: its replacement sends the jobs
    /// the ledger does not show as confirmed again, due when the first incarnation had them
    /// due. (It used to count their delays from its own start, so a copy the first one had
    /// sent ran "early" against the ledger: RabbitMQ's soak failed that way with a network cut
    /// stalling the dispatch until the publisher kill.)
    @Test func aReplacementPublisherKeepsTheJobsDueTimes() async throws {
        let broker = try await Brokers.connect(url: "memory://soak-jobs-\(UUID().uuidString.prefix(8))")
        let plan = SoakPlan(runID: "jobs", messages: 4, keys: 2, publishers: 1, jobs: 6, rate: 4)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("soak-jobs-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func run(_ name: String, previous: [SoakEvent]) async throws -> [SoakEvent] {
            let path = directory.appendingPathComponent(name).path
            try await SoakPublisher.run(
                broker: broker,
                plan: plan,
                index: 0,
                ledger: try SoakLedgerWriter(path: path),
                previous: previous
            )
            return SoakLedgerReader().readNew(from: [path])
        }
        func dues(_ events: [SoakEvent]) -> [String: String] {
            Dictionary(events.filter { $0.name == "jobok" }.map { ($0.fields[0], $0.fields[1]) }) { a, _ in a }
        }
        let first = try await run("first", previous: [])
        #expect(first.filter { $0.name == "jobsbase" }.count == 1)
        #expect(dues(first).count == 6)
        // Killed before it recorded jobs 3, 4 and 5 as confirmed (they may be on the broker).
        let survived = first.filter { $0.name != "jobok" || !["3", "4", "5"].contains($0.fields[0]) }
        try await Task.sleep(for: .milliseconds(50))
        let second = try await run("second", previous: survived)
        #expect(dues(second).keys.sorted() == ["3", "4", "5"])
        for (seq, due) in dues(second) { #expect(due == dues(first)[seq], "job \(seq)") }
        await broker.close()
    }

    /// The ledger's arithmetic on a hand-made run: a confirmed message nobody handled is lost
    /// unless the broker still holds as many; a poison message must be in the DLQ.
    @Test func theLedgerCallsAnUnhandledConfirmedMessageLost() {
        let plan = SoakPlan(runID: "t", messages: 40, keys: 4, workers: 1, jobs: 1, rate: 40)
        let poison = (0..<40).filter { plan.kind(of: $0) == .poison }
        let normal = (0..<40).filter { plan.kind(of: $0) != .poison }
        var events: [SoakEvent] = []
        func event(_ name: String, _ fields: [String], _ micros: Int64 = 1_000_000) {
            events.append(SoakEvent(micros: micros, name: name, fields: fields, source: "x"))
        }
        let all = (0..<40).map(String.init).joined(separator: ",")
        for destination in ["queue", "stream"] {
            event("try", [destination, all])
            event("ok", [destination, all])
        }
        event("jobok", ["0", "1500"])
        event("job", ["0", "1500", "1"], 2_000_000)
        // Every consumer handles every normal message, except the queue, which misses one.
        let missed = normal[3]
        for consumer in SoakPlan.consumers {
            for seq in normal where !(consumer == "queue" && seq == missed) {
                event("run", [consumer, String(seq), "1", "ok"])
            }
        }
        let letters = SoakPlan.consumers.flatMap { consumer in
            poison.map { SoakDeadLetter(consumer: consumer, seq: $0, reason: "poison message \($0)") }
        }
        let report = SoakAnalysis.report(
            backend: "test",
            url: "test://",
            plan: plan,
            events: events,
            deadLetters: letters,
            resources: SoakResources(),
            orderEnforced: true,
            began: 0,
            ended: 3_000_000
        )
        #expect(report.consumers.first { $0.consumer == "queue" }?.lost == [missed])
        #expect(report.consumers.filter { $0.consumer != "queue" }.allSatisfy { $0.lost.isEmpty })
        #expect(!report.passed)
        // The broker still holding one message for the queue: not proven lost, not finished.
        let held = SoakAnalysis.report(
            backend: "test",
            url: "test://",
            plan: plan,
            events: events,
            deadLetters: letters,
            resources: SoakResources(),
            orderEnforced: true,
            began: 0,
            ended: 3_000_000,
            backlog: ["queue": 1]
        )
        #expect(held.consumers.first { $0.consumer == "queue" }?.unfinished == 1)
        #expect(held.consumers.first { $0.consumer == "queue" }?.lost.isEmpty == true)
        #expect(!held.passed)
        // A poison message missing from the DLQ, and a job that ran early.
        var early = events
        early.append(SoakEvent(micros: 1_000_000, name: "job", fields: ["0", "1500", "2"], source: "x"))
        let partial = SoakAnalysis.report(
            backend: "test",
            url: "test://",
            plan: plan,
            events: early + [
                SoakEvent(micros: 1, name: "run", fields: ["queue", String(missed), "1", "ok"], source: "x")
            ],
            deadLetters: Array(letters.dropFirst()),
            resources: SoakResources(),
            orderEnforced: true,
            began: 0,
            ended: 3_000_000
        )
        #expect(partial.consumers.first { $0.consumer == "queue" }?.poisonMissingFromDLQ == [poison[0]])
        #expect(partial.jobs.early == [0])
        // The poison message missing from the DLQ was not handled either: it is lost too.
        #expect(partial.consumers.first { $0.consumer == "queue" }?.lost == [poison[0]])
        #expect(partial.failures.count == 3, "\(partial.failures)")
        #expect(
            partial.failures.contains { $0.contains("missing from the DLQ") }
                && partial.failures.contains { $0.contains("ran before they were due") }
        )
    }
}

/// The short soak on each real broker, with a restart: the serial restart pass only.
@Suite("brokerkit soak, real brokers (restart pass)", .serialized)
struct SoakRestartTests {
    @Test(.enabled(if: TestEnvironment.shouldRunRestartTests(.redis)))
    func redisLosesNothing() async throws {
        let url = try TestEnvironment.requireURL(.redis)
        let restart = try #require(
            ProcessInfo.processInfo.environment["BROKERKIT_TEST_REDIS_RESTART"],
            "BROKERKIT_TEST_REDIS_RESTART is not set"
        )
        let report = try await SoakRun.run([
            "--broker", url, "--option", "stream.lease=5s", "--restarts", "1", "--restart-command", restart, "--cuts",
            "1", "--settle", "180",
        ])
        #expect(report.faults.map(\.kind).sorted() == ["cut", "kill-publisher", "kill-worker", "restart-broker"])
    }

    @Test(.enabled(if: TestEnvironment.shouldRunRestartTests(.amqp)))
    func rabbitMQLosesNothing() async throws {
        let url = try TestEnvironment.requireURL(.amqp)
        let restart = try #require(
            ProcessInfo.processInfo.environment["BROKERKIT_TEST_AMQP_RESTART"],
            "BROKERKIT_TEST_AMQP_RESTART is not set"
        )
        let report = try await SoakRun.run([
            "--broker", url, "--restarts", "1", "--restart-command", restart, "--cuts", "1", "--settle", "180",
        ])
        #expect(report.faults.map(\.kind).sorted() == ["cut", "kill-publisher", "kill-worker", "restart-broker"])
        #expect(
            report.consumers.filter { $0.consumer != "queue" }.allSatisfy {
                $0.orderEnforced && $0.orderViolations == 0
            }
        )
    }

    /// The probe the Kafka soak runs when its groups stall, run on its own: noida-db 0.2.3
    /// (the test broker) keeps a rebalance waiting for a member killed without leaving,
    /// past session.timeout.ms, where Apache Kafka removes the member. If this starts to fail
    /// because the broker now evicts such members, the known-issue allowance in
    /// `SoakRun.check` no longer applies and a stalled Kafka soak fails outright.
    @Test(.enabled(if: TestEnvironment.shouldRunRestartTests(.kafka)))
    func theKafkaTestBrokerHoldsARebalanceForAKilledMember() async throws {
        let main = try #require(URLComponents(string: try TestEnvironment.requireURL(.kafka)))
        let verdict = try await SoakRun.probeDeadMemberEviction("\(main.host ?? "127.0.0.1"):\(main.port ?? 9092)")
        #expect(
            verdict?.hasPrefix("holds:") == true,
            "the probe found the broker evicting a killed member: drop the allowance in SoakRun.check"
        )
    }

    /// Kafka runs against the noida-db instance that advertises the proxy's port (see
    /// scripts/brokers.sh), so every connection goes through the cut.
    @Test(.enabled(if: TestEnvironment.shouldRunRestartTests(.kafka)))
    func kafkaLosesNothing() async throws {
        let environment = ProcessInfo.processInfo.environment
        let url = try #require(
            environment["BROKERKIT_TEST_KAFKA_SOAK_URL"],
            "BROKERKIT_TEST_KAFKA_SOAK_URL is not set (scripts/brokers.sh start)"
        )
        let socket = try #require(environment["BROKERKIT_TEST_KAFKA_SOAK_SOCKET"])
        let restart = try #require(environment["BROKERKIT_TEST_KAFKA_SOAK_RESTART"])
        let port = try #require(URLComponents(string: url)?.port)
        // The probe runs against the test set-up's other noida-db (same build, outside the
        // soak's namespace): the soak's own instance is reachable only through the soak's proxy.
        let main = try #require(URLComponents(string: try TestEnvironment.requireURL(.kafka)))
        let probe = "\(main.host ?? "127.0.0.1"):\(main.port ?? 9092)"
        // Seed 20 schedules the faults as kill-worker, restart-broker, cut, kill-publisher: the
        // restart that follows the kill clears the dead member noida-db would otherwise keep, so
        // the run checks a killed worker's records end to end. A stall then fails the test.
        let report = try await SoakRun.run(
            [
                "--broker", url, "--proxy-listen", String(port), "--proxy-upstream", "unix:\(socket)", "--restarts",
                "1", "--restart-command", restart,
                "--cuts", "1", "--settle", "180", "--seed", "20",
            ],
            stallProbe: probe
        )
        #expect(
            report.faults.sorted { $0.atSeconds < $1.atSeconds }.map(\.kind).prefix(2) == [
                "kill-worker", "restart-broker",
            ],
            "seed 20 no longer puts the worker kill before the broker restart: \(report.faults.map(\.kind))"
        )
        #expect(report.faults.map(\.kind).sorted() == ["cut", "kill-publisher", "kill-worker", "restart-broker"])
        #expect(
            report.consumers.filter { $0.consumer != "queue" }.allSatisfy {
                $0.orderEnforced && $0.orderViolations == 0
            }
        )
    }
}
