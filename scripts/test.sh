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
echo "==> swift test"
swift test --skip-build "$@"
