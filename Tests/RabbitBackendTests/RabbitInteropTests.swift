import BrokerAPI
import BrokerConformance
import BrokerTestSupport
import Foundation
import RabbitBackend
import Testing

/// A second, independent AMQP client (Python `pika`) reads what BrokerKit publishes and
/// publishes what BrokerKit reads: payload, headers, key and id survive both ways.
@Suite("amqp interop with pika", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitInteropTests {
    static let reader = """
        import base64, json, sys, time, pika
        conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
        ch = conn.channel()
        for _ in range(100):
            method, props, body = ch.basic_get(sys.argv[2], auto_ack=True)
            if method: break
            time.sleep(0.05)
        else:
            sys.exit("nothing to read")
        headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
        print(json.dumps({"id": props.message_id, "mode": props.delivery_mode, "headers": headers,
                          "body": base64.b64encode(body).decode()}))
        conn.close()
        """

    static let writer = """
        import sys, pika
        conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(message_id="pika-1", delivery_mode=2,
                                     headers={"source": "pika", "x-brokerkit-key": "key-🐍", "count": 3})
        ch.basic_publish("", sys.argv[2], bytes([0, 1, 2, 255]) + "ünï".encode(), props, mandatory=True)
        conn.close()
        """

    @Test func brokerKitToPika() async throws {
        try await RabbitServerGate.shared.withShared { try await Self.brokerKitToPikaBody() }
    }

    static func brokerKitToPikaBody() async throws {
        let broker = try await RabbitTestSupport.connect()
        defer { Task { await broker.close() } }
        let queue = "bk-interop-out-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        let payload = Data([0, 0, 255, 7]) + Data("héllo ✅".utf8)
        let sent = Message(key: "user-42", payload: payload, headers: ["tenant": "acme", "ünï": "çødé 漢字"])
        try await broker.publish(sent, to: queue)
        let result = try await RabbitTestSupport.run("python3", ["-c", reader, try RabbitTestSupport.url(), queue])
        try #require(result.status == 0, "pika reader failed: \(result.output)")
        let line = try #require(result.output.split(separator: "\n").last.map(String.init))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(json["id"] as? String == sent.id)
        #expect(json["mode"] as? Int == 2)
        #expect(Data(base64Encoded: json["body"] as? String ?? "") == payload)
        let headers = try #require(json["headers"] as? [String: Any])
        #expect(headers["tenant"] as? String == "acme")
        #expect(headers["ünï"] as? String == "çødé 漢字")
        #expect(headers["x-brokerkit-key"] as? String == "user-42")
        try await broker.deleteDestination(queue)
    }

    @Test func pikaToBrokerKit() async throws {
        try await RabbitServerGate.shared.withShared { try await Self.pikaToBrokerKitBody() }
    }

    static func pikaToBrokerKitBody() async throws {
        let broker = try await RabbitTestSupport.connect()
        defer { Task { await broker.close() } }
        let queue = "bk-interop-in-\(UUID().uuidString.prefix(8))"
        try await broker.createQueue(queue)
        let result = try await RabbitTestSupport.run("python3", ["-c", writer, try RabbitTestSupport.url(), queue])
        try #require(result.status == 0, "pika writer failed: \(result.output)")
        let consumer = try await broker.consumeQueue(queue)
        let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
        try await delivery.ack()
        await consumer.close()
        #expect(delivery.message.id == "pika-1")
        #expect(delivery.message.key == "key-🐍")
        #expect(delivery.message.payload == Data([0, 1, 2, 255]) + Data("ünï".utf8))
        #expect(delivery.message.headers["source"] == "pika")
        #expect(delivery.message.headers["count"] == "3")
        #expect(delivery.attempt == 1)
        try await broker.deleteDestination(queue)
    }
}
