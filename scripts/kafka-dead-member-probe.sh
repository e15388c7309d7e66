#!/usr/bin/env bash
# Does this Kafka broker evict a consumer-group member that died without leaving?
#
#   scripts/kafka-dead-member-probe.sh HOST:PORT [SESSION_MS]
#
# Uses kcat only (librdkafka's balanced consumer, no BrokerKit code): members A and B join a
# group, B is killed with SIGKILL (no LeaveGroup), C joins. A broker that follows the Kafka
# protocol removes B once its session times out and completes the rebalance, so C is assigned
# within SESSION_MS plus a few seconds. Exit 0: it did ("evicts"). Exit 3: the rebalance was
# still held after SESSION_MS + 15 s ("holds"), with the kcat logs printed. Exit 2: the probe
# itself could not run (no broker, no group forming).
#
# Why it exists: BrokerKit's Kafka soak (issue 24) kills a worker and starts it again; on a
# broker that holds the rebalance for the dead member, every group stops. The soak test runs
# this probe when a Kafka group stalls, to tell the broker's behaviour from BrokerKit's.
set -u
broker=${1:?usage: kafka-dead-member-probe.sh HOST:PORT [SESSION_MS]}
session=${2:-6000}
dir=$(mktemp -d)
topic="bk-probe-$$-$RANDOM"
group="bk-probe-$$-$RANDOM"
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

member() {  # name
    kcat -b "$broker" -G "$group" -X session.timeout.ms="$session" -X heartbeat.interval.ms=500 \
        -o end -u -q -v "$topic" >"$dir/$1.log" 2>&1 &
    pids+=($!)
    last=$!
    disown "$last"  # no "Killed" job notice for B
}
joined() { grep -q "rebalanced.*assigned" "$dir/$1.log" 2>/dev/null; }
wait_for() {  # seconds command...
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

echo probe | kcat -b "$broker" -P -t "$topic" 2>"$dir/produce.log" || { echo "cannot produce to $broker"; cat "$dir/produce.log"; exit 2; }
member A
wait_for 30 joined A || { echo "member A never joined"; cat "$dir/A.log"; exit 2; }
member B
b=$last
wait_for 30 joined B || { echo "member B never joined"; cat "$dir/A.log" "$dir/B.log"; exit 2; }
kill -9 "$b"
t0=$SECONDS
member C
if wait_for $((session / 1000 + 15)) joined C; then
    echo "evicts: $broker removed the SIGKILLed member; the next member was assigned after $((SECONDS - t0)) s (session.timeout.ms $session)"
    exit 0
fi
echo "holds: $broker kept the rebalance waiting for the SIGKILLed member for $((SECONDS - t0)) s (session.timeout.ms $session): the group stays stopped"
for m in A B C; do sed "s/^/  $m: /" "$dir/$m.log" | grep -i -E "rebalanc|error|fail" | tail -5; done
exit 3
