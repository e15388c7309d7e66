#ifndef BROKERKIT_CRABBITMQ_SHIM_H
#define BROKERKIT_CRABBITMQ_SHIM_H
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#include <poll.h>

/* amqp_login is variadic, which Swift cannot call: a fixed-argument PLAIN login. */
static inline amqp_rpc_reply_t bk_amqp_login_plain(amqp_connection_state_t state, const char *vhost,
                                                   int channel_max, int frame_max, int heartbeat,
                                                   const char *user, const char *password) {
    return amqp_login(state, vhost, channel_max, frame_max, heartbeat, AMQP_SASL_METHOD_PLAIN, user, password);
}

/* amqp_login_with_properties is variadic too: PLAIN login that also sends client properties
   (connection_name, product), so the connection is recognisable in rabbitmqctl list_connections. */
static inline amqp_rpc_reply_t bk_amqp_login_plain_properties(amqp_connection_state_t state, const char *vhost,
                                                              int channel_max, int frame_max, int heartbeat,
                                                              const amqp_table_t *properties,
                                                              const char *user, const char *password) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, properties,
                                      AMQP_SASL_METHOD_PLAIN, user, password);
}

/* Waits until the socket or the wake-up descriptor is readable, or timeout_ms passes.
   Returns bit 1 when the socket is readable (or poll failed: the caller's read reports it),
   bit 2 when the wake-up descriptor is; 0 on timeout. */
static inline int bk_poll_two(int socket_fd, int wake_fd, int timeout_ms) {
    struct pollfd fds[2];
    fds[0].fd = socket_fd;
    fds[0].events = POLLIN;
    fds[0].revents = 0;
    fds[1].fd = wake_fd;
    fds[1].events = POLLIN;
    fds[1].revents = 0;
    int n = poll(fds, wake_fd >= 0 ? 2 : 1, timeout_ms);
    if (n < 0) return 1; /* let the caller's read report it */
    return ((fds[0].revents & (POLLIN | POLLERR | POLLHUP)) ? 1 : 0)
        | ((wake_fd >= 0 && (fds[1].revents & (POLLIN | POLLERR | POLLHUP))) ? 2 : 0);
}
#endif
