#!/usr/bin/env bash
# Starts / stops the real brokers the test suite uses, on loopback ports, with state under
# .run/ in the repository. Usage: scripts/brokers.sh start|stop|status|costs [idle-seconds]|restart-<server>
# `start` writes .run/brokers.env with BROKERKIT_TEST_*_URL variables for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="$PWD/.run"
REDIS_PORT="${BROKERKIT_REDIS_PORT:-6390}"
AMQP_PORT="${BROKERKIT_AMQP_PORT:-5682}"
AMQP_DIST_PORT="${BROKERKIT_AMQP_DIST_PORT:-25682}"
AMQPS_PORT="${BROKERKIT_AMQPS_PORT:-5683}"
KAFKA_PORT="${BROKERKIT_KAFKA_PORT:-19092}"
KAFKA_TLS_PORT="${BROKERKIT_KAFKA_TLS_PORT:-19093}"
KAFKA_SASL_PORT="${BROKERKIT_KAFKA_SASL_PORT:-19094}"
KAFKA_SOAK_PORT="${BROKERKIT_KAFKA_SOAK_PORT:-19095}"
KAFKA_SASL_USER=alice
KAFKA_SASL_PASSWORD=alice-secret
RABBIT_NODE="${BROKERKIT_AMQP_NODE:-brokerkit-test@localhost}"

log() { echo "==> $*"; }

now_ms() { date +%s%3N; }
# Start-up time of a broker, launch command to accepting connections, for `costs`.
record_startup() {  # name start-ms
    mkdir -p "$RUN/startup"
    echo $(($(now_ms) - $2)) >"$RUN/startup/$1"
}

# Servers started here must not inherit the caller's open files (a test runner's pipes, a
# build lock held by a wrapper): close every descriptor above stderr.
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
done

wait_port() {  # name port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then echo "error: $1 did not listen on port $2 within $3 s" >&2; return 1; fi
        sleep 0.2
    done
}

wait_until() {  # seconds what log-dir command...: runs the command until it succeeds
    local deadline=$((SECONDS + $1)) what=$2 logs=$3
    shift 3
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "error: $what; log:" >&2
            tail -n 40 "$logs"/*.log >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

wait_port_closed() {  # name port seconds
    local deadline=$((SECONDS + $3))
    while (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then echo "error: $1 did not stop (port $2 still open after $3 s)" >&2; return 1; fi
        sleep 0.1
    done
}

start_redis() {
    mkdir -p "$RUN/redis"
    local t0=$SECONDS ms0
    ms0=$(now_ms)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --dir "$RUN/redis" \
        --daemonize yes --pidfile "$RUN/redis/redis.pid" --logfile "$RUN/redis/redis.log"
    wait_port redis "$REDIS_PORT" 20
    redis-cli -p "$REDIS_PORT" ping >/dev/null
    record_startup redis "$ms0"
    log "redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$REDIS_PORT ($((SECONDS - t0)) s)"
}

# A throw-away CA, a server certificate for "localhost" (DNS name only, so that connecting by
# IP address fails host-name verification) and a client certificate for mutual TLS.
make_tls() {
    local dir="$RUN/tls"
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=BrokerKit test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.pem 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        openssl req -newkey rsa:2048 -nodes -subj "/CN=brokerkit-test-client" -keyout client.key -out client.csr 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile client.ext -out client.pem 2>/dev/null
        # The TLS Kafka broker advertises 127.0.0.1, so its certificate names that address too.
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >kafka-server.ext
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout kafka-server.key -out kafka-server.csr 2>/dev/null
        openssl x509 -req -in kafka-server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile kafka-server.ext -out kafka-server.pem 2>/dev/null
        # A CA the server's certificate does not chain to.
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Unrelated CA" \
            -keyout other-ca.key -out other-ca.pem 2>/dev/null
        rm -f ./*.csr ./*.ext ./*.srl
    )
    chmod 644 "$dir"/*
}

start_rabbit() {
    mkdir -p "$RUN/rabbitmq/mnesia" "$RUN/rabbitmq/log"
    make_tls
    # amqps:// on its own port: the server demands a client certificate signed by the test CA.
    cat >"$RUN/rabbitmq/rabbitmq.conf" <<CONF
listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $RUN/tls/ca.pem
ssl_options.certfile = $RUN/tls/server.pem
ssl_options.keyfile = $RUN/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
CONF
    # Quorum wait queues dead-letter at least once: a due message whose target queue was not
    # up yet (a restart) is re-sent by RabbitMQ's dead-letter worker after this timeout,
    # 180 s by default. 5 s here, as docs/rabbitmq.md recommends for production.
    cat >"$RUN/rabbitmq/advanced.config" <<CONF
[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].
CONF
    chown -R rabbitmq:rabbitmq "$RUN/rabbitmq" 2>/dev/null || true
    chmod o+x "$RUN" "$PWD" 2>/dev/null || true
    local t0=$SECONDS ms0
    ms0=$(now_ms)
    export RABBITMQ_MNESIA_BASE="$RUN/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$RUN/rabbitmq/log"
    export RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_DIST_PORT="$AMQP_DIST_PORT" RABBITMQ_PID_FILE="$RUN/rabbitmq/rabbit.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$RUN/rabbitmq/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$RUN/rabbitmq/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$RUN/rabbitmq/advanced.config"
    echo "[]." > "$RABBITMQ_ENABLED_PLUGINS_FILE"
    chown rabbitmq:rabbitmq "$RABBITMQ_ENABLED_PLUGINS_FILE" 2>/dev/null || true
    # RabbitMQ sizes its file-handle pool from the open-files limit; 1024 wedges the node
    # under parallel tests (hundreds of queues and connections).
    ulimit -n 65536 2>/dev/null || ulimit -n 20000 2>/dev/null || true
    rabbitmq-server -detached
    # await_startup needs the node to be reachable first; retry until it is (about 5-10 s).
    wait_until 120 "rabbitmq node $RABBIT_NODE did not start" "$RABBITMQ_LOG_BASE" \
        rabbitmqctl -n "$RABBIT_NODE" await_startup --timeout 30
    wait_port rabbitmq "$AMQP_PORT" 30
    wait_port "rabbitmq (TLS)" "$AMQPS_PORT" 30
    record_startup rabbitmq "$ms0"
    log "rabbitmq-server on 127.0.0.1:$AMQP_PORT (amqps $AMQPS_PORT) node $RABBIT_NODE ($((SECONDS - t0)) s)"
}

start_kafka() {
    # A fresh data directory per start: the test broker keeps no state between runs.
    rm -rf "$RUN/kafka/data"
    launch_kafka
}

launch_kafka() {
    mkdir -p "$RUN/kafka/data"
    local t0=$SECONDS ms0
    ms0=$(now_ms)
    # exec: no shell stays behind holding the caller's stdout (a pipe would never see EOF).
    (cd "$RUN/kafka" && exec nohup noida-db start --only kafka --kafka-port "$KAFKA_PORT" --data-dir "$RUN/kafka/data" \
        >"$RUN/kafka/noida.log" 2>&1 </dev/null) &
    echo $! >"$RUN/kafka/noida.pid"
    wait_port kafka "$KAFKA_PORT" 30
    record_startup kafka "$ms0"
    log "noida-db (Kafka protocol) on 127.0.0.1:$KAFKA_PORT ($((SECONDS - t0)) s)"
}

# noida-db has neither TLS nor SASL, so the TLS and the SASL brokers are further noida-db
# instances behind a front: each runs in a network namespace of its own, listening on (and
# advertising) 127.0.0.1:PORT there, and socat inside the namespace bridges it to a Unix
# socket. The front listens on 127.0.0.1:PORT outside, the address clients learn from the
# broker's metadata, and passes authenticated connections on to that socket. Needs root
# (unshare -n).
launch_namespaced_kafka() {  # name port
    local dir="$RUN/$1"
    rm -rf "$dir"
    mkdir -p "$dir/data"
    setsid unshare -n bash -c "ip link set lo up
        noida-db start --only kafka --kafka-port $2 --data-dir '$dir/data' >'$dir/noida.log' 2>&1 &
        exec socat UNIX-LISTEN:'$dir/kafka.sock',fork,unlink-early TCP:127.0.0.1:$2" \
        >"$dir/namespace.log" 2>&1 </dev/null &
    echo $! >"$dir/namespace.pid"
}

wait_kafka_front() {  # name port kcat-options...
    local name=$1 port=$2
    shift 2
    # Ready when a client gets the broker's metadata through the front and both bridges.
    wait_until 60 "the $name Kafka broker did not answer on 127.0.0.1:$port" "$RUN/kafka-$name" \
        kcat -L -m 5 -b "127.0.0.1:$port" "$@"
}

# TLS: socat terminates TLS and demands a client certificate signed by the test CA.
start_kafka_tls() {
    local dir="$RUN/kafka-tls" t0=$SECONDS
    [ -f "$RUN/tls/kafka-server.pem" ] || make_tls
    launch_namespaced_kafka kafka-tls "$KAFKA_TLS_PORT"
    setsid socat "OPENSSL-LISTEN:$KAFKA_TLS_PORT,bind=127.0.0.1,reuseaddr,fork,cert=$RUN/tls/kafka-server.pem,key=$RUN/tls/kafka-server.key,cafile=$RUN/tls/ca.pem,verify=1" \
        "UNIX-CONNECT:$dir/kafka.sock" >"$dir/front.log" 2>&1 </dev/null &
    echo $! >"$dir/front.pid"
    wait_kafka_front tls "$KAFKA_TLS_PORT" -X security.protocol=ssl -X "ssl.ca.location=$RUN/tls/ca.pem" \
        -X "ssl.certificate.location=$RUN/tls/client.pem" -X "ssl.key.location=$RUN/tls/client.key"
    log "noida-db behind TLS (socat) on 127.0.0.1:$KAFKA_TLS_PORT ($((SECONDS - t0)) s)"
}

# SASL: scripts/kafka-sasl-front.py authenticates PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
# against one user, then splices the connection through.
start_kafka_sasl() {
    local dir="$RUN/kafka-sasl" t0=$SECONDS
    launch_namespaced_kafka kafka-sasl "$KAFKA_SASL_PORT"
    # The front waits (up to 60 s) for the broker behind the socket before it listens.
    setsid python3 scripts/kafka-sasl-front.py "127.0.0.1:$KAFKA_SASL_PORT" "$dir/kafka.sock" "$KAFKA_SASL_USER:$KAFKA_SASL_PASSWORD" \
        >"$dir/front.log" 2>&1 </dev/null &
    echo $! >"$dir/front.pid"
    wait_kafka_front sasl "$KAFKA_SASL_PORT" -X security.protocol=sasl_plaintext -X sasl.mechanism=PLAIN \
        -X "sasl.username=$KAFKA_SASL_USER" -X "sasl.password=$KAFKA_SASL_PASSWORD"
    log "noida-db behind SASL (PLAIN, SCRAM) on 127.0.0.1:$KAFKA_SASL_PORT ($((SECONDS - t0)) s)"
}

# For `brokerkit soak`'s network cuts: one more noida-db in a namespace of its own, advertising
# 127.0.0.1:KAFKA_SOAK_PORT, reachable only through its Unix socket. Nothing listens on that
# port outside until the soak's proxy does: so every connection a Kafka client makes (the
# bootstrap one and those to the address the metadata names) goes through the proxy the
# soak cuts. Without this, a client would follow the metadata past the proxy.
start_kafka_soak() {
    local dir="$RUN/kafka-soak" t0=$SECONDS
    launch_namespaced_kafka kafka-soak "$KAFKA_SOAK_PORT"
    wait_until 60 "the soak Kafka broker did not answer in its namespace" "$dir" \
        nsenter -t "$(cat "$dir/namespace.pid")" -n kcat -L -m 5 -b "127.0.0.1:$KAFKA_SOAK_PORT"
    log "noida-db for soak cuts in a namespace, socket $dir/kafka.sock, advertising 127.0.0.1:$KAFKA_SOAK_PORT ($((SECONDS - t0)) s)"
}

restart_kafka_soak() {  # as restart_kafka, inside the soak broker's namespace
    local dir="$RUN/kafka-soak" t0=$SECONDS ns
    ns="$(cat "$dir/namespace.pid")"
    nsenter -t "$ns" -n noida-db stop kafka --data-dir "$dir/data" >/dev/null 2>&1
    sleep "${1:-0}"
    nsenter -t "$ns" -n noida-db start kafka --data-dir "$dir/data" >/dev/null 2>&1
    wait_until 60 "the soak Kafka broker did not come back" "$dir" \
        nsenter -t "$ns" -n kcat -L -m 5 -b "127.0.0.1:$KAFKA_SOAK_PORT"
    log "noida-db (soak) Kafka service restarted ($((SECONDS - t0)) s)"
}

restart_rabbitmq() {  # the node's application stops (connections close) and starts again
    local t0=$SECONDS
    rabbitmqctl -q -n "$RABBIT_NODE" stop_app >/dev/null
    sleep "${1:-0}"
    rabbitmqctl -q -n "$RABBIT_NODE" start_app >/dev/null
    wait_port rabbitmq "$AMQP_PORT" 60
    log "rabbitmq application restarted on node $RABBIT_NODE ($((SECONDS - t0)) s)"
}

stop_namespaced_kafka() {
    local dir f
    for dir in "$RUN/kafka-tls" "$RUN/kafka-sasl" "$RUN/kafka-soak"; do
        for f in "$dir/front.pid" "$dir/namespace.pid"; do
            # Each was started as a session leader: the signal reaches its whole process group.
            if [ -f "$f" ]; then kill -TERM -- "-$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
        done
    done
    # Leftovers of a start whose pid files are gone.
    pkill -f "noida-db start --only kafka --kafka-port ($KAFKA_TLS_PORT|$KAFKA_SASL_PORT|$KAFKA_SOAK_PORT)" 2>/dev/null || true
    pkill -f "OPENSSL-LISTEN:$KAFKA_TLS_PORT," 2>/dev/null || true
    pkill -f "kafka-sasl-front.py 127.0.0.1:$KAFKA_SASL_PORT " 2>/dev/null || true
}

restart_redis() {  # for reconnect tests: stop (AOF is flushed on shutdown) and start again
    redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true
    wait_port_closed redis "$REDIS_PORT" 20
    sleep "${1:-0}"
    start_redis
}

stop_kafka() {
    if [ -f "$RUN/kafka/noida.pid" ]; then
        # SIGTERM: noida-db writes its snapshot before exiting.
        pkill -TERM -P "$(cat "$RUN/kafka/noida.pid")" 2>/dev/null || true
        kill -TERM "$(cat "$RUN/kafka/noida.pid")" 2>/dev/null || true
        rm -f "$RUN/kafka/noida.pid"
    fi
    pkill -f "noida-db start --only kafka --kafka-port $KAFKA_PORT" 2>/dev/null || true
}

restart_kafka() {  # for reconnect tests: stop the Kafka service (data is saved), start it on the same data
    # Not SIGTERM: on SIGTERM noida-db goes on acknowledging produce requests on open
    # connections while it writes its snapshot, and those records are lost on the next start
    # (measured: 76 acknowledged, 2 kept). `noida-db stop kafka` drops the connections first.
    local t0=$SECONDS
    noida-db stop kafka --data-dir "$RUN/kafka/data" >/dev/null 2>&1
    wait_port_closed noida-db "$KAFKA_PORT" 60
    sleep "${1:-0}"
    noida-db start kafka --data-dir "$RUN/kafka/data" >/dev/null 2>&1
    wait_port kafka "$KAFKA_PORT" 60
    log "noida-db Kafka service restarted on 127.0.0.1:$KAFKA_PORT ($((SECONDS - t0)) s)"
}

stop_all() {
    if [ -f "$RUN/redis/redis.pid" ]; then
        redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$RUN/redis/redis.pid")" 2>/dev/null || true
        rm -f "$RUN/redis/redis.pid"
    fi
    if [ -d "$RUN/rabbitmq" ]; then
        # A wedged node can leave `rabbitmqctl stop` waiting for ever: give it a minute, then kill.
        timeout -k 5 60 rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1 || true
        local pid
        pid="$(cat "$RUN/rabbitmq/rabbit.pid" 2>/dev/null || true)"
        if [ -n "$pid" ] && grep -q beam "/proc/$pid/cmdline" 2>/dev/null; then
            echo "warning: rabbitmq node $RABBIT_NODE did not stop; killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    stop_kafka
    stop_namespaced_kafka
    rm -f "$RUN/brokers.env"
    wait_ports_free
}

# What each running test broker costs at rest: its processes, their resident memory, their CPU
# over an idle spell, and the start-up time `start` recorded. Prints a Markdown table.
descendants() {  # pid: every process below it
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
broker_pids() {  # name
    local pid
    case $1 in
    redis) cat "$RUN/redis/redis.pid" ;;
    rabbitmq)  # the Erlang VM, its helpers, and the Erlang port mapper it needs
        pid="$(cat "$RUN/rabbitmq/rabbit.pid")"; echo "$pid"; descendants "$pid"; pgrep -x epmd || true ;;
    kafka) pid="$(cat "$RUN/kafka/noida.pid")"; echo "$pid"; descendants "$pid" ;;
    esac
}
broker_costs() {  # idle-seconds
    local idle=$1 name pids ticks0=() i=0 hz
    hz=$(getconf CLK_TCK)
    sum_ticks() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
    local names=(redis rabbitmq kafka) labels=(
        "redis-server $(redis-server --version | awk '{print $3}' | sed 's/v=//')"
        "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null)"
        "noida-db $(python3 -m pip show noida-db 2>/dev/null | awk '/^Version:/ {print $2}') (Kafka protocol, the test stand-in)")
    for name in "${names[@]}"; do
        pids=$(broker_pids "$name" 2>/dev/null | sort -u | tr '\n' ' ')
        [ -n "${pids// }" ] || { echo "error: $name is not running (scripts/brokers.sh start)" >&2; return 1; }
        # shellcheck disable=SC2086
        ticks0[i]=$(sum_ticks $pids); i=$((i + 1))
    done
    sleep "$idle"
    echo "| broker | processes | memory at idle (RSS) | CPU at idle | start-up |"
    echo "|---|---|---:|---:|---:|"
    i=0
    for name in "${names[@]}"; do
        pids=$(broker_pids "$name" 2>/dev/null | sort -u | tr '\n' ' ')
        local count=0 rss=0 comms="" p ticks
        for p in $pids; do
            [ -r "/proc/$p/status" ] || continue
            count=$((count + 1))
            rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
            comms="$comms${comms:+, }$(cat "/proc/$p/comm")"
        done
        # shellcheck disable=SC2086
        ticks=$(( $(sum_ticks $pids) - ticks0[i] )); i=$((i + 1))
        printf '| %s | %d (%s) | %d MiB | %s %% | %s s |\n' "${labels[i - 1]}" "$count" "$comms" $((rss / 1024)) \
            "$(awk -v t="$ticks" -v hz="$hz" -v s="$idle" 'BEGIN { printf "%.1f", t / hz / s * 100 }')" \
            "$(awk -v ms="$(cat "$RUN/startup/$name" 2>/dev/null || echo 0)" 'BEGIN { printf "%.2f", ms / 1000 }')"
    done
}

# A server stopped above may still be exiting (noida-db writes a snapshot first), and one
# from another checkout may hold a port: a start then saw the old server's port open and
# went on without its own (measured: a CI run whose Kafka tests all met "connection
# refused"). Stop returns only once every port is free, or fails naming the port.
wait_ports_free() {
    local port
    for port in "$REDIS_PORT" "$AMQP_PORT" "$AMQPS_PORT" "$AMQP_DIST_PORT" "$KAFKA_PORT" "$KAFKA_TLS_PORT" "$KAFKA_SASL_PORT"; do
        wait_port_closed "the server on port $port" "$port" 60 \
            || { echo "error: port $port is still in use; stop what holds it (ss -ltnp), or move the test brokers with BROKERKIT_*_PORT" >&2; return 1; }
    done
}

case "${1:-}" in
start)
    stop_all
    rm -rf "$RUN"
    mkdir -p "$RUN"
    start_redis
    start_rabbit
    start_kafka
    start_kafka_tls
    start_kafka_sasl
    start_kafka_soak
    cat >"$RUN/brokers.env" <<ENV
export BROKERKIT_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export BROKERKIT_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/
export BROKERKIT_TEST_KAFKA_URL=kafka://127.0.0.1:$KAFKA_PORT
# TLS: the server's certificate names "localhost"; the CA, client certificate and key are in
# BROKERKIT_TEST_TLS_DIR (ca.pem, client.pem, client.key, other-ca.pem).
export BROKERKIT_TEST_AMQPS_URL=amqps://guest:guest@localhost:$AMQPS_PORT/
export BROKERKIT_TEST_TLS_DIR=$RUN/tls
# Kafka over TLS (client certificate required; kafka-server.pem names localhost and 127.0.0.1).
export BROKERKIT_TEST_KAFKA_TLS_URL=kafka+ssl://127.0.0.1:$KAFKA_TLS_PORT
# Kafka with SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), this user and password.
export BROKERKIT_TEST_KAFKA_SASL_URL=kafka://$KAFKA_SASL_USER:$KAFKA_SASL_PASSWORD@127.0.0.1:$KAFKA_SASL_PORT
# For restart tests: how to stop and start each server again.
export BROKERKIT_TEST_AMQP_NODE=$RABBIT_NODE
export BROKERKIT_TEST_REDIS_DIR=$RUN/redis
export BROKERKIT_TEST_REDIS_RESTART="$PWD/scripts/brokers.sh restart-redis"
export BROKERKIT_TEST_KAFKA_RESTART="$PWD/scripts/brokers.sh restart-kafka"
export BROKERKIT_TEST_AMQP_RESTART="$PWD/scripts/brokers.sh restart-rabbitmq"
# For soak runs with network cuts on Kafka: the broker behind this socket advertises this URL,
# where the soak's proxy listens (brokerkit soak --proxy-listen / --proxy-upstream unix:…).
export BROKERKIT_TEST_KAFKA_SOAK_URL=kafka://127.0.0.1:$KAFKA_SOAK_PORT
export BROKERKIT_TEST_KAFKA_SOAK_SOCKET=$RUN/kafka-soak/kafka.sock
export BROKERKIT_TEST_KAFKA_SOAK_RESTART="$PWD/scripts/brokers.sh restart-kafka-soak"
ENV
    log "wrote $RUN/brokers.env"
    ;;
stop)
    stop_all
    log "brokers stopped"
    ;;
restart-redis)
    restart_redis "${2:-0}"
    ;;
restart-kafka)
    restart_kafka "${2:-0}"
    ;;
restart-kafka-soak)
    restart_kafka_soak "${2:-0}"
    ;;
restart-rabbitmq)
    restart_rabbitmq "${2:-0}"
    ;;
status)
    cat "$RUN/brokers.env" 2>/dev/null || echo "not running"
    ;;
costs)
    broker_costs "${2:-10}"
    ;;
*)
    echo "usage: $0 start|stop|status|costs [idle-seconds]|restart-redis|restart-rabbitmq|restart-kafka|restart-kafka-soak [pause-seconds]" >&2
    exit 2
    ;;
esac
