import BrokerConformance
import BrokerTestSupport
import CRabbitMQ
import Foundation
import RabbitBackend
import Testing

/// Proves the rabbitmq-c link and the test RabbitMQ server the scripts start. The RabbitMQ
/// backend itself lands with its own issue; its conformance run will live beside this.
@Suite("rabbitmq-c link", .enabled(if: TestEnvironment.shouldRun(.amqp)))
struct RabbitMQLinkTests {
    @Test func libraryVersion() {
        #expect(RabbitBackend.libraryVersion.hasPrefix("0."))
    }

    @Test func loginDeclarePublishGetThroughRabbitMQC() async throws {
        let url = try TestEnvironment.requireURL(.amqp)
        let (host, port) = try #require(TestEnvironment.hostAndPort(url))
        let body: String = try await TestEnvironment.blocking {
            guard let connection = amqp_new_connection() else { throw ConformanceFailure("no connection state") }
            defer { amqp_destroy_connection(connection) }
            guard let socket = amqp_tcp_socket_new(connection) else { throw ConformanceFailure("no socket") }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            let opened = amqp_socket_open_noblock(socket, host, port, &timeout)
            guard opened == AMQP_STATUS_OK.rawValue else {
                throw ConformanceFailure(
                    "socket open \(host):\(port) failed: \(String(cString: amqp_error_string2(opened)))"
                )
            }
            let login = bk_amqp_login_plain(connection, "/", 0, 131_072, 0, "guest", "guest")
            guard login.reply_type == AMQP_RESPONSE_NORMAL else {
                throw ConformanceFailure("login failed: \(login.reply_type)")
            }
            defer { _ = amqp_connection_close(connection, AMQP_REPLY_SUCCESS) }
            _ = amqp_channel_open(connection, 1)
            guard amqp_get_rpc_reply(connection).reply_type == AMQP_RESPONSE_NORMAL else {
                throw ConformanceFailure("channel.open failed")
            }
            let queue = "bk-link-\(UUID().uuidString.prefix(8))"
            _ = amqp_queue_declare(connection, 1, amqp_cstring_bytes(queue), 0, 0, 0, 1, amqp_empty_table)
            guard amqp_get_rpc_reply(connection).reply_type == AMQP_RESPONSE_NORMAL else {
                throw ConformanceFailure("queue.declare failed")
            }
            let status = amqp_basic_publish(
                connection,
                1,
                amqp_empty_bytes,
                amqp_cstring_bytes(queue),
                0,
                0,
                nil,
                amqp_cstring_bytes("héllo")
            )
            guard status == AMQP_STATUS_OK.rawValue else { throw ConformanceFailure("publish failed: \(status)") }
            var got = amqp_basic_get(connection, 1, amqp_cstring_bytes(queue), 1)
            var attempts = 0
            while got.reply_type == AMQP_RESPONSE_NORMAL, got.reply.id == AMQP_BASIC_GET_EMPTY_METHOD, attempts < 50 {
                usleep(20_000)
                attempts += 1
                got = amqp_basic_get(connection, 1, amqp_cstring_bytes(queue), 1)
            }
            guard got.reply.id == AMQP_BASIC_GET_OK_METHOD else { throw ConformanceFailure("basic.get found nothing") }
            var message = amqp_message_t()
            let read = amqp_read_message(connection, 1, &message, 0)
            guard read.reply_type == AMQP_RESPONSE_NORMAL else { throw ConformanceFailure("read_message failed") }
            defer { amqp_destroy_message(&message) }
            let bytes = UnsafeRawBufferPointer(start: message.body.bytes, count: message.body.len)
            return String(decoding: bytes, as: UTF8.self)
        }
        #expect(body == "héllo")
    }
}
