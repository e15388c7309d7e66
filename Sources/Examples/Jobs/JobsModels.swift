@_spi(BrokerBackend) import BrokerAPI
import Foundation

/// A job of the jobs example: every one carries a key of its own, so the example can tell
/// which logical job ran, how often, and on which worker.
protocol ExampleJob: Job {
    /// Unique within a run (`invoice-3`, `image-4`, ...).
    var jobKey: String { get }
}

/// E-mails an invoice: must never go out twice, so it is dispatched with an idempotency key.
struct SendInvoice: ExampleJob {
    static let name = "jobs.send-invoice"
    var jobKey: String
    var customer: String
    var amountCents: Int
}

/// Renders a thumbnail. Idempotent by nature (the same file is overwritten), so these are
/// dispatched in one batch without idempotency keys.
struct ResizeImage: ExampleJob {
    static let name = "jobs.resize-image"
    var jobKey: String
    var path: String
    var width: Int
    /// How long the rendering takes.
    var renderMilliseconds: Int
}

/// Calls a partner's webhook, which answers `503` to the first `failures` attempts: fails
/// transiently, succeeds after retries.
struct DeliverWebhook: ExampleJob {
    static let name = "jobs.deliver-webhook"
    var jobKey: String
    var url: String
    var failures: Int
}

/// A reminder dispatched with `dispatch(after:)`; `dueAt` is taken just before the dispatch,
/// so it is never later than the time the queue holds the job until.
struct SendReminder: ExampleJob {
    static let name = "jobs.send-reminder"
    var jobKey: String
    var customer: String
    var dueAt: Date
    /// The delay it was dispatched with.
    var delayMilliseconds: Int
    /// How long sending takes (long enough to still be running when the second worker is
    /// asked to stop).
    var sendMilliseconds: Int
}

/// Charges a card the payment provider always declines: the poison job, dead-lettered once
/// its attempts are used up.
struct ChargeCard: ExampleJob {
    static let name = "jobs.charge-card"
    var jobKey: String
    var card: String
    var amountCents: Int
}

/// A transient failure: the partner endpoint is briefly unavailable.
struct WebhookUnavailable: Error, CustomStringConvertible {
    let url: String
    let attempt: Int
    var description: String { "HTTP 503 from \(url) (attempt \(attempt)): service unavailable" }
}

/// A permanent failure that the worker still retries (the provider's answer looks transient).
struct CardDeclined: Error, CustomStringConvertible {
    let card: String
    var description: String { "card \(card) declined by the payment provider: do_not_honor" }
}

/// The jobs of one run, in dispatch order per kind.
struct JobsPlan: Sendable {
    var invoices: [SendInvoice] = []
    var images: [ResizeImage] = []
    var webhooks: [DeliverWebhook] = []
    var reminders: [SendReminder] = []  // `dueAt` is set when dispatched
    var poison: ChargeCard

    /// Delays of the reminders, cycled.
    static let reminderDelays: [Duration] = [.milliseconds(1000), .milliseconds(1500), .milliseconds(2000)]
    /// Failures of the two webhooks before they succeed.
    static let webhookFailures = [1, 2]
    /// The smallest run: one of each kind, plus one invoice.
    static let minimumJobs = 6

    /// Distinct jobs.
    var count: Int { invoices.count + images.count + webhooks.count + reminders.count + 1 }

    /// `jobs` distinct jobs: one poison charge, two flaky webhooks, a tenth (at least one)
    /// delayed reminders, the rest invoices and images taking turns (invoices first).
    static func make(jobs: Int) -> JobsPlan {
        var plan = JobsPlan(poison: ChargeCard(jobKey: "charge-1", card: "4000-0000-0000-0002", amountCents: 4_200))
        let reminders = max(1, jobs / 10)
        let regular = jobs - 1 - webhookFailures.count - reminders
        for index in 0..<regular {
            if index % 2 == 0 {
                let number = plan.invoices.count + 1
                plan.invoices.append(
                    SendInvoice(
                        jobKey: "invoice-\(number)",
                        customer: customers[index % customers.count],
                        amountCents: 1_000 + 250 * number
                    )
                )
            } else {
                let number = plan.images.count + 1
                plan.images.append(
                    ResizeImage(
                        jobKey: "image-\(number)",
                        path: "uploads/photo-\(number).jpg",
                        width: [320, 640, 1280][number % 3],
                        renderMilliseconds: 5
                    )
                )
            }
        }
        for (index, failures) in webhookFailures.enumerated() {
            plan.webhooks.append(
                DeliverWebhook(
                    jobKey: "webhook-\(index + 1)",
                    url: "https://partner-\(index + 1).example/hooks/order",
                    failures: failures
                )
            )
        }
        for index in 0..<reminders {
            plan.reminders.append(
                SendReminder(
                    jobKey: "reminder-\(index + 1)",
                    customer: customers[index % customers.count],
                    dueAt: Date(),
                    delayMilliseconds: 0,
                    sendMilliseconds: 150
                )
            )
        }
        return plan
    }

    static let customers = ["acme", "globex", "initech", "umbrella", "hooli"]
}

/// When a delayed job first started, against when it was due.
public struct DelayedJobTiming: Sendable, Hashable, CustomStringConvertible {
    /// The job's key (`reminder-1`, ...).
    public let jobKey: String
    /// The delay it was dispatched with.
    public let delay: Duration
    /// Its first attempt started this long after it was due (negative: early).
    public let lateness: Duration

    public var description: String {
        "\(jobKey) (delay \(ExampleSupport.seconds(delay))): started \(Self.milliseconds(lateness)) after it was due"
    }

    /// `duration` in whole milliseconds, e.g. `12 ms`.
    static func milliseconds(_ duration: Duration) -> String {
        "\(Int((duration.timeInterval * 1000).rounded())) ms"
    }
}

/// What the workers of one run observed.
struct JobsCounts {
    /// Handler runs (attempts) per job key.
    var attemptsByKey: [String: Int] = [:]
    /// Successful runs per job key (more than one would be a job run twice).
    var completedByKey: [String: Int] = [:]
    /// Successful runs per job name.
    var completedByName: [String: Int] = [:]
    /// Handler runs per worker (`first`, `second`, `signal`).
    var runsByWorker: [String: Int] = [:]
    /// Jobs running now.
    var running = 0
    var peakRunning = 0
    /// Reminders running now.
    var remindersRunning = 0
    /// Failed attempts that will be retried.
    var retried = 0
    /// Job ids dead-lettered (from the worker's hook).
    var deadLetteredIDs: [String] = []
    /// Duplicates dropped by idempotency key, per worker.
    var duplicatesByWorker: [String: Int] = [:]
    /// First start of each delayed job.
    var delayedTimings: [String: DelayedJobTiming] = [:]
    /// How often the dead-letter monitor polled, and the entries it saw.
    var monitorPolls = 0
    var monitorSawDeadLetters: [DeadLetteredJob] = []
    /// Set when the second worker was asked to stop.
    var runningAtShutdown = 0
    var remindersRunningAtShutdown = 0
    /// Set when a signal (graceful shutdown) stopped the worker of `runWorkerUntilSignal`.
    var signalled = false
    var completedAtSignal = 0

    var completed: Int { completedByKey.count }
    var runTwice: [String] { completedByKey.filter { $0.value > 1 }.map(\.key).sorted() }
}

typealias JobsState = ExampleTally<JobsCounts>
