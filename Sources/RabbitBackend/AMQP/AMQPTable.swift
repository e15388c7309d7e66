@_spi(BrokerBackend) import BrokerAPI
import CRabbitMQ
import Foundation

/// One AMQP 0-9-1 field value, copied out of rabbitmq-c's pools so it can outlive the frame
/// it came from and cross threads.
enum AMQPValue: Sendable, Hashable {
    case bool(Bool)
    case int8(Int8)
    case uint8(UInt8)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case uint64(UInt64)
    case float(Float)
    case double(Double)
    case decimal(scale: UInt8, value: UInt32)
    /// `S` (long string); RabbitMQ and most clients send text headers this way.
    case string(Data)
    /// `x` (byte array).
    case bytes(Data)
    case timestamp(UInt64)
    case table(AMQPTable)
    case array([AMQPValue])
    case void

    static func text(_ text: String) -> AMQPValue { .string(Data(utf8Of: text)) }

    /// The value as text, for BrokerKit's string headers: strings as UTF-8, numbers and
    /// booleans in their usual spelling; tables, arrays and void have none.
    var stringValue: String? {
        switch self {
        case .string(let data), .bytes(let data): return String(decoding: data, as: UTF8.self)
        case .bool(let v): return v ? "true" : "false"
        case .int8(let v): return String(v)
        case .uint8(let v): return String(v)
        case .int16(let v): return String(v)
        case .uint16(let v): return String(v)
        case .int32(let v): return String(v)
        case .uint32(let v): return String(v)
        case .int64(let v): return String(v)
        case .uint64(let v): return String(v)
        case .float(let v): return String(v)
        case .double(let v): return String(v)
        case .timestamp(let v): return String(v)
        case .decimal(let scale, let value):
            var text = String(value)
            guard scale > 0 else { return text }
            while text.count <= Int(scale) { text = "0" + text }
            text.insert(".", at: text.index(text.endIndex, offsetBy: -Int(scale)))
            return text
        case .table, .array, .void: return nil
        }
    }

    /// The value as an integer, when it is one (or a string holding one).
    var intValue: Int64? {
        switch self {
        case .int8(let v): return Int64(v)
        case .uint8(let v): return Int64(v)
        case .int16(let v): return Int64(v)
        case .uint16(let v): return Int64(v)
        case .int32(let v): return Int64(v)
        case .uint32(let v): return Int64(v)
        case .int64(let v): return v
        case .uint64(let v): return Int64(clamping: v)
        case .timestamp(let v): return Int64(clamping: v)
        case .string, .bytes: return stringValue.flatMap { Int64($0) }
        default: return nil
        }
    }

    /// Whether BrokerKit's `[String: String]` headers can carry this value.
    var isScalar: Bool {
        switch self {
        case .table, .array, .void: return false
        default: return true
        }
    }

    /// How deep tables and arrays are copied; deeper values become `void`. A frame can nest
    /// them tens of thousands deep, and each level is a recursion here (and in the
    /// deinitializers and the encoder).
    static let maxDepth = 32

    /// Copies a value out of a decoded frame.
    init(_ field: amqp_field_value_t, depth: Int = 0) {
        guard depth < Self.maxDepth else {
            self = .void
            return
        }
        let kind = UInt32(field.kind)
        switch kind {
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: self = .bool(field.value.boolean != 0)
        case AMQP_FIELD_KIND_I8.rawValue: self = .int8(field.value.i8)
        case AMQP_FIELD_KIND_U8.rawValue: self = .uint8(field.value.u8)
        case AMQP_FIELD_KIND_I16.rawValue: self = .int16(field.value.i16)
        case AMQP_FIELD_KIND_U16.rawValue: self = .uint16(field.value.u16)
        case AMQP_FIELD_KIND_I32.rawValue: self = .int32(field.value.i32)
        case AMQP_FIELD_KIND_U32.rawValue: self = .uint32(field.value.u32)
        case AMQP_FIELD_KIND_I64.rawValue: self = .int64(field.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue: self = .uint64(field.value.u64)
        case AMQP_FIELD_KIND_F32.rawValue: self = .float(field.value.f32)
        case AMQP_FIELD_KIND_F64.rawValue: self = .double(field.value.f64)
        case AMQP_FIELD_KIND_DECIMAL.rawValue:
            self = .decimal(scale: field.value.decimal.decimals, value: field.value.decimal.value)
        case AMQP_FIELD_KIND_UTF8.rawValue: self = .string(Data(amqpBytes: field.value.bytes))
        case AMQP_FIELD_KIND_BYTES.rawValue: self = .bytes(Data(amqpBytes: field.value.bytes))
        case AMQP_FIELD_KIND_TIMESTAMP.rawValue: self = .timestamp(field.value.u64)
        case AMQP_FIELD_KIND_TABLE.rawValue: self = .table(AMQPTable(field.value.table, depth: depth + 1))
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            let array = field.value.array
            var values: [AMQPValue] = []
            if let entries = array.entries {
                for index in 0..<Int(array.num_entries) { values.append(AMQPValue(entries[index], depth: depth + 1)) }
            }
            self = .array(values)
        default: self = .void
        }
    }
}

extension AMQPValue {
    /// The first key not UTF-8 in a nested table (also inside arrays), if any. One visit per
    /// value: `values.lazy.compactMap(\.invalidKey).first` computed the found element twice
    /// (once to find it, once to return it) at every level, so arrays nested n deep around
    /// one bad key took 2ⁿ steps (a 563-byte header took 8 s; found by the `amqp` fuzz target).
    var invalidKey: String? {
        switch self {
        case .table(let table): return table.invalidKey
        case .array(let values):
            for value in values {
                if let key = value.invalidKey { return key }
            }
            return nil
        default: return nil
        }
    }
}

/// An AMQP field table (message headers, queue arguments), in wire order.
struct AMQPTable: Sendable, Hashable {
    struct Entry: Sendable, Hashable {
        var key: String
        var value: AMQPValue
    }
    var entries: [Entry]
    /// The first key whose bytes were not UTF-8 (read with replacement characters).
    var invalidKey: String?

    init(_ entries: [Entry] = []) { self.entries = entries }

    init(_ pairs: KeyValuePairs<String, AMQPValue>) {
        self.entries = pairs.map { Entry(key: $0.key, value: $0.value) }
    }

    /// Copies a table out of a decoded frame.
    init(_ table: amqp_table_t, depth: Int = 0) {
        var entries: [Entry] = []
        if let raw = table.entries {
            entries.reserveCapacity(Int(table.num_entries))
            for index in 0..<Int(table.num_entries) {
                let entry = raw[index]
                let (key, valid) = String.checking(amqpBytes: entry.key)
                if !valid && invalidKey == nil { invalidKey = key }
                let value = AMQPValue(entry.value, depth: depth)
                if invalidKey == nil, let nested = value.invalidKey { invalidKey = nested }
                entries.append(Entry(key: key, value: value))
            }
        }
        self.entries = entries
    }

    var isEmpty: Bool { entries.isEmpty }

    subscript(key: String) -> AMQPValue? {
        get { entries.first { $0.key == key }?.value }
        set {
            if let index = entries.firstIndex(where: { $0.key == key }) {
                if let newValue { entries[index].value = newValue } else { entries.remove(at: index) }
            } else if let newValue {
                entries.append(Entry(key: key, value: newValue))
            }
        }
    }
}

extension Data {
    /// Copies the bytes of an `amqp_bytes_t`.
    init(amqpBytes bytes: amqp_bytes_t) {
        if bytes.len == 0 || bytes.bytes == nil {
            self.init()
        } else {
            self.init(bytes: bytes.bytes, count: bytes.len)
        }
    }
}

extension String {
    /// Decodes an `amqp_bytes_t` as UTF-8.
    init(amqpBytes bytes: amqp_bytes_t) {
        self = String(decoding: Data(amqpBytes: bytes), as: UTF8.self)
    }

    /// Decodes an `amqp_bytes_t` as UTF-8, saying whether it was valid (ASCII is checked
    /// without decoding twice).
    static func checking(amqpBytes bytes: amqp_bytes_t) -> (String, valid: Bool) {
        let data = Data(amqpBytes: bytes)
        if data.allSatisfy({ $0 < 0x80 }) { return (String(decoding: data, as: UTF8.self), true) }
        if let valid = String(validating: data, as: UTF8.self) { return (valid, true) }
        return (String(decoding: data, as: UTF8.self), false)
    }
}

/// Owns the C memory of values handed to rabbitmq-c for one call (a publish, a declare):
/// everything allocated here is freed when the arena goes away, after the call returned.
/// Not thread-safe; lives inside one job on a connection's thread.
final class AMQPArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    init() {}

    deinit {
        for pointer in allocations { free(pointer) }
    }

    private func allocate(_ count: Int) -> UnsafeMutableRawPointer {
        let pointer = malloc(Swift.max(1, count))!
        allocations.append(pointer)
        return pointer
    }

    /// A copy of `raw` owned by the arena (empty: no bytes, a null pointer).
    private func copy(_ raw: UnsafeRawBufferPointer) -> amqp_bytes_t {
        guard let base = raw.baseAddress, raw.count > 0 else { return amqp_bytes_t(len: 0, bytes: nil) }
        let pointer = allocate(raw.count)
        pointer.copyMemory(from: base, byteCount: raw.count)
        return amqp_bytes_t(len: raw.count, bytes: pointer)
    }

    func bytes(_ data: Data) -> amqp_bytes_t { data.withUnsafeBytes { copy($0) } }

    /// The UTF-8 bytes of `text`, copied straight from the string's storage.
    func bytes(_ text: String) -> amqp_bytes_t {
        var text = text
        return text.withUTF8 { copy(UnsafeRawBufferPointer($0)) }
    }

    /// A NUL-terminated copy of `text` (for the few C calls that take `const char *`).
    func cString(_ text: String) -> UnsafePointer<CChar> {
        let utf8 = Array(text.utf8CString)
        let pointer = allocate(utf8.count).assumingMemoryBound(to: CChar.self)
        pointer.update(from: utf8, count: utf8.count)
        return UnsafePointer(pointer)
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        guard !table.entries.isEmpty else { return amqp_table_t(num_entries: 0, entries: nil) }
        let raw = allocate(MemoryLayout<amqp_table_entry_t>.stride * table.entries.count)
        let entries = raw.bindMemory(to: amqp_table_entry_t.self, capacity: table.entries.count)
        for (index, entry) in table.entries.enumerated() {
            (entries + index).initialize(to: amqp_table_entry_t(key: bytes(entry.key), value: value(entry.value)))
        }
        return amqp_table_t(num_entries: Int32(table.entries.count), entries: entries)
    }

    func value(_ value: AMQPValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        func kind(_ k: amqp_field_value_kind_t) { field.kind = UInt8(k.rawValue) }
        switch value {
        case .bool(let v):
            kind(AMQP_FIELD_KIND_BOOLEAN)
            field.value.boolean = v ? 1 : 0
        case .int8(let v):
            kind(AMQP_FIELD_KIND_I8)
            field.value.i8 = v
        case .uint8(let v):
            kind(AMQP_FIELD_KIND_U8)
            field.value.u8 = v
        case .int16(let v):
            kind(AMQP_FIELD_KIND_I16)
            field.value.i16 = v
        case .uint16(let v):
            kind(AMQP_FIELD_KIND_U16)
            field.value.u16 = v
        case .int32(let v):
            kind(AMQP_FIELD_KIND_I32)
            field.value.i32 = v
        case .uint32(let v):
            kind(AMQP_FIELD_KIND_U32)
            field.value.u32 = v
        case .int64(let v):
            kind(AMQP_FIELD_KIND_I64)
            field.value.i64 = v
        case .uint64(let v):
            kind(AMQP_FIELD_KIND_U64)
            field.value.u64 = v
        case .float(let v):
            kind(AMQP_FIELD_KIND_F32)
            field.value.f32 = v
        case .double(let v):
            kind(AMQP_FIELD_KIND_F64)
            field.value.f64 = v
        case .decimal(let scale, let v):
            kind(AMQP_FIELD_KIND_DECIMAL)
            field.value.decimal = amqp_decimal_t(decimals: scale, value: v)
        case .string(let data):
            kind(AMQP_FIELD_KIND_UTF8)
            field.value.bytes = bytes(data)
        case .bytes(let data):
            kind(AMQP_FIELD_KIND_BYTES)
            field.value.bytes = bytes(data)
        case .timestamp(let v):
            kind(AMQP_FIELD_KIND_TIMESTAMP)
            field.value.u64 = v
        case .table(let t):
            kind(AMQP_FIELD_KIND_TABLE)
            field.value.table = table(t)
        case .array(let values):
            kind(AMQP_FIELD_KIND_ARRAY)
            if values.isEmpty {
                field.value.array = amqp_array_t(num_entries: 0, entries: nil)
            } else {
                let raw = allocate(MemoryLayout<amqp_field_value_t>.stride * values.count)
                let items = raw.bindMemory(to: amqp_field_value_t.self, capacity: values.count)
                for (index, item) in values.enumerated() { (items + index).initialize(to: self.value(item)) }
                field.value.array = amqp_array_t(num_entries: Int32(values.count), entries: items)
            }
        case .void: kind(AMQP_FIELD_KIND_VOID)
        }
        return field
    }
}
