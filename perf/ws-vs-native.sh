#!/usr/bin/env bash
# The WebSocket edge against the native protocol on the same server, and nats-server's
# TCP and WebSocket listeners beside them, in one run: 1->1 (publisher on its
# subscriber's shard) and fan-out 1->64 at 128 B, the four interleaved (native, ws,
# nats, nats-ws, twice); then idle RSS per connection, each on a fresh server.
# Plaintext everywhere (one ArqonBus server serves both its listeners, one nats-server
# both of its), ArqonBus with 2 shards and a `spread` default placement (a WebSocket
# connection stays where it was accepted), nats-server 2.9 with its defaults (no
# WebSocket compression).
#
# Usage: perf/ws-vs-native.sh OUT_DIR [RUN_NAME]
#   cargo build --release --locked -p arqonbus -p arqonbus-perf first.
# Writes OUT_DIR/RUN_NAME.jsonl (one JSON object per scenario run, with "system" and
# "scenario" added) and prints a table.
set -euo pipefail

OUT=${1:?usage: perf/ws-vs-native.sh OUT_DIR [RUN_NAME]}
RUN=${2:-run}
BIN=${BIN:-target/release}
NATS=${NATS:-nats-server}
DURATION=${DURATION:-3}
IDLE=${IDLE:-10000}
mkdir -p "$OUT"
JSONL="$OUT/$RUN.jsonl"
: >"$JSONL"
WORK=$(mktemp -d)
PID=""
NPID=""
cleanup() {
    for p in $PID $NPID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
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

start_nats() {
    cat >"$WORK/nats.conf" <<EOF
listen: "127.0.0.1:7630"
websocket {
  listen: "127.0.0.1:7631"
  no_tls: true
  compression: false
}
EOF
    "$NATS" -c "$WORK/nats.conf" 2>"$WORK/nats.log" &
    NPID=$!
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/7631) 2>/dev/null && break
        sleep 0.1
    done
}

stop() {
    for p in $PID $NPID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PID="" NPID=""
}

run() { # system scenario args...
    local system=$1 scenario=$2 url
    shift 2
    local auth=(--credential-file "$TOKEN" --server-pid "$PID")
    case "$system" in
        native) url=tcp://127.0.0.1:7620 ;;
        ws) url=tcp://127.0.0.1:7623 ;;
        nats) url=tcp://127.0.0.1:7630 auth=(--server-pid "$NPID") ;;
        nats-ws) url=tcp://127.0.0.1:7631 auth=(--server-pid "$NPID") ;;
    esac
    "$BIN/arqonbus-perf" --driver "$system" --server "$url" "${auth[@]}" "$@" 2>>"$WORK/perf.log" |
        jq -c --arg system "$system" --arg scenario "$scenario" '. + {system: $system, scenario: $scenario}' >>"$JSONL"
}

start throughput
start_nats
for system in native ws nats nats-ws native ws nats nats-ws; do
    run "$system" pubsub-128 --placement same pubsub --size 128 --duration "$DURATION"
    run "$system" fanout64-128 fanout --subs 64 --size 128 --duration "$DURATION"
done
stop
for system in native ws; do
    start "idle-$system"
    run "$system" idle idle --connections "$IDLE"
    stop
done
for system in nats nats-ws; do
    start_nats
    run "$system" idle idle --connections "$IDLE"
    stop
done

echo "# $RUN ($(date -u +%FT%TZ), $(git rev-parse --short HEAD))"
jq -rs '
  group_by(.scenario)[] | . as $rows |
  "\($rows[0].scenario):" + ([ "native", "ws", "nats", "nats-ws" ] | map(. as $s |
    "  \($s) " + ($rows | map(select(.system == $s)) | map(.result.msgs_per_sec // .result.bytes_per_connection | floor | tostring) | join(", "))
  ) | join(""))
' "$JSONL"
