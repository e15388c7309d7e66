import Foundation

/// A parsed broker URL: `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?option=value&...]`.
///
/// The password is kept for the backend but never printed: ``description`` and ``redacted``
/// replace it with `***`.
///
/// ```swift
/// let url = try BrokerURL("amqp://app:secret@localhost:5672/orders")
/// print(url)   // amqp://app:***@localhost:5672/orders
/// ```
public struct BrokerURL: Sendable, Hashable, CustomStringConvertible {
    public struct Host: Sendable, Hashable, CustomStringConvertible {
        public var name: String
        public var port: Int?
        public var description: String { port.map { "\(name):\($0)" } ?? name }
    }

    public var scheme: String
    public var user: String?
    public var password: String?
    public var hosts: [Host]
    /// The path without its leading `/` (vhost for AMQP, database index for Redis).
    public var path: String
    /// `?key=value` options, in order.
    public var query: [(key: String, value: String)] {
        get { queryItems.map { ($0.key, $0.value) } }
        set { queryItems = newValue.map { QueryItem(key: $0.key, value: $0.value) } }
    }
    struct QueryItem: Sendable, Hashable {
        var key: String
        var value: String
    }
    var queryItems: [QueryItem]
    /// The text it was parsed from, password included: never print it.
    let source: String

    /// Parses and validates `string`; throws ``BrokerError/Code/invalidConfiguration`` naming
    /// what is wrong (the password is never echoed).
    public init(_ string: String) throws {
        func fail(_ why: String) -> BrokerError {
            .invalidConfiguration(
                "invalid broker URL '\(BrokerURL.redact(string))': \(BrokerURL.scrub(why, of: string))"
            )
        }
        let trimmed = string.trimmingWhitespace()
        guard let schemeEnd = trimmed.range(of: "://") else {
            throw fail(
                "expected scheme://host, e.g. memory://, kafka://localhost:9092, amqp://localhost, redis://localhost"
            )
        }
        let scheme = String(trimmed[..<schemeEnd.lowerBound]).lowercased()
        guard !scheme.isEmpty, scheme.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "+" || $0 == "-" || $0 == "." }),
            scheme.first?.isLetter == true
        else { throw fail("scheme '\(scheme)' is not a valid URL scheme") }
        var rest = Substring(trimmed[schemeEnd.upperBound...])

        // The user info first: a password may hold `/`, `?` or `@` that its owner did not
        // percent-encode, and must never end up in the host, path or query (and so in an error).
        var user: String?
        var password: String?
        if let at = BrokerURL.userInfoEnd(in: rest) {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                user = BrokerURL.percentDecode(String(userInfo[..<colon]))
                password = BrokerURL.percentDecode(String(userInfo[userInfo.index(after: colon)...]))
            } else {
                user = BrokerURL.percentDecode(String(userInfo))
            }
            if user?.isEmpty == true { user = nil }
        }

        var queryItems: [QueryItem] = []
        if let q = rest.firstIndex(of: "?") {
            let queryText = rest[rest.index(after: q)...]
            rest = rest[..<q]
            for pair in queryText.split(separator: "&", omittingEmptySubsequences: true) {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = BrokerURL.percentDecode(String(parts[0]))
                guard !key.isEmpty else { throw fail("empty option name in query") }
                guard parts.count == 2 else { throw fail("option '\(key)' has no value (write option=value)") }
                queryItems.append(QueryItem(key: key, value: BrokerURL.percentDecode(String(parts[1]))))
            }
        }
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = BrokerURL.percentDecode(String(rest[rest.index(after: slash)...]))
            rest = rest[..<slash]
        }
        var hosts: [Host] = []
        for hostText in rest.split(separator: ",", omittingEmptySubsequences: false) {
            if hostText.isEmpty {
                if rest.isEmpty { break }
                throw fail("empty host in host list")
            }
            var name = Substring(hostText)
            var port: Int?
            if name.hasPrefix("[") {  // IPv6 literal
                guard let close = name.firstIndex(of: "]") else {
                    throw fail("unterminated IPv6 address '\(hostText)'")
                }
                let after = name[name.index(after: close)...]
                let v6 = name[name.index(after: name.startIndex)..<close]
                if after.hasPrefix(":") {
                    port = try BrokerURL.port(String(after.dropFirst()), in: string)
                } else if !after.isEmpty {
                    throw fail("unexpected '\(after)' after IPv6 address")
                }
                name = v6
            } else if let colon = name.lastIndex(of: ":") {
                port = try BrokerURL.port(String(name[name.index(after: colon)...]), in: string)
                name = name[..<colon]
            }
            guard !name.isEmpty else { throw fail("host name missing before port in '\(hostText)'") }
            let allowed = name.allSatisfy {
                $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" || $0 == ":" || $0 == "%"
            }
            guard allowed else { throw fail("host '\(name)' contains characters that are not allowed in a host name") }
            hosts.append(Host(name: String(name), port: port))
        }
        self.scheme = scheme
        self.user = user
        self.password = password
        self.hosts = hosts
        self.path = path
        self.queryItems = queryItems
        self.source = trimmed
    }

    private static func port(_ text: String, in url: String) throws -> Int {
        guard let port = Int(text), (1...65535).contains(port) else {
            throw BrokerError.invalidConfiguration(
                "invalid broker URL '\(redact(url))': "
                    + scrub("port '\(text)' is not a number from 1 to 65535", of: url)
            )
        }
        return port
    }

    /// The URL with the password replaced by `***`.
    public var redacted: String {
        var text = scheme + "://"
        if let user {
            text += user
            if password != nil { text += ":***" }
            text += "@"
        } else if password != nil {
            text += ":***@"
        }
        text += hosts.map(\.description).joined(separator: ",")
        if !path.isEmpty { text += "/" + path }
        if !queryItems.isEmpty {
            text +=
                "?"
                + queryItems.map { item in
                    let secret = BrokerOption.looksSecret(item.key)
                    return "\(item.key)=\(secret ? "***" : item.value)"
                }.joined(separator: "&")
        }
        return text
    }

    public var description: String { redacted }

    /// Redacts the password of a URL string that may not even parse.
    ///
    /// Conservative where the URL is ambiguous: everything from the first `:` after the user
    /// name up to the last `@` of the whole string is hidden, so that a password holding an
    /// unencoded `/`, `?` or `@` never shows, whatever the parser made of it.
    public static func redact(_ string: String) -> String {
        var text = string
        if let secret = secretRange(in: text) {
            text = String(text[..<secret.lowerBound]) + "***" + text[secret.upperBound...]
        }
        return redactQuery(text)
    }

    /// Hides the values of query options whose names look secret (`sasl.password=…`).
    private static func redactQuery(_ text: String) -> String {
        guard let q = text.firstIndex(of: "?") else { return text }
        let pairs = text[text.index(after: q)...].split(separator: "&", omittingEmptySubsequences: false).map {
            pair -> String in
            guard let eq = pair.firstIndex(of: "="), BrokerOption.looksSecret(percentDecode(String(pair[..<eq]))) else {
                return String(pair)
            }
            return String(pair[..<eq]) + "=***"
        }
        return String(text[..<q]) + "?" + pairs.joined(separator: "&")
    }

    /// Where a password may stand in `string`: after the first `:` of the text before the
    /// last `@` (scheme excluded), up to that `@`. `nil` when there is no `@` or no `:` before it.
    static func secretRange(in string: String) -> Range<String.Index>? {
        guard let schemeEnd = string.range(of: "://") else { return nil }
        let rest = string[schemeEnd.upperBound...]
        guard let at = rest.lastIndex(of: "@"), let colon = rest[..<at].firstIndex(of: ":") else { return nil }
        let start = rest.index(after: colon)
        return start < at ? start..<at : nil
    }

    /// `text` (a parser's complaint quoting parts of `url` between `'`) with every quoted
    /// part that overlaps the possible password region replaced by `***`: a complaint about a
    /// "port", "host" or "option" that is really a piece of a password must not print it.
    static func scrub(_ text: String, of url: String) -> String {
        guard let secret = secretRange(in: url) else { return text }
        // Compared as UTF-8 bytes: Foundation's `range(of:)` on a substring of a URL holding
        // NUL and other control characters returned an index past its end, and stepping from
        // it trapped (found by the `url` fuzz target: Fuzz/regressions/url).
        let bytes = Array(url.utf8)
        let secretStart = url.utf8.distance(from: url.startIndex, to: secret.lowerBound)
        let secretEnd = url.utf8.distance(from: url.startIndex, to: secret.upperBound)
        func overlapsSecret(_ piece: Substring) -> Bool {
            let needle = Array(piece.utf8)
            guard !needle.isEmpty, needle.count <= bytes.count else { return false }
            for start in 0...(bytes.count - needle.count) where start < secretEnd && secretStart < start + needle.count
            {
                if bytes[start..<(start + needle.count)].elementsEqual(needle) { return true }
            }
            return false
        }
        var parts = text.split(separator: "'", omittingEmptySubsequences: false)
        // Odd indices are the quoted pieces.
        for index in parts.indices where index % 2 == 1 && index < parts.count - 1 && !parts[index].isEmpty {
            if overlapsSecret(parts[index]) { parts[index] = "***" }
        }
        return parts.joined(separator: "'")
    }

    /// The `@` that ends the user info of `rest` (the URL after `scheme://`), if any.
    ///
    /// Passwords are often written without percent-encoding. An `@` before the first `/` or `?`
    /// is the standard case (the last such one, so `p@ss` works). Failing that, an `@` before
    /// the query still ends the user info (`app:ab/cd@host`: a password with `/`; a vhost with
    /// an `@` and no credentials is rarer). An `@` only in the query ends the user info only
    /// when the text before the `?` cannot be a host list (`:se?cret@host`), so that
    /// `kafka://h:9092?sasl.username=a@b` keeps its query.
    static func userInfoEnd(in rest: Substring) -> Substring.Index? {
        let query = rest.firstIndex(of: "?") ?? rest.endIndex
        let authorityEnd = rest[..<query].firstIndex(of: "/") ?? query
        if let at = rest[..<authorityEnd].lastIndex(of: "@") { return at }
        if let at = rest[..<query].lastIndex(of: "@") { return at }
        guard let at = rest[query...].lastIndex(of: "@") else { return nil }
        let hostPart = rest[..<authorityEnd]
        let afterAt = rest[rest.index(after: at)...]
        let afterAtHosts = afterAt[..<(afterAt.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? afterAt.endIndex)]
        return !looksLikeHostList(hostPart) && looksLikeHostList(afterAtHosts) ? at : nil
    }

    private static func looksLikeHostList(_ text: Substring) -> Bool {
        text.split(separator: ",", omittingEmptySubsequences: false).allSatisfy { host in
            var name = host
            if let colon = host.lastIndex(of: ":"), !host.hasPrefix("[") {
                guard let port = Int(host[host.index(after: colon)...]), (1...65535).contains(port) else {
                    return false
                }
                name = host[..<colon]
            }
            return !name.isEmpty && name.allSatisfy { $0.isLetter || $0.isNumber || "._-[]:%".contains($0) }
        }
    }

    static func percentDecode(_ text: String) -> String {
        guard text.contains("%") else { return text }
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let h = iterator.next(), let l = iterator.next(),
                let value = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension BrokerURL {
    public static func == (lhs: BrokerURL, rhs: BrokerURL) -> Bool {
        lhs.scheme == rhs.scheme && lhs.user == rhs.user && lhs.password == rhs.password
            && lhs.hosts == rhs.hosts && lhs.path == rhs.path && lhs.queryItems == rhs.queryItems
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(scheme)
        hasher.combine(hosts)
        hasher.combine(path)
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while s.first?.isWhitespace == true { s = s.dropFirst() }
        while s.last?.isWhitespace == true { s = s.dropLast() }
        return String(s)
    }
}
