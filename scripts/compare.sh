#!/usr/bin/env bash
# `brokerkit compare` on all four backends under the test set-up (the brokers `make test`
# uses), written to docs/compare.md and docs/compare.svg, with what each broker costs at rest.
# docs/choosing-a-broker.md cites these numbers, and a test (DocsNumbersTests) fails when it
# cites one that docs/compare.md no longer contains: after a rerun, update the guide.
# Installs what is missing, starts the brokers, stops them afterwards.
# Usage: scripts/compare.sh [extra brokerkit compare options, e.g. --messages 20000]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
export PATH="/opt/swift/usr/bin:$PATH"
trap 'scripts/brokers.sh stop' EXIT
scripts/brokers.sh stop >/dev/null 2>&1 || true
scripts/brokers.sh start
# shellcheck disable=SC1091
source .run/brokers.env
echo "==> swift build -c release --product brokerkit"
swift build -c release --product brokerkit
echo "==> broker costs at rest (10 s idle)"
costs=$(scripts/brokers.sh costs 10)
echo "$costs"
args=(compare --broker memory:// --broker "$BROKERKIT_TEST_REDIS_URL" --broker "$BROKERKIT_TEST_AMQP_URL"
      --broker "$BROKERKIT_TEST_KAFKA_URL" --rounds 3 --format markdown --chart docs/compare.svg "$@")
echo "==> brokerkit ${args[*]}"
table=$(.build/release/brokerkit "${args[@]}")
matrix=$(.build/release/brokerkit capabilities --format markdown)
{
    echo "# brokerkit compare: the same work on every backend"
    echo
    echo "Written by \`scripts/compare.sh$(printf ' %s' "$@")\` (release build; brokers as \`make test\` starts them,"
    echo "all on this one machine, on loopback). Each scenario ran 3 times on each backend; a row is the"
    echo "round with the median throughput, and its last column gives the range of all three. Rerun it"
    echo "before you quote the numbers for another machine. The guide that reads them is"
    echo "[choosing-a-broker.md](choosing-a-broker.md)."
    echo
    echo "![throughput and p99 latency per scenario and backend](compare.svg)"
    echo
    echo "$table"
    echo
    echo "## What each broker costs at rest"
    echo
    echo "Measured by \`scripts/brokers.sh costs\` right after start-up: every process of the broker, their"
    echo "resident memory, their CPU over 10 idle seconds, and the time from the launch command until"
    echo "the broker accepted connections."
    echo
    echo "$costs"
    echo
    echo "## Capability matrix"
    echo
    echo "Printed by \`brokerkit capabilities --format markdown\` from the flags each backend declares in code;"
    echo "the conformance suite runs every case a backend claims."
    echo
    echo "$matrix"
} >docs/compare.md
echo "==> wrote docs/compare.md and docs/compare.svg"
