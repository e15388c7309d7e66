#!/usr/bin/env bash
# Installs what BrokerKit needs on Debian 12. Usage: scripts/install-deps.sh [build|test]
#   build: the C client libraries the package links (librdkafka, rabbitmq-c, hiredis)
#   test:  plus the real servers and third-party clients the test suite drives
set -euo pipefail
mode="${1:-build}"

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then export PATH="/opt/swift/usr/bin:$PATH"; else
        echo "error: swift (6.x) is not on PATH; install a Swift 6 toolchain first" >&2; exit 1
    fi
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

packages=(pkg-config librdkafka-dev librabbitmq-dev libhiredis-dev)
if [ "$mode" = test ]; then
    packages+=(redis-server rabbitmq-server kcat python3-pip openssl socat iproute2 util-linux)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    # Debian's service scripts must not start system-wide brokers: the tests run their own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$mode" = test ]; then
    # Kafka-protocol broker for tests (no Apache Kafka package is reachable here) and
    # independent clients for interop checks.
    py_missing=()
    command -v noida-db >/dev/null 2>&1 || py_missing+=(noida-db)
    python3 -c "import pika" 2>/dev/null || py_missing+=(pika)
    python3 -c "import redis" 2>/dev/null || py_missing+=(redis)
    if [ "${#py_missing[@]}" -gt 0 ]; then
        echo "==> pip install ${py_missing[*]}"
        python3 -m pip install -q "${py_missing[@]}" 2>/dev/null \
            || python3 -m pip install -q --break-system-packages "${py_missing[@]}"
    fi
fi
