#!/usr/bin/env bash
# Runs a local tansu broker on 127.0.0.1:${PORT:-9092} with in-memory storage and the
# three topics of the default configuration, until Ctrl-C. Everything is lost when it
# stops. For trying `serve` and `replay` by hand.
set -euo pipefail

port="${PORT:-9092}"
partitions="${PARTITIONS:-3}"
tansu="$(scripts/setup-tansu.sh)"
url="tcp://127.0.0.1:$port"

"$tansu" broker --listener-url "$url" --advertised-listener-url "$url" --storage-engine memory://tansu/ &
broker_pid=$!
trap 'kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    sleep 0.1
done

"$tansu" topic create sensors.raw --broker "$url" --partitions "$partitions"
"$tansu" topic create sensors.scored --broker "$url" --partitions "$partitions"
"$tansu" topic create sensors.deadletter --broker "$url" --partitions 1
"$tansu" topic create sensors.alerts --broker "$url" --partitions "$partitions"
echo "tansu broker on 127.0.0.1:$port with sensors.raw, sensors.scored, sensors.deadletter, sensors.alerts; Ctrl-C stops it" >&2
wait "$broker_pid"
