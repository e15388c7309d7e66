#!/usr/bin/env bash
# Fuzzes what BrokerKit reads from outside with libFuzzer and AddressSanitizer: the broker
# URL and options, the JSON config file, and each backend's record decoding (Redis replies,
# AMQP content headers, Kafka records). Each target starts from its committed seed corpus
# (Fuzz/corpus/<target>) and the inputs of crashes already fixed (Fuzz/regressions/<target>)
# and runs for a bounded time. New inputs go to .run/fuzz/<target>; a crash leaves its input
# in .run/fuzz/crashes/<target>/ and fails the run. Fix it, then commit the input under
# Fuzz/regressions/<target>/ so the unit tests (FuzzCorpusTests) replay it from then on.
# Usage: scripts/fuzz.sh [seconds per target, default 60] [url|config|redis|amqp|kafka ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
targets=()
for argument in "$@"; do
    case $argument in
    url | config | redis | amqp | kafka) targets+=("$argument") ;;
    *[!0-9]* | "") echo "usage: $0 [seconds] [url|config|redis|amqp|kafka ...]" >&2; exit 2 ;;
    *) seconds=$argument ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(url config redis amqp kafka)
scripts/install-deps.sh build
export PATH="/opt/swift/usr/bin:$PATH"
echo "==> swift build (libFuzzer + AddressSanitizer) --product brokerkit-fuzz"
swift build --scratch-path .build-fuzz --product brokerkit-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DBROKERKIT_LIBFUZZER -Xswiftc -use-ld=lld
binary=.build-fuzz/debug/brokerkit-fuzz
status=0
for target in "${targets[@]}"; do
    work=.run/fuzz/$target crashes=.run/fuzz/crashes/$target
    mkdir -p "$work" "$crashes"
    corpora=("$work" "Fuzz/corpus/$target")
    [ -d "Fuzz/regressions/$target" ] && corpora+=("Fuzz/regressions/$target")
    echo "==> fuzz $target for ${seconds} s"
    # Leak checks are off: the Swift runtime's caches live until exit by design.
    if ASAN_OPTIONS=detect_leaks=0 BROKERKIT_FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=8192 -detect_leaks=0 -print_final_stats=1 -artifact_prefix="$crashes/" "${corpora[@]}" \
        >".run/fuzz/$target.log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|new_units_added)|^Done' ".run/fuzz/$target.log" | tr '\n' ' '
        echo
    else
        status=1
        echo "    FAILED: $target (log .run/fuzz/$target.log, input in $crashes/)"
        grep -E 'ERROR|fuzz invariant|Fatal error|SUMMARY' ".run/fuzz/$target.log" | head -5
    fi
done
exit $status
