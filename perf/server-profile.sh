#!/usr/bin/env bash
# One throughput scenario against ArqonBus (2 shards, plaintext) and nats-server side by
# side, A B A B: deliveries/s, the server's kernel work while it runs (`perf stat`:
# syscalls, io_uring requests, context switches, CPU time over 2 s), the load
# generator's CPU time over the same 2 s, then a `perf record` profile of ArqonBus.
# SCENARIO: the arqonbus-perf scenario and its arguments (default 8 pairs at 16 B);
# NAME: the report's name (default pairs); PLACEMENT=cross (default: each publisher on
# another shard than its first subscriber) or same. (Until 2026-12-05 this script was
# perf/pairs-profile.sh and ran 8 pairs only.)
#
# Usage: [SCENARIO="fanout --subs 64 --size 16"] [NAME=fanout64] perf/server-profile.sh OUT_DIR
#        (root for perf; cargo build --release --locked -p arqonbus -p arqonbus-perf
#        first; nats-server on the PATH)
set -euo pipefail
OUT=${1:?usage: perf/server-profile.sh OUT_DIR}
PLACEMENT=${PLACEMENT:-cross}
SCENARIO=${SCENARIO:-n-to-n --pairs 8 --size 16}
NAME=${NAME:-pairs}
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
read -r -a RUN <<<"$SCENARIO --duration 4"
EV=(-e raw_syscalls:sys_enter -e io_uring:io_uring_submit_req -e context-switches -e cpu-clock)
REPORT="$OUT/$NAME-$PLACEMENT.md"
{
    echo "# \`$SCENARIO\`, placement $PLACEMENT: ArqonBus (2 shards) and nats-server"
    echo
    echo "\`SCENARIO=\"$SCENARIO\" NAME=$NAME PLACEMENT=$PLACEMENT $0 $OUT\` ($(date -u +%F), commit $(git rev-parse --short HEAD); host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, Linux $(uname -r)). Kernel work and both processes' CPU time counted over 2 s in the middle of each 4 s run; the server's CPU per delivery divides its CPU time by the run's mean rate over those 2 s."
    echo
    echo "| run | server | deliveries/s | syscalls | io_uring requests | context switches | server CPU ms | load generator CPU ms | server CPU ns per delivery |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
} >"$REPORT"
for round in 1 2; do
    for side in arqonbus nats; do
        if [ "$side" = arqonbus ]; then PID=$APID; ARGS=("${A_ARGS[@]}"); else PID=$NPID; ARGS=("${N_ARGS[@]}"); fi
        target/release/arqonbus-perf "${ARGS[@]}" "${RUN[@]}" >"$W/r.json" 2>/dev/null &
        RP=$!
        sleep 1.5
        perf stat -e cpu-clock -p "$RP" -x, -o "$W/client.txt" -- sleep 2 &
        CP=$!
        perf stat "${EV[@]}" -p "$PID" -x, -o "$W/stat.txt" -- sleep 2
        wait "$CP"
        wait "$RP"
        python3 - "$W/r.json" "$W/stat.txt" "$W/client.txt" "$round" "$side" >>"$REPORT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
def read(path):
    stat = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) > 3 and not line.startswith("#"):
            stat[f[2]] = float(f[0]) if f[0].replace(".", "").isdigit() else 0
    return stat
stat, client = read(sys.argv[2]), read(sys.argv[3])
rate = r["msgs_per_sec"]
cpu = stat.get("cpu-clock", 0)
per = cpu * 1e6 / (rate * 2) if rate else 0
print(f"| {sys.argv[4]} | {sys.argv[5]} | {rate:,.0f} | {stat.get('raw_syscalls:sys_enter', 0):,.0f} | "
      f"{stat.get('io_uring:io_uring_submit_req', 0):,.0f} | {stat.get('context-switches', 0):,.0f} | {cpu:,.0f} | "
      f"{client.get('cpu-clock', 0):,.0f} | {per:,.0f} |")
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
    perf report -i "$W/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -20 | sed -E 's/ +- +- +$//' || true
    echo '```'
} >>"$REPORT"
# (`|| true`: `head` closes the pipe early, which pipefail would count as a failure.)
# Where the host's two cores go while ArqonBus runs the scenario: by command (the node's
# shard threads, the load generator's threads, the kernel's own) and by kernel or user space.
target/release/arqonbus-perf "${A_ARGS[@]}" "${RUN[@]}" >/dev/null 2>&1 &
RP=$!
sleep 1
perf record -a -F 999 -o "$W/all.data" -- sleep 2 >/dev/null 2>&1
wait "$RP"
{
    echo
    echo "The whole host during a fourth ArqonBus run (\`perf record -a -F 999\`, 2 s), by command and by space (\`[k]\` kernel, \`[.]\` user):"
    echo
    echo '```'
    perf report -i "$W/all.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -8 | sed -E 's/ +$//' || true
    echo
    perf report -i "$W/all.data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -30 | sed -E 's/ +$//' || true
    echo '```'
} >>"$REPORT"
cat "$REPORT"
