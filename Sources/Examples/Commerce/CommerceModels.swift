import BrokerAPI
import Foundation
import Synchronization

/// One line of an order.
struct OrderLine: Codable, Sendable {
    var sku: String
    var quantity: Int
    var unitPriceCents: Int
}

/// The order-import job: fetch an order from the shop and write it into the ERP.
struct ImportOrder: Job {
    static let name = "commerce.import-order"
    var runID: String
    var orderID: String
    var customer: String
    var lines: [OrderLine]

    var totalCents: Int { lines.reduce(0) { $0 + $1.quantity * $1.unitPriceCents } }
}

/// A structured log event on `commerce.logs`.
struct LogEvent: Codable, Sendable {
    var runID: String
    var id: String
    /// `Logger.Level` raw value: `info`, `warning`, `error`, ...
    var level: String
    var module: String
    var message: String
    var orderID: String?
    var timestamp: Date
}

/// An order confirmation on `commerce.notifications`.
struct OrderConfirmation: Codable, Sendable {
    var runID: String
    var orderID: String
    var customer: String
    var channel: String
    var totalCents: Int
}

/// The demo's orders: deterministic, so a run's numbers are known in advance.
enum CommercePlan {
    static let customers = ["acme-gmbh", "globex", "initech", "umbrella", "stark-industries", "wayne-enterprises"]
    static let skus = ["SKU-BOLT", "SKU-NUT", "SKU-GEAR", "SKU-BELT", "SKU-PUMP"]

    /// Orders `1...count`. Order `i` has `i % 5 + 1` lines (more than 3 lines is a "large order").
    static func orders(runID: String, count: Int) -> [ImportOrder] {
        (1...max(1, count)).map { index in
            ImportOrder(
                runID: runID,
                orderID: String(format: "order-%04d", index),
                customer: customers[index % customers.count],
                lines: (0..<(index % 5 + 1)).map { line in
                    OrderLine(
                        sku: skus[(index + line) % skus.count],
                        quantity: line + 1,
                        unitPriceCents: 250 * (line + 1)
                    )
                }
            )
        }
    }

    /// Orders whose first import attempt times out at the ERP (every tenth, starting with 3).
    static func erpTimesOutOnce(_ orderIndex: Int) -> Bool { orderIndex % 10 == 3 }

    /// An order with more lines than this logs a warning.
    static let largeOrderLines = 3
}

/// The ERP the worker imports into: slow-ish, and it times out once on some orders.
struct FakeERP: Sendable {
    let flakyOrders: Set<String>

    struct Timeout: Error, CustomStringConvertible {
        let orderID: String
        let attempt: Int
        var description: String { "ERP timed out importing \(orderID) (attempt \(attempt))" }
    }

    func importOrder(_ order: ImportOrder, attempt: Int) async throws {
        try await Task.sleep(for: .milliseconds(10))
        if attempt == 1 && flakyOrders.contains(order.orderID) {
            throw Timeout(orderID: order.orderID, attempt: attempt)
        }
    }
}

/// What the commerce modules observed during one run (only this run's messages count).
struct CommerceCounts {
    // Worker-queue module.
    var orderJobIDs: Set<String> = []
    var imported: Set<String> = []
    var importRetries = 0
    var importsDeadLettered = 0
    var duplicatesDropped = 0
    var runningImports = 0
    var peakImports = 0
    // Logs module.
    var logsPublished = 0
    var logsConsumed: Set<String> = []
    var logsByLevel: [String: Int] = [:]
    // Notifications module.
    var notificationsPublished = 0
    var notified: Set<String> = []
    var poisonDeadLettered = 0
}

typealias CommerceState = ExampleTally<CommerceCounts>
