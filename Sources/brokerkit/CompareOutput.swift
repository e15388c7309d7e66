@_spi(BrokerBackend) import BrokerAPI
import BrokerCompare
import Foundation

/// Renders a ``CompareReport`` as text, Markdown, JSON or CSV.
enum CompareOutput {
    static let columns = [
        "scenario", "backend", "messages", "msg/s", "p50 ms", "p99 ms", "max ms", "CPU s", "CPU µs/msg", "observed",
    ]

    static func render(_ report: CompareReport, format: CompareFormat, scenarios: [CompareScenario]) throws -> String {
        let rows = orderedResults(report, scenarios: scenarios)
        switch format {
        case .text:
            var table = TextTable(header: columns.map { $0.uppercased().replacingOccurrences(of: "Μ", with: "µ") })
            table.numeric = Set(2...8)
            table.rows = rows.map(cells)
            return ([headline(report), "", table.render(), ""] + footnotes(report, scenarios: scenarios)).joined(
                separator: "\n"
            )
        case .markdown:
            return markdown(report, rows: rows, scenarios: scenarios)
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.dateEncodingStrategy = .iso8601
            encoder.nonConformingFloatEncodingStrategy = .convertToString(
                positiveInfinity: "inf",
                negativeInfinity: "-inf",
                nan: "nan"
            )
            return String(decoding: try encoder.encode(report), as: UTF8.self)
        case .csv:
            let header = [
                "scenario", "backend", "status", "messages", "seconds", "throughput_per_s", "latency_kind",
                "p50_ms", "p99_ms", "max_ms", "cpu_s", "ready_s", "observed",
            ]
            let lines = rows.map { r -> String in
                [
                    r.scenario.rawValue, r.backend, r.status.rawValue, String(r.messages), number(r.seconds, 3),
                    number(r.throughput, 1), r.latencyKind, r.latencyP50Ms.map { number($0, 3) } ?? "",
                    r.latencyP99Ms.map { number($0, 3) } ?? "", r.latencyMaxMs.map { number($0, 3) } ?? "",
                    number(r.cpuSeconds, 3), r.readySeconds.map { number($0, 3) } ?? "", r.observedSummary,
                ]
                .map(csvField).joined(separator: ",")
            }
            return ([header.joined(separator: ",")] + lines).joined(separator: "\n")
        }
    }

    /// Results grouped by scenario, backends in the order they ran.
    static func orderedResults(_ report: CompareReport, scenarios: [CompareScenario]) -> [ScenarioResult] {
        scenarios.flatMap { scenario in report.results.filter { $0.scenario == scenario } }
    }

    static func cells(_ r: ScenarioResult) -> [String] {
        let ok = r.status == .ok
        return [
            r.scenario.rawValue, r.backend, ok ? CompareText.grouped(r.messages) : "-",
            ok ? CompareText.grouped(Int(r.throughput.rounded())) : "-",
            milliseconds(r.latencyP50Ms), milliseconds(r.latencyP99Ms), milliseconds(r.latencyMaxMs),
            ok ? number(r.cpuSeconds, 2) : "-", r.cpuMicrosPerMessage.map { ok ? number($0, 0) : "-" } ?? "-",
            r.observedSummary,
        ]
    }

    static func headline(_ report: CompareReport) -> String {
        let ran = report.backends.filter { $0.skipped == nil }.map(\.name)
        let s = report.settings
        return "brokerkit compare: \(ran.joined(separator: ", ")); \(s.messages) messages of \(s.payloadBytes) bytes; "
            + "\(ISO8601.format(report.startedAt)); \(report.machine)"
    }

    static func footnotes(_ report: CompareReport, scenarios: [CompareScenario]) -> [String] {
        var lines = [
            "Latency: end-to-end (publish call to handler) except replay (time until the first replayed message) and delayed-jobs (lateness: run time minus due time)."
        ]
        lines.append(
            "CPU: user + system time of this whole process (client library threads included) during the timed part."
        )
        for scenario in scenarios { lines.append("\(scenario.rawValue): \(scenario.summary(report.settings))") }
        for backend in report.backends {
            if let skipped = backend.skipped {
                lines.append("skipped \(backend.url): \(skipped)")
            } else {
                lines.append("\(backend.name): \(backend.url) (\(backend.client))")
            }
        }
        return lines
    }

    static func markdown(_ report: CompareReport, rows: [ScenarioResult], scenarios: [CompareScenario]) -> String {
        var out: [String] = []
        out.append(
            "Run \(ISO8601.format(report.startedAt)) on \(report.machine); \(report.settings.messages) messages of \(report.settings.payloadBytes) bytes per scenario."
        )
        out.append("")
        out.append("| " + columns.joined(separator: " | ") + " |")
        out.append("|---|---|" + String(repeating: "---:|", count: 7) + "---|")
        for r in rows {
            out.append(
                "| " + cells(r).map { $0.replacingOccurrences(of: "|", with: "\\|") }.joined(separator: " | ") + " |"
            )
        }
        out.append("")
        out.append("Semantics observed (native DLQ and native delay are the backend's capability flags):")
        out.append("")
        out.append(
            "| backend | order kept per key | replay from a position | new group sees old messages | native DLQ | native delay | idle CPU |"
        )
        out.append("|---|---|---|---|---|---|---:|")
        for backend in report.backends where backend.skipped == nil {
            let mine = report.results.filter { $0.backend == backend.name && $0.status == .ok }
            func find<T>(_ path: KeyPath<ObservedSemantics, T?>) -> T? {
                mine.lazy.compactMap { $0.observed[keyPath: path] }.first
            }
            func yesNo(_ value: Bool?) -> String { value.map { $0 ? "yes" : "no" } ?? "not run" }
            let replay: String =
                switch (find(\.replayByPosition), find(\.replayExact)) {
                case (true?, true?): "yes"
                case (false?, true?): "no (by timestamp: exact)"
                case (_, false?): "no (not exact)"
                default: "not run"
                }
            let native = mine.first?.observed
            let idle = find(\.idleCPUPercent).map { String(format: "%.1f %%", $0) } ?? "not run"
            out.append(
                "| \(backend.name) | \(yesNo(find(\.orderKeptPerKey))) | \(replay) | \(yesNo(find(\.newGroupSeesOld))) | "
                    + "\(native.map { $0.nativeDLQ ? "yes" : "no" } ?? "-") | \(native.map { $0.nativeDelay ? "yes" : "no" } ?? "-") | \(idle) |"
            )
        }
        out.append("")
        out += footnotes(report, scenarios: scenarios).map { "- " + $0 }
        return out.joined(separator: "\n")
    }

    static func milliseconds(_ value: Double?) -> String {
        guard let value else { return "-" }
        if value < 10 { return number(value, 2) }
        if value < 1000 { return number(value, 1) }
        return CompareText.grouped(Int(value.rounded()))
    }

    static func number(_ value: Double, _ decimals: Int) -> String {
        String(format: "%.\(decimals)f", value)
    }

    static func csvField(_ text: String) -> String {
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

/// A bar chart of a ``CompareReport``: throughput and p99 latency per scenario and backend,
/// both on log scales, as a standalone SVG.
enum CompareChart {
    static let colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"]

    static func svg(_ report: CompareReport, scenarios: [CompareScenario]) -> String {
        let backends = report.backends.filter { $0.skipped == nil }.map(\.name)
        let width = 960.0
        let panelHeight = 250.0
        var out = [
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(panelHeight * 2 + 150))\" font-family=\"sans-serif\" font-size=\"11\">",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
            "<text x=\"20\" y=\"24\" font-size=\"15\" font-weight=\"bold\">brokerkit compare: \(escape(report.machine)), \(report.settings.messages) messages of \(report.settings.payloadBytes) B</text>",
        ]
        for (i, backend) in backends.enumerated() {
            let x = 20 + Double(i) * 120
            out.append("<rect x=\"\(x)\" y=\"36\" width=\"12\" height=\"12\" fill=\"\(colors[i % colors.count])\"/>")
            out.append("<text x=\"\(x + 16)\" y=\"46\">\(escape(backend))</text>")
        }
        func value(_ scenario: CompareScenario, _ backend: String, _ pick: (ScenarioResult) -> Double?) -> Double? {
            guard let r = report.results.first(where: { $0.scenario == scenario && $0.backend == backend }),
                r.status == .ok
            else { return nil }
            return pick(r)
        }
        out += panel(
            title: "Throughput, msg/s (log scale; higher is better)",
            top: 70,
            height: panelHeight,
            width: width,
            scenarios: scenarios,
            backends: backends
        ) { value($0, $1) { $0.throughput } }
        out += panel(
            title: "p99 latency, ms (log scale; lower is better; replay: first message; delayed-jobs: lateness)",
            top: 70 + panelHeight + 60,
            height: panelHeight,
            width: width,
            scenarios: scenarios,
            backends: backends
        ) { value($0, $1) { $0.latencyP99Ms } }
        out.append("</svg>")
        return out.joined(separator: "\n")
    }

    static func panel(
        title: String,
        top: Double,
        height: Double,
        width: Double,
        scenarios: [CompareScenario],
        backends: [String],
        value: (CompareScenario, String) -> Double?
    ) -> [String] {
        let left = 70.0
        let right = width - 20
        let plotTop = top + 20
        let plotBottom = top + height - 30
        let values = scenarios.flatMap { s in backends.compactMap { value(s, $0) } }.filter { $0 > 0 }
        let low = floor(log10(values.min() ?? 1))
        let high = max(ceil(log10(values.max() ?? 10)), low + 1)
        func y(_ v: Double) -> Double {
            let clamped = max(v, pow(10, low))
            return plotBottom - (log10(clamped) - low) / (high - low) * (plotBottom - plotTop)
        }
        var out = ["<text x=\"\(left)\" y=\"\(top + 8)\" font-weight=\"bold\">\(escape(title))</text>"]
        for decade in Int(low)...Int(high) {
            let v = pow(10, Double(decade))
            let yy = y(v)
            out.append("<line x1=\"\(left)\" y1=\"\(fmt(yy))\" x2=\"\(right)\" y2=\"\(fmt(yy))\" stroke=\"#ddd\"/>")
            out.append("<text x=\"\(left - 6)\" y=\"\(fmt(yy + 4))\" text-anchor=\"end\">\(escape(label(v)))</text>")
        }
        let groupWidth = (right - left) / Double(max(1, scenarios.count))
        let barWidth = min(28, (groupWidth - 20) / Double(max(1, backends.count)))
        for (si, scenario) in scenarios.enumerated() {
            let groupLeft = left + Double(si) * groupWidth + (groupWidth - barWidth * Double(backends.count)) / 2
            for (bi, backend) in backends.enumerated() {
                let x = groupLeft + Double(bi) * barWidth
                guard let v = value(scenario, backend), v > 0 else {
                    out.append(
                        "<text x=\"\(fmt(x + barWidth / 2))\" y=\"\(fmt(plotBottom - 4))\" text-anchor=\"middle\" fill=\"#999\">n/a</text>"
                    )
                    continue
                }
                let yy = y(v)
                out.append(
                    "<rect x=\"\(fmt(x + 1))\" y=\"\(fmt(yy))\" width=\"\(fmt(barWidth - 2))\" height=\"\(fmt(plotBottom - yy))\" fill=\"\(colors[bi % colors.count])\"><title>\(escape("\(backend) \(scenario.rawValue): \(label(v))"))</title></rect>"
                )
                out.append(
                    "<text x=\"\(fmt(x + barWidth / 2))\" y=\"\(fmt(yy - 3))\" text-anchor=\"middle\" font-size=\"8\">\(escape(label(v)))</text>"
                )
            }
            out.append(
                "<text x=\"\(fmt(left + Double(si) * groupWidth + groupWidth / 2))\" y=\"\(fmt(plotBottom + 16))\" text-anchor=\"middle\">\(scenario.rawValue)</text>"
            )
        }
        out.append(
            "<line x1=\"\(left)\" y1=\"\(fmt(plotBottom))\" x2=\"\(right)\" y2=\"\(fmt(plotBottom))\" stroke=\"#333\"/>"
        )
        return out
    }

    static func label(_ v: Double) -> String {
        if v >= 10_000 { return String(format: "%.0fk", v / 1000) }
        if v >= 100 { return String(format: "%.0f", v) }
        if v >= 1 { return String(format: "%.1f", v) }
        return String(format: "%.2g", v)
    }

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
