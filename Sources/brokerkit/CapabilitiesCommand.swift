import ArgumentParser
import BrokerAPI
import KafkaBackend
import RabbitBackend
import RedisStreamsBackend

/// Output formats of `capabilities`.
enum MatrixFormat: String, ExpressibleByArgument, CaseIterable {
    case text, markdown, json
}

/// `brokerkit capabilities`: the capability matrix of every registered backend.
struct CapabilitiesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capabilities",
        abstract: "Print which capabilities every registered backend supports.",
        discussion: """
            Rows are capability flags, columns are registered backends; below the matrix, the \
            C client library each backend links, with its version. With an explicit --broker or --option, the configuration is validated first.
            """
    )

    @OptionGroup var broker: BrokerOptions

    @Option(name: .long, help: "Output format: text, markdown or json.")
    var format: MatrixFormat = .text

    /// A backend module linked into the binary.
    struct LinkedModule {
        let backend: String
        let scheme: String
        let library: String
        let version: String
    }

    static var linkedModules: [LinkedModule] {
        [
            LinkedModule(
                backend: "kafka",
                scheme: "kafka",
                library: "librdkafka",
                version: KafkaBackend.libraryVersion
            ),
            LinkedModule(backend: "amqp", scheme: "amqp", library: "rabbitmq-c", version: RabbitBackend.libraryVersion),
            LinkedModule(
                backend: "redis",
                scheme: "redis",
                library: "hiredis",
                version: RedisStreamsBackend.libraryVersion
            ),
        ]
    }

    func run() async throws {
        if broker.isExplicit { _ = try await broker.configuration() }
        let registry = BrokerRegistry.shared
        let backends = registry.all
        let modules = Self.linkedModules
        let flags = BrokerCapabilities.named
        func cell(_ backend: any BrokerBackend, _ flag: BrokerCapabilities) -> String {
            backend.capabilities.contains(flag) ? "yes" : "no"
        }
        func note(_ module: LinkedModule) -> String {
            let state =
                registry.backend(for: module.scheme) == nil ? "not registered" : "registered for \(module.scheme)://"
            return "\(module.backend): \(module.library) \(module.version) linked, \(state)"
        }

        switch format {
        case .text:
            var table = TextTable(header: ["CAPABILITY"] + backends.map(\.name))
            table.rows = flags.map { entry in [entry.name] + backends.map { cell($0, entry.flag) } }
            Output.line(table.render())
            Output.line("")
            for module in modules { Output.line(note(module)) }
        case .markdown:
            Output.line("| capability | " + backends.map(\.name).joined(separator: " | ") + " |")
            Output.line("|---|" + backends.map { _ in "---|" }.joined())
            for entry in flags {
                Output.line(
                    "| \(entry.name) | " + backends.map { cell($0, entry.flag) }.joined(separator: " | ") + " |"
                )
            }
            Output.line("")
            for module in modules { Output.line("- " + note(module)) }
        case .json:
            let json = JSON.object([
                ("capabilities", .array(flags.map { .string($0.name) })),
                (
                    "backends",
                    .array(
                        backends.map { backend in
                            .object([
                                ("name", .string(backend.name)),
                                ("schemes", .array(backend.schemes.sorted().map(JSON.string))),
                                (
                                    "capabilities",
                                    .object(flags.map { ($0.name, .bool(backend.capabilities.contains($0.flag))) })
                                ),
                            ])
                        }
                    )
                ),
                (
                    "libraries",
                    .array(
                        modules.map { module in
                            .object([
                                ("backend", .string(module.backend)),
                                ("library", .string(module.library)),
                                ("version", .string(module.version)),
                                ("registered", .bool(registry.backend(for: module.scheme) != nil)),
                            ])
                        }
                    )
                ),
            ])
            Output.line(json.text)
        }
    }
}
