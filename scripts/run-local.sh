#!/usr/bin/env bash
# Runs atkafka-host against the live relay. Without BOOTSTRAP_SERVERS it starts a Tansu broker
# with in-memory storage on 127.0.0.1:9092 and stops it on exit.
#
# Environment: RELAY_HOST (default wss://bsky.network), BOOTSTRAP_SERVERS, OUTPUT_TOPIC (default
# atproto-events), CURSOR_FILE (keeps the cursor across runs; none by default), ARGS (further
# atkafka-host flags, for example "--osprey-compatible").
set -euo pipefail

host_bin=${1:?usage: run-local.sh PATH_TO_ATKAFKA_HOST}
relay_host=${RELAY_HOST:-wss://bsky.network}
output_topic=${OUTPUT_TOPIC:-atproto-events}
bootstrap_servers=${BOOTSTRAP_SERVERS:-}

if [ -z "$bootstrap_servers" ]; then
  "$(dirname "$0")/install-deps.sh" tansu
  bootstrap_servers=127.0.0.1:9092
  log=$(mktemp -t atkafka-tansu.XXXXXX.log)
  tansu broker --listener-url tcp://$bootstrap_servers --advertised-listener-url tcp://$bootstrap_servers \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  broker_pid=$!
  trap 'kill "$broker_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/9092") 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "started a Tansu broker on $bootstrap_servers (in memory; log: $log)"
fi

cursor_args=()
if [ -n "${CURSOR_FILE:-}" ]; then cursor_args=(--cursor-file "$CURSOR_FILE"); fi

# shellcheck disable=SC2086 # ARGS holds several flags on purpose.
"$host_bin" --relay-host "$relay_host" --bootstrap-servers "$bootstrap_servers" \
  --output-topic "$output_topic" --metrics-listen-address 127.0.0.1:2112 "${cursor_args[@]}" ${ARGS:-}
