import ArgumentParser
import BrokerAPI

/// Output formats of `stats`.
enum StatsFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// `brokerkit stats [DEST]`: numbers for one destination or for all of them.
struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show depth, in-flight, delayed, DLQ size and per-group lag / pending.",
        discussion: "Without a destination, shows every destination the broker lists."
    )

    @OptionGroup var broker: BrokerOptions

    @Argument(help: ArgumentHelp("One queue or stream (default: all).", valueName: "destination"))
    var destination: String?

    @Option(name: .long, help: "Output format: text or json.")
    var format: StatsFormat = .text

    func run() async throws {
        let all = try await broker.withBroker { broker in
            if let destination { return [try await broker.stats(for: destination)] }
            var result: [DestinationStats] = []
            for info in try await broker.listDestinations().sorted(by: { $0.name < $1.name }) {
                result.append(try await broker.stats(for: info.name))
            }
            return result
        }
        switch format {
        case .json:
            for stats in all { Output.line(Self.json(stats).text) }
        case .text:
            if all.isEmpty {
                Output.line("no destinations")
            } else {
                Output.line(Self.table(all))
            }
        }
    }

    static func table(_ all: [DestinationStats]) -> String {
        var table = TextTable(
            header: ["NAME", "KIND", "DEPTH", "IN-FLIGHT", "DELAYED", "DLQ", "GROUP", "LAG", "PENDING", "CONSUMERS"],
            numeric: [2, 3, 4, 5, 7, 8, 9]
        )
        for stats in all {
            let first = [
                stats.name, stats.kind.rawValue, String(stats.depth), String(stats.inFlight),
                String(stats.delayed), String(stats.deadLettered),
            ]
            let groups = stats.groups.sorted { $0.group < $1.group }
            if groups.isEmpty {
                table.rows.append(first + ["-", "", "", ""])
            }
            for (i, group) in groups.enumerated() {
                let lead = i == 0 ? first : Array(repeating: "", count: first.count)
                table.rows.append(
                    lead + [group.group, String(group.lag), String(group.pending), String(group.consumers)]
                )
            }
        }
        return table.render()
    }

    static func json(_ stats: DestinationStats) -> JSON {
        .object([
            ("name", .string(stats.name)),
            ("kind", .string(stats.kind.rawValue)),
            ("depth", .int(stats.depth)),
            ("in_flight", .int(stats.inFlight)),
            ("delayed", .int(stats.delayed)),
            ("dead_lettered", .int(stats.deadLettered)),
            (
                "groups",
                .array(
                    stats.groups.sorted { $0.group < $1.group }.map { group in
                        .object([
                            ("group", .string(group.group)),
                            ("lag", .int(group.lag)),
                            ("pending", .int(group.pending)),
                            ("consumers", .int(group.consumers)),
                            ("committed", .array(group.committed.map { .string($0.description) })),
                        ])
                    }
                )
            ),
        ])
    }
}
