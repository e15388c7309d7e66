import Foundation

/// Output formats of `brokerkit soak`.
public enum SoakFormat: String, Sendable, CaseIterable {
    case text, markdown, json
}

/// The ledger as a table (text or markdown), as JSON, and as an SVG timeline.
public enum SoakOutput {
    public static func render(_ report: SoakReport, format: SoakFormat) -> String {
        switch format {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            return String(decoding: (try? encoder.encode(report)) ?? Data(), as: UTF8.self) + "\n"
        case .markdown: return table(report, markdown: true)
        case .text: return table(report, markdown: false)
        }
    }

    static func rows(_ report: SoakReport) -> [(String, String)] {
        var rows: [(String, String)] = []
        let plan = report.plan
        rows.append(("backend", "\(report.backend) (\(report.url))"))
        rows.append(
            (
                "load",
                "\(plan.messages) messages to a queue and to a stream (2 groups), \(plan.keys) keys, \(plan.publishers) publishers at \(plan.rate) msg/s, "
                    + "\(plan.workers) workers × \(plan.concurrency) handlers, \(fmt(plan.poisonPercent)) % poison, \(fmt(plan.flakyPercent)) % fail twice, \(plan.jobs) delayed jobs"
            )
        )
        rows.append(
            (
                "faults",
                report.faults.isEmpty
                    ? "none" : report.faults.map { "\($0.kind) at \(fmt($0.atSeconds)) s" }.joined(separator: ", ")
            )
        )
        for p in report.publishing {
            rows.append(
                (
                    "published to \(p.destination)",
                    "\(p.confirmed) confirmed; \(p.notConfirmed) not confirmed (\(p.notConfirmedArrived) of them arrived anyway, \(p.notConfirmed - p.notConfirmedArrived) did not)"
                )
            )
        }
        for c in report.consumers {
            rows.append(
                (
                    "handled: \(c.consumer)",
                    "\(c.handledOnce) once, \(c.handledMoreThanOnce) more than once (at most \(c.maxHandledCount)×) of \(c.expected) confirmed"
                )
            )
            rows.append(
                (
                    "dead-lettered: \(c.consumer)",
                    "\(c.deadLettered) (poison confirmed: \(c.poisonExpected); missing \(c.poisonMissingFromDLQ.count); not poison \(c.unexpectedInDLQ.count); "
                        + "extra copies \(c.deadLetterCopies); reason not naming the error \(c.wrongReason))"
                )
            )
            rows.append(
                (
                    "**lost**: \(c.consumer)",
                    "**\(c.lost.count)**"
                        + (c.unfinished > 0
                            ? " (\(c.unfinished) not handled within the settle time; the broker still holds \(c.brokerBacklog))"
                            : "")
                )
            )
            if c.consumer != "queue" {
                rows.append(
                    (
                        "order violations: \(c.consumer)",
                        "\(c.orderViolations)\(c.orderEnforced ? "" : " (not claimed across a group's members on this backend)")"
                    )
                )
            }
        }
        let j = report.jobs
        rows.append(
            (
                "delayed jobs",
                "\(j.confirmed) confirmed, \(j.ran) ran (\(j.ranMoreThanOnce) more than once), **\(j.early.count) early**, \(j.lost.count) lost, \(j.unfinished) not run within the settle time; "
                    + "lateness median \(j.medianLatenessMillis) ms, max \(j.maxLatenessMillis) ms"
            )
        )
        for f in report.faults {
            let recovery =
                f.recoverySeconds.map { "\(fmt($0)) s to half the pre-fault rate" }
                ?? "no load around it to measure recovery"
            rows.append(("fault at \(fmt(f.atSeconds)) s", "\(f.detail); \(recovery)"))
        }
        rows.append(
            (
                "throughput (handled/s)",
                "\(Int(report.throughputBefore.rounded())) before the first fault, \(Int(report.throughputDuring.rounded())) from the first fault to the last one's end"
            )
        )
        rows.append(
            (
                "client resources",
                "CPU \(fmt(report.clientCPUSeconds)) s (\(fmt(report.cpuMicrosPerHandled)) µs per handled message), peak worker RSS \(fmt(report.peakWorkerRSSMiB)) MiB"
            )
        )
        rows.append(
            (
                "worker exits (not killed)",
                report.workerExits.isEmpty
                    ? "none" : report.workerExits.joined(separator: "; ") + "; each started again"
            )
        )
        rows.append(("duration", "\(fmt(report.durationSeconds)) s"))
        rows.append(("result", report.passed ? "PASS" : "FAIL: " + report.failures.joined(separator: "; ")))
        return rows
    }

    static func table(_ report: SoakReport, markdown: Bool) -> String {
        let rows = rows(report)
        if markdown {
            var out = "| measure | value |\n|---|---|\n"
            for (name, value) in rows { out += "| \(name) | \(value.replacingOccurrences(of: "|", with: "\\|")) |\n" }
            return out
        }
        let width = rows.map { $0.0.replacingOccurrences(of: "**", with: "").count }.max() ?? 0
        var out = ""
        for (name, value) in rows {
            let plainName = name.replacingOccurrences(of: "**", with: "")
            out +=
                plainName.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                + value.replacingOccurrences(of: "**", with: "") + "\n"
        }
        return out
    }

    /// Handled messages per second over the run, faults marked as shaded bands.
    public static func svg(_ report: SoakReport) -> String {
        let width = 760.0
        let height = 260.0
        let left = 56.0
        let right = 16.0
        let top = 28.0
        let bottom = 40.0
        let series = report.timeline
        let seconds = Double(max(1, series.count))
        let peak = Double(max(1, series.max() ?? 1))
        func x(_ t: Double) -> Double { left + (width - left - right) * t / seconds }
        func y(_ v: Double) -> Double { top + (height - top - bottom) * (1 - v / peak) }
        var out = [
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"11\">",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
            "<text x=\"\(left)\" y=\"16\" font-size=\"13\">\(escape("brokerkit soak on \(report.backend): handled messages per second, faults shaded")) — \(report.passed ? "PASS" : "FAIL")</text>",
        ]
        let colors = [
            "kill-worker": "#f4a261", "kill-publisher": "#e9c46a", "restart-broker": "#e76f51", "cut": "#8ab17d",
        ]
        for f in report.faults {
            let x0 = x(f.atSeconds)
            let x1 = max(x0 + 2, x(f.endSeconds))
            out.append(
                "<rect x=\"\(fmt(x0))\" y=\"\(top)\" width=\"\(fmt(x1 - x0))\" height=\"\(fmt(height - top - bottom))\" fill=\"\(colors[f.kind] ?? "#ccc")\" opacity=\"0.5\"/>"
            )
            out.append("<text x=\"\(fmt(x0 + 2))\" y=\"\(fmt(top + 12))\" font-size=\"9\">\(escape(f.kind))</text>")
        }
        var path = ""
        for (i, v) in series.enumerated() {
            path += "\(i == 0 ? "M" : "L")\(fmt(x(Double(i) + 0.5))),\(fmt(y(Double(v)))) "
        }
        out.append("<path d=\"\(path)\" fill=\"none\" stroke=\"#264653\" stroke-width=\"1.5\"/>")
        out.append(
            "<line x1=\"\(left)\" y1=\"\(height - bottom)\" x2=\"\(width - right)\" y2=\"\(height - bottom)\" stroke=\"black\"/>"
        )
        out.append("<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(height - bottom)\" stroke=\"black\"/>")
        out.append("<text x=\"\(left - 4)\" y=\"\(fmt(top + 4))\" text-anchor=\"end\">\(Int(peak))</text>")
        out.append("<text x=\"\(left - 4)\" y=\"\(fmt(height - bottom))\" text-anchor=\"end\">0</text>")
        out.append(
            "<text x=\"\(fmt(width - right))\" y=\"\(fmt(height - bottom + 16))\" text-anchor=\"end\">\(Int(seconds)) s</text>"
        )
        out.append("<text x=\"\(left)\" y=\"\(fmt(height - bottom + 16))\">0 s</text>")
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }

    static func fmt(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e9 ? String(Int(v)) : String(format: "%.1f", v)
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }
}
