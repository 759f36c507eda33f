#!/usr/bin/env bash
# The WebSocket edge against the native protocol on the same server, in one run:
# 1->1 (publisher on its subscriber's shard) and fan-out 1->64 at 128 B, native and
# WebSocket interleaved; then idle RSS per connection, each on a fresh server.
# Plaintext on both sides (the same server serves both listeners), 2 shards, a
# `spread` default placement (a WebSocket connection stays where it was accepted).
#
# Usage: perf/ws-vs-native.sh OUT_DIR [RUN_NAME]
#   cargo build --release --locked -p arqonbus -p arqonbus-perf first.
# Writes OUT_DIR/RUN_NAME.jsonl (one JSON object per scenario run, with "system" and
# "scenario" added) and prints a table.
set -euo pipefail

OUT=${1:?usage: perf/ws-vs-native.sh OUT_DIR [RUN_NAME]}
RUN=${2:-run}
BIN=${BIN:-target/release}
DURATION=${DURATION:-3}
IDLE=${IDLE:-5000}
mkdir -p "$OUT"
JSONL="$OUT/$RUN.jsonl"
: >"$JSONL"
WORK=$(mktemp -d)
PID=""
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

start() { # name
    local dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$WORK/$1.toml" <<EOF
data_dir = "$dir/data"
[server]
listen = "127.0.0.1:7620"
shards = 2
[tls]
enabled = false
[control]
listen = "127.0.0.1:7621"
[metrics]
enabled = false
[log]
level = "warn"
[steering]
default_placement = "spread"
[websocket]
enabled = true
listen = "127.0.0.1:7623"
EOF
    "$BIN/arqonbus" serve --config "$WORK/$1.toml" 2>"$dir/server.log" &
    PID=$!
    for _ in $(seq 1 100); do
        [ -f "$dir/data/credentials/bootstrap.token" ] && (exec 3<>/dev/tcp/127.0.0.1/7623) 2>/dev/null && break
        sleep 0.1
    done
    TOKEN="$dir/data/credentials/bootstrap.token"
}

stop() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}

run() { # system scenario args...
    local system=$1 scenario=$2; shift 2
    local url driver
    if [ "$system" = ws ]; then url=tcp://127.0.0.1:7623 driver=ws; else url=tcp://127.0.0.1:7620 driver=native; fi
    "$BIN/arqonbus-perf" --driver "$driver" --server "$url" --credential-file "$TOKEN" \
        --server-pid "$PID" "$@" 2>>"$WORK/perf.log" |
        jq -c --arg system "$system" --arg scenario "$scenario" '. + {system: $system, scenario: $scenario}' >>"$JSONL"
}

start throughput
for system in native ws native ws; do
    run "$system" pubsub-128 --placement same pubsub --size 128 --duration "$DURATION"
    run "$system" fanout64-128 fanout --subs 64 --size 128 --duration "$DURATION"
done
stop
for system in native ws; do
    start "idle-$system"
    run "$system" idle idle --connections "$IDLE"
    stop
done

echo "# $RUN ($(date -u +%FT%TZ), $(git rev-parse --short HEAD))"
jq -rs '
  group_by(.scenario)[] | . as $rows |
  ($rows | map(select(.system == "native")) | map(.result.msgs_per_sec // .result.bytes_per_connection) ) as $n |
  ($rows | map(select(.system == "ws")) | map(.result.msgs_per_sec // .result.bytes_per_connection) ) as $w |
  "\($rows[0].scenario): native \($n | map(floor) | join(", "))  ws \($w | map(floor) | join(", "))"
' "$JSONL"
