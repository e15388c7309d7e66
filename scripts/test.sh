#!/usr/bin/env bash
# The whole test suite against real Redis, RabbitMQ and a Kafka-protocol broker.
# Installs what is missing, starts the brokers, runs `swift test`, stops the brokers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
export PATH="/opt/swift/usr/bin:$PATH"
trap 'scripts/brokers.sh stop' EXIT
scripts/brokers.sh start
# shellcheck disable=SC1091
source .run/brokers.env
echo "==> swift build --build-tests"
swift build --build-tests
log=.run/swift-test.log
set +e
# Pass 1, one test at a time: everything but the Kafka backend (on a 2-core machine, the CLI
# subprocesses, RabbitMQ and Redis suites running beside the timing-sensitive memory cases
# starved their timers for seconds). Pass 2, one test at a time too: the Kafka backend on its
# own — each librdkafka client runs several threads, and an idle consumer busy-polls noida-db
# (it answers an empty fetch at once); with its 38 conformance cases side by side, a
# mock-cluster group once took over 30 s to assign partitions. Pass 3, serial: tests that
# restart a broker or change its configuration.
echo "==> swift test (main pass)"
swift test --skip-build --no-parallel --skip KafkaBackendTests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "==> swift test (kafka pass)"
swift test --skip-build --no-parallel --filter KafkaBackendTests "$@" 2>&1 | tee "$log.kafka"
kafka_status=${PIPESTATUS[0]}
[ "$kafka_status" = 0 ] || status=$kafka_status
echo "==> swift test (restart pass)"
BROKERKIT_RESTART_TESTS=1 swift test --skip-build --no-parallel --filter "Restart" 2>&1 | tee "$log.restart"
restart_status=${PIPESTATUS[0]}
[ "$restart_status" = 0 ] || status=$restart_status
# One closing line for humans and CI: Swift Testing's totals (XCTest has no tests here).
total=0
failed=0
for f in "$log" "$log.kafka" "$log.restart"; do
    n=$(grep -Eo 'Test run with [0-9]+ tests?' "$f" | tail -n 1 | grep -Eo '[0-9]+' || echo 0)
    k=$( (grep -E '^✘ Test .* failed after' "$f" || true) | sed -E 's/ (failed after|with [0-9]+ test cases failed after).*//' | sort -u | wc -l)
    total=$((total + n)); failed=$((failed + k))
done
if [ "$total" = 0 ] && [ "$status" = 0 ]; then echo "error: no test ran" >&2; status=1; fi
echo "tests: $((total - failed)) passed, $failed failed"
exit "$status"
