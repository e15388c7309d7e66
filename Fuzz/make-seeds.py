#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target (Fuzz/corpus/<target>/): well-formed inputs
in the layout each target reads (see Sources/BrokerFuzzTargets/FuzzTargets.swift), from
which libFuzzer mutates. Run from the repository root; the output is committed."""
import json, os, struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def write(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# url: a URL, then name=value option lines
for i, text in enumerate([
    "memory://",
    "redis://app:s3cr3t-pass@127.0.0.1:6390/2",
    "rediss://:only-password-x@cache.internal:6380?stream.lease=30s",
    "amqp://guest:guest@127.0.0.1:5682/%2f?heartbeat=10",
    "amqps://user:p%40ss%2Fword@rabbit-1:5671,rabbit-2:5671/orders\nqueue.type=quorum",
    "kafka://broker-1:9092,broker-2:9092?compression.type=snappy\nlinger=0ms\nsasl.password=hunter2hunter2",
    "kafka://[::1]:9092\ngroup.session.timeout=10s",
    "redis://user:pa:ss@word@host",
]):
    write("url", f"seed-{i}", text)

# config: JSON config files
for i, doc in enumerate([
    {"broker": {"url": "redis://127.0.0.1:6390"}},
    {"broker": {"url": "kafka://127.0.0.1:19092"}, "kafka": {"compression": {"type": "lz4"}}},
    {"broker": {"url": "amqp://guest:guest@127.0.0.1:5682/"}, "amqp": {"queue": {"type": "classic"}}},
    {"broker": {"url": "memory://"}, "redis": {"unknown": 1}},
    [1, 2, 3],
]):
    write("config", f"seed-{i}", json.dumps(doc))

# redis: RESP replies
def bulk(b):
    b = b.encode() if isinstance(b, str) else b
    return b"$%d\r\n%s\r\n" % (len(b), b)
def arr(items):
    return b"*%d\r\n" % len(items) + b"".join(items)
def entry(entry_id, fields):
    return arr([bulk(entry_id), arr([bulk(x) for kv in fields for x in kv])])
write("redis", "xreadgroup", arr([arr([bulk("orders"), arr([
    entry("1700000000000-0", [("id", "m-1"), ("key", "user-1"), ("ts", "1700000000000"), ("h:source", "cli"), ("payload", "{\"n\":1}")]),
    entry("1700000000000-1", [("id", "m-2"), ("attempt", "3"), ("ff", "1700000000000"), ("payload", b"\x00\xff")]),
])])]))
write("redis", "deleted-pending", arr([arr([bulk("orders"), arr([arr([bulk("1-0"), b"*-1\r\n"])])])]))
write("redis", "foreign", arr([arr([bulk("orders"), arr([entry("5-0", [("attempt", "99999999999999999999"), ("h:x", b"\xc3\x28"), ("payload", "x")])])])]))
write("redis", "dlq-entry", arr([entry("9-0", [("id", "m-9"), ("h:x-brokerkit-original-destination", "orders"),
    ("h:x-brokerkit-attempts", "5"), ("h:x-brokerkit-last-error", "boom"), ("h:x-brokerkit-failed-at", "2026-12-07T10:00:00.000Z"), ("payload", "p")])]))
write("redis", "xclaim", arr([entry("7-0", [("payload", "x"), ("key", "k")]), b"*-1\r\n", b":1\r\n", b"+OK\r\n", b"-ERR no\r\n"]))

# amqp: 2-byte property length, basic properties (flags + fields), body
def shortstr(s):
    s = s.encode() if isinstance(s, str) else s
    return bytes([len(s)]) + s
def longstr(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(s)) + s
def table(entries):
    body = b""
    for k, (kind, v) in entries:
        body += shortstr(k) + kind.encode()
        if kind == "S": body += longstr(v)
        elif kind == "l": body += struct.pack(">q", v)
        elif kind == "I": body += struct.pack(">i", v)
        elif kind == "t": body += bytes([v])
        elif kind == "F": body += table(v)
        elif kind == "A": body += struct.pack(">I", len(v)) + v
        elif kind == "x": body += longstr(v)
        elif kind == "V": pass
    return struct.pack(">I", len(body)) + body
def props(headers=None, message_id=None, timestamp=None, content_type=None):
    flags, fields = 0, b""
    if content_type is not None: flags |= 1 << 15; fields += shortstr(content_type)
    if headers is not None: flags |= 1 << 13; fields += table(headers)
    flags |= 1 << 12; fields += bytes([2])  # delivery mode
    if message_id is not None: flags |= 1 << 7; fields += shortstr(message_id)
    if timestamp is not None: flags |= 1 << 6; fields += struct.pack(">Q", timestamp)
    return struct.pack(">H", flags) + fields
def amqp(p, body):
    return struct.pack(">H", len(p)) + p + body
write("amqp", "brokerkit", amqp(props([("x-brokerkit-key", ("S", "user-1")), ("x-brokerkit-timestamp-ms", ("l", 1700000000000)),
    ("source", ("S", "cli"))], "m-1", 1700000000), b"{\"n\":1}"))
write("amqp", "x-death", amqp(props([("x-death", ("A", b"F" + table([("count", ("l", 1)), ("queue", ("S", "orders"))]))),
    ("x-delivery-count", ("I", 2)), ("flag", ("t", 1))], "m-2"), b"p"))
write("amqp", "foreign", amqp(props([("bin", ("x", b"\xff\xfe")), ("nested", ("F", [("a", ("S", "b"))])), ("void", ("V", None))],
    None, None, "application/json"), b"x"))
write("amqp", "dlq", amqp(props([("x-brokerkit-original-destination", ("S", "orders")), ("x-brokerkit-attempts", ("S", "5")),
    ("x-brokerkit-last-error", ("S", "boom"))], "m-3"), b""))

# kafka: flags, 8-byte timestamp, key, payload, headers
def kafka(key, value, headers, ts=1700000000000):
    flags = (1 if key is not None else 0) | (2 if value is not None else 0)
    out = bytes([flags]) + struct.pack(">q", ts)
    for part in (key, value):
        if part is not None:
            part = part.encode() if isinstance(part, str) else part
            out += struct.pack(">H", len(part)) + part
    for name, val in headers:
        name = name.encode() if isinstance(name, str) else name
        out += bytes([len(name)]) + name
        if val is None: out += b"\xff\xff"
        else:
            val = val.encode() if isinstance(val, str) else val
            out += struct.pack(">H", len(val)) + val
    return out
write("kafka", "brokerkit", kafka("user-1", "{\"n\":1}", [("x-brokerkit-id", "m-1"), ("source", "cli")]))
write("kafka", "retry", kafka("k", "p", [("x-brokerkit-id", "m-2"), ("x-brokerkit-attempt", "3"),
    ("x-brokerkit-first-failure-at", "2026-12-07T10:00:00.000Z"), ("x-brokerkit-deliver-at", "2026-12-07T10:00:01.000Z")]))
write("kafka", "foreign", kafka(b"\xc3\x28", None, [("null", None), ("bin", b"\xff"), ("", "")], ts=-1))
write("kafka", "dlq", kafka(None, "p", [("x-brokerkit-original-destination", "orders"), ("x-brokerkit-attempts", "7"),
    ("x-brokerkit-last-error", "boom"), ("x-brokerkit-failed-at", "not a date")]))
