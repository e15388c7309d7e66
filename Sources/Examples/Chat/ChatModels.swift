import BrokerAPI
import Foundation
import Synchronization

/// A user of the demo chat.
struct ChatUser: Sendable, Hashable {
    let name: String
    let email: String
    /// Online users get a push; offline users get one "unread messages" e-mail per conversation.
    let online: Bool
    /// The fake mail server answers "try again later" to this many attempts before accepting.
    let flakyAttempts: Int

    init(_ name: String, email: String? = nil, online: Bool, flakyAttempts: Int = 0) {
        self.name = name
        self.email = email ?? "\(name)@chat.example"
        self.online = online
        self.flakyAttempts = flakyAttempts
    }
}

/// The demo's fixed cast: four two-person conversations.
enum ChatDirectory {
    struct Conversation: Sendable {
        let id: String
        let participants: (ChatUser, ChatUser)
    }

    static let conversations: [Conversation] = [
        // ghost's mailbox does not exist: its e-mail fails every attempt and is dead-lettered.
        Conversation(
            id: "conv-1",
            participants: (
                ChatUser("alice", online: true), ChatUser("ghost", email: "bounce@chat.example", online: false)
            )
        ),
        // carol's mail server greylists: the first attempt fails, the retry succeeds.
        Conversation(
            id: "conv-2",
            participants: (
                ChatUser("bob", online: true), ChatUser("carol", online: false, flakyAttempts: 1)
            )
        ),
        // erin's mail server is overloaded: two attempts fail, the third succeeds.
        Conversation(
            id: "conv-3",
            participants: (
                ChatUser("dave", online: true), ChatUser("erin", online: false, flakyAttempts: 2)
            )
        ),
        Conversation(
            id: "conv-4",
            participants: (
                ChatUser("frank", online: true), ChatUser("grace", online: true)
            )
        ),
    ]

    static let users: [String: ChatUser] = {
        var users: [String: ChatUser] = [:]
        for conversation in conversations {
            users[conversation.participants.0.name] = conversation.participants.0
            users[conversation.participants.1.name] = conversation.participants.1
        }
        return users
    }()

    static let lines = [
        "hey!", "are we still on for tomorrow?", "sure, 10am works", "I'll bring the slides",
        "can you review my PR?", "done, left two comments", "thanks!", "lunch?", "on my way",
        "see you there",
    ]

    /// The `count` events of one run, round-robin over the conversations; within a
    /// conversation participants take turns, the first participant starting.
    static func plan(runID: String, count: Int) -> [MessageSent] {
        (0..<count).map { index in
            let conversation = conversations[index % conversations.count]
            let seq = index / conversations.count + 1
            let (first, second) = conversation.participants
            let (sender, recipient) = seq % 2 == 1 ? (first, second) : (second, first)
            return MessageSent(
                runID: runID,
                eventID: "\(runID)-\(index + 1)",
                conversationID: conversation.id,
                seq: seq,
                sender: sender.name,
                recipient: recipient.name,
                text: lines[index % lines.count],
                sentAt: Date()
            )
        }
    }
}

/// The `message.sent` event on the stream, keyed by conversation id.
struct MessageSent: Codable, Sendable {
    var runID: String
    var eventID: String
    var conversationID: String
    /// 1-based position of the message in its conversation.
    var seq: Int
    var sender: String
    var recipient: String
    var text: String
    var sentAt: Date
}

/// A task on the notifications queue: tell `recipient` about a new message.
struct NotificationTask: Codable, Sendable {
    var runID: String
    var eventID: String
    var conversationID: String
    var sender: String
    var recipient: String
    var preview: String
}

/// The e-mail job: "you have unread messages in <conversation>".
struct SendEmail: Job {
    static let name = "chat.send-email"
    var runID: String
    var to: String
    var recipient: String
    var conversationID: String
    var subject: String
}

/// What the fake SMTP server answers.
struct MailError: Error, CustomStringConvertible {
    let code: String
    let text: String
    var description: String { "SMTP \(code): \(text)" }
}

/// A fake mail server: accepts most mail, greylists flaky recipients for a few attempts, and
/// never accepts mail for `bounce@…` addresses.
struct FakeMailServer: Sendable {
    func send(_ email: SendEmail, attempt: Int) async throws {
        try await Task.sleep(for: .milliseconds(2))
        if email.to.hasPrefix("bounce@") {
            throw MailError(
                code: "451 4.4.1",
                text: "no answer from the mail server of <\(email.to)>; mailbox unreachable"
            )
        }
        let flaky = ChatDirectory.users[email.recipient]?.flakyAttempts ?? 0
        if attempt <= flaky {
            throw MailError(code: "421 4.7.0", text: "<\(email.to)> greylisted, try again later (attempt \(attempt))")
        }
    }
}

/// What the chat app's consumers observed during one run (only this run's messages count).
struct ChatCounts {
    var readReceipts: Set<String> = []
    var lastSeqByConversation: [String: Int] = [:]
    var outOfOrder = 0
    var pushed: Set<String> = []
    var notified: Set<String> = []
    var pushesDelivered = 0
    var offlineNotifications = 0
    var emailClaims: Set<String> = []
    var emailsDispatched = 0
    var emailJobs: Set<String> = []
    var emailsSent: Set<String> = []
    var emailRetries = 0
    var emailsDeadLettered: Set<String> = []
    var ignoredForeign = 0
}

typealias ChatState = ExampleTally<ChatCounts>
