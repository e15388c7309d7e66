import Foundation

extension Data {
    /// The UTF-8 bytes of `text`, copied straight from the string's storage. `Data(text.utf8)`
    /// goes through a generic initializer that casts dynamically on every call, which showed
    /// in publish profiles (see docs/rabbitmq.md).
    package init(utf8Of text: String) {
        var text = text
        self = text.withUTF8 { Data(buffer: $0) }
    }
}
