// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "BrokerKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "BrokerAPI", targets: ["BrokerAPI"]),
        .library(name: "BrokerConformance", targets: ["BrokerConformance"]),
        .library(name: "KafkaBackend", targets: ["KafkaBackend"]),
        .library(name: "RabbitBackend", targets: ["RabbitBackend"]),
        .library(name: "RedisStreamsBackend", targets: ["RedisStreamsBackend"]),
        .library(name: "Examples", targets: ["Examples"]),
        .library(name: "BrokerCompare", targets: ["BrokerCompare"]),
        .library(name: "BrokerSoak", targets: ["BrokerSoak"]),
        .executable(name: "brokerkit", targets: ["brokerkit"]),
        .executable(name: "brokerkit-fuzz", targets: ["brokerkit-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-service-context", from: "1.5.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "BrokerAPI",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        .systemLibrary(
            name: "CRdKafka",
            path: "Sources/CRdKafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        .systemLibrary(
            name: "CRabbitMQ",
            path: "Sources/CRabbitMQ",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .systemLibrary(
            name: "CHiredis",
            path: "Sources/CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "KafkaBackend",
            dependencies: [
                "BrokerAPI", "CRdKafka", .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RabbitBackend",
            dependencies: ["BrokerAPI", "CRabbitMQ", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RedisStreamsBackend",
            dependencies: ["BrokerAPI", "CHiredis", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "BrokerConformance",
            dependencies: ["BrokerAPI", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // Which test servers a run was given (scripts/brokers.sh); for this repository's tests only.
        .target(
            name: "BrokerTestSupport",
            dependencies: ["BrokerAPI", "BrokerConformance"],
            path: "Tests/BrokerTestSupport",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Examples",
            dependencies: [
                "BrokerAPI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "BrokerCompare",
            dependencies: [
                "BrokerAPI", .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "BrokerSoak",
            dependencies: ["BrokerAPI", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "brokerkit",
            dependencies: [
                "BrokerAPI", "KafkaBackend", "RabbitBackend", "RedisStreamsBackend", "Examples", "BrokerCompare",
                "BrokerSoak",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "BrokerFuzzTargets",
            dependencies: ["BrokerAPI", "KafkaBackend", "RabbitBackend", "RedisStreamsBackend"],
            swiftSettings: swiftSettings
        ),
        .target(name: "CFuzzDriver"),
        .executableTarget(
            name: "brokerkit-fuzz",
            dependencies: ["BrokerFuzzTargets", "CFuzzDriver"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "BenchmarkSupport",
            dependencies: ["BrokerAPI", "BrokerCompare"],
            path: "Benchmarks/BenchmarkSupport",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "RedisBenchmark",
            dependencies: ["BrokerAPI", "RedisStreamsBackend", "CHiredis", "BenchmarkSupport"],
            path: "Benchmarks/RedisBenchmark",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "KafkaBenchmark",
            dependencies: ["BrokerAPI", "KafkaBackend", "CRdKafka", "BenchmarkSupport"],
            path: "Benchmarks/KafkaBenchmark",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "RabbitBenchmark",
            dependencies: ["BrokerAPI", "RabbitBackend", "CRabbitMQ", "BenchmarkSupport"],
            path: "Benchmarks/RabbitBenchmark",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "BrokerAPITests",
            dependencies: [
                "BrokerTestSupport",
                "BrokerAPI", "BrokerConformance",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConformanceTests",
            dependencies: [
                "BrokerTestSupport", "BrokerAPI", "BrokerConformance",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KafkaBackendTests",
            dependencies: [
                "BrokerTestSupport", "BrokerConformance", "KafkaBackend", "BrokerAPI", "CRdKafka",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RabbitBackendTests",
            dependencies: [
                "BrokerTestSupport", "BrokerConformance", "RabbitBackend", "BrokerAPI", "CRabbitMQ",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RedisStreamsBackendTests",
            dependencies: [
                "BrokerTestSupport", "BrokerConformance", "RedisStreamsBackend", "BrokerAPI", "CHiredis",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExamplesTests",
            dependencies: [
                "BrokerTestSupport",
                "Examples", "BrokerAPI", "BrokerConformance", "RedisStreamsBackend", "KafkaBackend", "RabbitBackend",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FuzzTests",
            dependencies: [
                "BrokerTestSupport", "BrokerFuzzTargets", "BrokerAPI", "KafkaBackend", "RabbitBackend",
                "RedisStreamsBackend",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CLITests",
            dependencies: [
                "BrokerTestSupport", "brokerkit", "BrokerConformance", "BrokerSoak",
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
