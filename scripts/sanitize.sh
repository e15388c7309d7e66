#!/usr/bin/env bash
# The sanitizer passes, each a build of its own (.build-tsan, .build-asan):
#   thread:  ThreadSanitizer over the core — the memory:// conformance suite and the
#            BrokerAPI tests (DeliveryProcessor, JobWorker, retries, the delivery buffer);
#   address: AddressSanitizer over the backends' own tests against the real brokers (the
#            hostile-input, fault-path, interop and mock-cluster fault tests, and the fuzz corpus
#            replay), where BrokerKit's code handles the C clients' memory.
# Installs what is missing; starts the brokers for the address pass and stops them after.
# Usage: scripts/sanitize.sh [thread|address ...]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
passes=("$@")
[ ${#passes[@]} -gt 0 ] || passes=(thread address)
for pass in "${passes[@]}"; do
    case $pass in thread | address) ;; *) echo "usage: $0 [thread|address ...]" >&2; exit 2 ;; esac
done
scripts/install-deps.sh test
export PATH="/opt/swift/usr/bin:$PATH"
status=0
for pass in "${passes[@]}"; do
    [ "$pass" = thread ] && scratch=.build-tsan || scratch=.build-asan
    # BROKERKIT_TSAN: a Mutex ThreadSanitizer can see (Sources/BrokerAPI/Support/TSanMutex.swift).
    defines=()
    [ "$pass" = thread ] && defines=(-Xswiftc -DBROKERKIT_TSAN)
    echo "==> swift build --build-tests --sanitize=$pass ${defines[*]} ($scratch)"
    swift build --build-tests --scratch-path "$scratch" --sanitize="$pass" "${defines[@]}"
    log=.run/sanitize-$pass.log
    mkdir -p .run
    set +e
    if [ "$pass" = thread ]; then
        echo "==> swift test --sanitize=thread (memory conformance, BrokerAPI)"
        TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
            swift test --skip-build --scratch-path "$scratch" --sanitize=thread "${defines[@]}" --no-parallel \
            --filter "MemoryConformanceTests|BrokerAPITests" 2>&1 | tee "$log"
        result=${PIPESTATUS[0]}
    else
        trap 'scripts/brokers.sh stop' EXIT
        scripts/brokers.sh start
        # shellcheck disable=SC1091
        source .run/brokers.env
        echo "==> swift test --sanitize=address (backend tests, fuzz corpus)"
        # Leak checks are off: the Swift runtime's caches live until exit by design.
        ASAN_OPTIONS="detect_leaks=0 halt_on_error=1" \
            swift test --skip-build --scratch-path "$scratch" --sanitize=address --no-parallel \
            --filter "FuzzTests|HiredisLinkTests|RedisAckTests|RedisForeignInputTests|RedisInteropTests|RabbitBadInputTests|RabbitFaultPathTests|RabbitInteropTests|RabbitAckTests|KafkaForeignInputTests|KafkaFaultTests|KafkaProducerTests|KafkaInteropTests|KafkaTopicNameTests" \
            2>&1 | tee "$log"
        result=${PIPESTATUS[0]}
        scripts/brokers.sh stop
        trap - EXIT
    fi
    set -e
    if [ "$result" != 0 ] || grep -qE "WARNING: ThreadSanitizer|ERROR: AddressSanitizer" "$log"; then
        echo "==> $pass sanitizer pass FAILED (log $log)"; status=1
    else
        echo "==> $pass sanitizer pass clean"
    fi
done
exit $status
