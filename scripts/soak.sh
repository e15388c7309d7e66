#!/usr/bin/env bash
# `brokerkit soak` on each backend under the test set-up (the brokers `make test` uses), with
# every fault: workers killed with SIGKILL, broker restarts, network cuts through the soak's
# proxy, a publisher killed mid-batch. Writes the ledgers into docs/reliability.md (between
# its soak markers) and each backend's timeline to docs/soak-<backend>.svg.
# Installs what is missing, starts the brokers, stops them afterwards.
# Usage: scripts/soak.sh [memory|redis|rabbitmq|kafka ...] [messages, default 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
backends=()
messages=100000
for argument in "$@"; do
    case $argument in
    memory | redis | rabbitmq | kafka) backends+=("$argument") ;;
    *[!0-9]* | "") echo "usage: $0 [memory|redis|rabbitmq|kafka ...] [messages]" >&2; exit 2 ;;
    *) messages=$argument ;;
    esac
done
[ ${#backends[@]} -gt 0 ] || backends=(memory redis rabbitmq kafka)
scripts/install-deps.sh test
export PATH="/opt/swift/usr/bin:$PATH"
trap 'scripts/brokers.sh stop' EXIT
scripts/brokers.sh stop >/dev/null 2>&1 || true
scripts/brokers.sh start
# shellcheck disable=SC1091
source .run/brokers.env
echo "==> swift build -c release --product brokerkit"
swift build -c release --product brokerkit
out=.run/soak-results
mkdir -p "$out"
status=0
for backend in "${backends[@]}"; do
    common=(soak --messages "$messages" --settle 900 --format markdown --svg "docs/soak-$backend.svg" --dir ".run/soak/$backend")
    case $backend in
    memory) args=(--broker memory:// --restarts 0 --cuts 0) ;;
    redis) args=(--broker "$BROKERKIT_TEST_REDIS_URL" --restart-command "$BROKERKIT_TEST_REDIS_RESTART") ;;
    rabbitmq) args=(--broker "$BROKERKIT_TEST_AMQP_URL" --restart-command "$BROKERKIT_TEST_AMQP_RESTART") ;;
    kafka)
        port="${BROKERKIT_TEST_KAFKA_SOAK_URL##*:}"
        args=(--broker "$BROKERKIT_TEST_KAFKA_SOAK_URL" --proxy-listen "$port" --proxy-upstream "unix:$BROKERKIT_TEST_KAFKA_SOAK_SOCKET"
              --restart-command "$BROKERKIT_TEST_KAFKA_SOAK_RESTART") ;;
    esac
    echo "==> brokerkit ${common[*]} ${args[*]}"
    rm -rf ".run/soak/$backend"
    echo "\`scripts/soak.sh $backend $messages\` on $(date -u +%Y-%m-%d)" >"$out/$backend.meta"
    if .build/release/brokerkit "${common[@]}" "${args[@]}" >"$out/$backend.md" 2>"$out/$backend.log"; then
        echo "    passed"
    else
        echo "    FAILED (see $out/$backend.log)"; status=1
    fi
    cat "$out/$backend.md"
done
# The tables go between the markers in docs/reliability.md: every backend with results in
# $out (this run's, and earlier runs' for the backends not named this time).
python3 - "$out" <<'PY'
import os, re, sys
out = sys.argv[1]
names = {"memory": "memory://", "redis": "Redis", "rabbitmq": "RabbitMQ", "kafka": "Kafka (noida-db)"}
path = "docs/reliability.md"
text = open(path).read()
begin, end = "<!-- soak:begin -->", "<!-- soak:end -->"
parts = ["Release build, the brokers `make test` starts, all on this 2-core machine.\n"]
for backend in names:
    if not os.path.exists(f"{out}/{backend}.md"):
        continue
    table = open(f"{out}/{backend}.md").read().strip()
    meta = open(f"{out}/{backend}.meta").read().strip() if os.path.exists(f"{out}/{backend}.meta") else "`scripts/soak.sh`"
    parts.append(f"### {names[backend]}\n\n{meta}:\n\n![soak timeline on {names[backend]}](soak-{backend}.svg)\n\n{table}\n")
block = begin + "\n" + "\n".join(parts) + end
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
echo "==> wrote docs/reliability.md (soak section) and docs/soak-*.svg"
exit $status
