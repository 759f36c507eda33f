#!/usr/bin/env bash
# 8 publisher/subscriber pairs at 16 B against ArqonBus (2 shards, plaintext) and
# nats-server side by side, A B A B: messages/s, and the server's kernel work while it
# runs (`perf stat`: syscalls, io_uring requests, context switches, CPU time over 2 s),
# then a `perf record` profile of ArqonBus. PLACEMENT=cross (default: each publisher on
# another shard than its subscriber) or same.
#
# Usage: perf/pairs-profile.sh OUT_DIR   (root for perf; cargo build --release --locked
#        -p arqonbus -p arqonbus-perf first; nats-server on the PATH)
set -euo pipefail
OUT=${1:?usage: perf/pairs-profile.sh OUT_DIR}
PLACEMENT=${PLACEMENT:-cross}
mkdir -p "$OUT"
W=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM
cat >"$W/a.toml" <<T
data_dir = "$W/a"
[server]
listen = "127.0.0.1:7620"
shards = 2
[tls]
enabled = false
[control]
listen = "127.0.0.1:7621"
[metrics]
enabled = false
listen = "127.0.0.1:7622"
[log]
level = "warn"
[steering]
default_placement = "spread"
T
target/release/arqonbus serve --config "$W/a.toml" >"$W/a.log" 2>&1 &
APID=$!
PIDS+=("$APID")
taskset -c 0,1 nats-server -a 127.0.0.1 -p 4322 >"$W/n.log" 2>&1 &
NPID=$!
PIDS+=("$NPID")
for _ in $(seq 100); do [ -s "$W/a/credentials/bootstrap.token" ] && break; sleep 0.1; done
A_ARGS=(--server tcp://127.0.0.1:7620 --credential-file "$W/a/credentials/bootstrap.token" --placement "$PLACEMENT")
N_ARGS=(--driver nats --server tcp://127.0.0.1:4322)
RUN=(n-to-n --pairs 8 --size 16 --duration 4)
EV=(-e raw_syscalls:sys_enter -e io_uring:io_uring_submit_req -e context-switches -e cpu-clock)
REPORT="$OUT/pairs-$PLACEMENT.md"
{
    echo "# 8 pairs, 16 B, placement $PLACEMENT: ArqonBus (2 shards) and nats-server"
    echo
    echo "\`PLACEMENT=$PLACEMENT $0 $OUT\` ($(date -u +%F), commit $(git rev-parse --short HEAD)). Kernel work counted over 2 s in the middle of each 4 s run."
    echo
    echo "| run | server | msgs/s | syscalls | io_uring requests | context switches | CPU ms |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
} >"$REPORT"
for round in 1 2; do
    for side in arqonbus nats; do
        if [ "$side" = arqonbus ]; then PID=$APID; ARGS=("${A_ARGS[@]}"); else PID=$NPID; ARGS=("${N_ARGS[@]}"); fi
        target/release/arqonbus-perf "${ARGS[@]}" "${RUN[@]}" >"$W/r.json" 2>/dev/null &
        RP=$!
        sleep 1.5
        perf stat "${EV[@]}" -p "$PID" -x, -o "$W/stat.txt" -- sleep 2
        wait "$RP"
        python3 - "$W/r.json" "$W/stat.txt" "$round" "$side" >>"$REPORT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
stat = {}
for line in open(sys.argv[2]):
    f = line.strip().split(",")
    if len(f) > 3 and not line.startswith("#"):
        stat[f[2]] = float(f[0]) if f[0].replace(".", "").isdigit() else 0
print(f"| {sys.argv[3]} | {sys.argv[4]} | {r['msgs_per_sec']:,.0f} | {stat.get('raw_syscalls:sys_enter', 0):,.0f} | "
      f"{stat.get('io_uring:io_uring_submit_req', 0):,.0f} | {stat.get('context-switches', 0):,.0f} | {stat.get('cpu-clock', 0):,.0f} |")
PY
    done
done
target/release/arqonbus-perf "${A_ARGS[@]}" "${RUN[@]}" >/dev/null 2>&1 &
RP=$!
sleep 1
perf record -F 1999 -p "$APID" -o "$W/perf.data" -- sleep 2 >/dev/null 2>&1
wait "$RP"
{
    echo
    echo "ArqonBus's hottest symbols (\`perf record -F 1999\`, 2 s of a third run):"
    echo
    echo '```'
    perf report -i "$W/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -20 | sed -E 's/ +- +- +$//'
    echo '```'
} >>"$REPORT"
cat "$REPORT"
