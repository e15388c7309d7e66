#!/usr/bin/env bash
# Builds and runs the chat demo on BROKER_URL (default: the embedded memory:// broker).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
export PATH="/opt/swift/usr/bin:$PATH"
swift build --product brokerkit
exec .build/debug/brokerkit demo "$@"
