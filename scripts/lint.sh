#!/usr/bin/env bash
# Checks what a reviewer should not have to: the code is formatted as .swift-format says
# (swift-nio's settings, lines of at most 120), and the BrokerAPI documentation catalog builds
# without a warning (unresolved symbol links, missing articles). `scripts/lint.sh format`
# rewrites the code in place instead of checking it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
paths=(Package.swift Sources Tests Benchmarks)
if [ "${1:-}" = format ]; then
    swift format format --in-place --recursive --parallel "${paths[@]}"
    exit 0
fi
echo "==> swift format lint"
swift format lint --strict --recursive --parallel "${paths[@]}"
echo "==> DocC (BrokerAPI)"
swift package --disable-sandbox --allow-writing-to-directory .build/docs \
    generate-documentation --target BrokerAPI --warnings-as-errors --output-path .build/docs
