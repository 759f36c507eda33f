#!/usr/bin/env bash
# Metrics on versus off, side by side (issue 5: the overhead must stay under 3 %).
#
# Starts two plaintext ArqonBus nodes from the release build: "on" with the default
# [metrics] section (latency sampled one message in 64, the HTTP listener scraped once a
# second by this script, far more often than Prometheus would), "off" with
# [metrics] enabled = false (no sampling, no listener). Shard counters are plain per-shard
# integers and exist in both. One shard each: with two, a publisher and its subscriber land
# on the same shard or on different ones by chance (reuseport hashing), which swings 1→1
# throughput by about 2x and swamps a few percent. Then alternates on/off runs of the same scenarios
# (A B A B ...), takes the median of each side and writes a Markdown table.
#
# Usage: perf/metrics-overhead.sh [ROUNDS] [OUT_FILE]
#   cargo build --release --locked -p arqonbus -p arqonbus-perf first.
set -euo pipefail

ROUNDS=${1:-5}
OUT=${2:-perf/results/$(date -u +%F)-metrics-overhead.md}
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

start() { # name port metrics_enabled
    local name=$1 port=$2 enabled=$3
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name.toml" <<EOF
data_dir = "$WORK/$name"
[server]
listen = "127.0.0.1:$port"
shards = 1
[tls]
enabled = false
[control]
listen = "127.0.0.1:$((port + 1))"
[metrics]
enabled = $enabled
listen = "127.0.0.1:$((port + 2))"
[log]
level = "warn"
EOF
    "$BIN/arqonbus" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        [ -s "$WORK/$name/credentials/bootstrap.token" ] && return 0
        sleep 0.1
    done
    echo "$name did not start; log:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}

start on 7520 true
start off 7530 false
sleep 1

# Scrape the "on" node once a second for the whole run (bounded by the trap).
(while true; do curl -s -o /dev/null "http://127.0.0.1:7522/metrics" || true; sleep 1; done) &
PIDS+=($!)

SCENARIOS=("pubsub --size 128 --duration 2" "pubsub --size 16 --duration 2" "fanout --subs 8 --size 128 --duration 2")
RES="$WORK/results.jsonl"
for r in $(seq "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
        # Alternate which side goes first so drift does not favour one.
        if [ $((r % 2)) -eq 1 ]; then order="on off"; else order="off on"; fi
        for side in $order; do
            port=7520; [ "$side" = off ] && port=7530
            # shellcheck disable=SC2086
            "$BIN/arqonbus-perf" --server "tcp://127.0.0.1:$port" \
                --credential-file "$WORK/$side/credentials/bootstrap.token" $s 2>/dev/null |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"side":sys.argv[1],"scenario":sys.argv[2],"rate":d["result"]["msgs_per_sec"],"complete":d["result"]["complete"]}))' "$side" "$s" >>"$RES"
        done
    done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RES" "$OUT" "$ROUNDS" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import json, statistics, sys
res, out, rounds, commit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in open(res)]
lines = [
    "# Metrics on versus off",
    "",
    f"Command: `perf/metrics-overhead.sh {rounds}` (commit {commit}); plaintext, 1 shard, "
    "release build, runs alternated on/off, median of each side. Deliveries per second.",
    "",
    "| scenario | metrics on | metrics off | on / off | incomplete runs |",
    "|---|---:|---:|---:|---:|",
]
for sc in dict.fromkeys(r["scenario"] for r in rows):
    on = [r["rate"] for r in rows if r["scenario"] == sc and r["side"] == "on"]
    off = [r["rate"] for r in rows if r["scenario"] == sc and r["side"] == "off"]
    bad = sum(1 for r in rows if r["scenario"] == sc and not r["complete"])
    mon, moff = statistics.median(on), statistics.median(off)
    lines.append(f"| `{sc}` | {mon:,.0f} | {moff:,.0f} | {mon / moff:.3f} | {bad} |")
ratios = []
for sc in dict.fromkeys(r["scenario"] for r in rows):
    on = [r["rate"] for r in rows if r["scenario"] == sc and r["side"] == "on"]
    off = [r["rate"] for r in rows if r["scenario"] == sc and r["side"] == "off"]
    ratios.append(statistics.median(on) / statistics.median(off))
lines += ["", f"Geometric mean of on / off: {statistics.geometric_mean(ratios):.3f}."]
lines += ["", "Every run: " + ", ".join(f"{r['side']} {r['rate']:,.0f}" for r in rows), ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
