#!/usr/bin/env bash
# Two ArqonBus configurations side by side: A B A B ... over the same scenarios, the
# median of each side, and a Markdown table with the command that made it.
#
# Each side is NAME:SHARDS:METRICS[:BINARY] (METRICS = true or false for [metrics] enabled;
# BINARY defaults to target/release/arqonbus, another path compares two builds). Both nodes
# run plaintext at the same time (an idle node costs ~0 CPU), on ports 7520+ and 7530+.
# Runs alternate which side goes first, so drift favours neither.
#
# Usage:
#   perf/ab.sh --title TEXT --a NAME:SHARDS:METRICS[:BINARY] --b NAME:SHARDS:METRICS[:BINARY]
#              [--rounds N] [--out FILE] [--scrape NAME] [--placement any|same|cross]
#              -- 'SCENARIO ARGS' ['SCENARIO ARGS' ...]
#   --scrape NAME: GET that side's /metrics once a second during the whole comparison.
#   cargo build --release --locked -p arqonbus -p arqonbus-perf first.
# Examples: perf/metrics-overhead.sh, perf/scaling.sh.
set -euo pipefail

TITLE="" A="" B="" ROUNDS=5 OUT="" SCRAPE="" PLACEMENT=any
while [ $# -gt 0 ]; do
    case $1 in
        --title) TITLE=$2; shift 2 ;;
        --a) A=$2; shift 2 ;;
        --b) B=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --scrape) SCRAPE=$2; shift 2 ;;
        --placement) PLACEMENT=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "perf/ab.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
SCENARIOS=("$@")
if [ -z "$TITLE" ] || [ -z "$A" ] || [ -z "$B" ] || [ -z "$OUT" ] || [ ${#SCENARIOS[@]} -eq 0 ]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
COMMAND="$0 $(printf '%q ' --title "$TITLE" --a "$A" --b "$B" --rounds "$ROUNDS" --out "$OUT" ${SCRAPE:+--scrape "$SCRAPE"} --placement "$PLACEMENT" -- "${SCENARIOS[@]}")"

BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

declare -A PORT
start() { # NAME:SHARDS:METRICS[:BINARY] port
    local name shards metrics binary port=$2
    IFS=: read -r name shards metrics binary <<<"$1"
    binary=${binary:-$BIN/arqonbus}
    PORT[$name]=$port
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name.toml" <<EOF
data_dir = "$WORK/$name"
[server]
listen = "127.0.0.1:$port"
shards = $shards
[tls]
enabled = false
[control]
listen = "127.0.0.1:$((port + 1))"
[metrics]
enabled = $metrics
listen = "127.0.0.1:$((port + 2))"
[log]
level = "warn"
EOF
    # A harness that places publishers (cross or same shard) needs tenants whose
    # connections stay where steering put them, not moved to a home shard.
    if [ "$PLACEMENT" != any ]; then
        printf '[steering]\ndefault_placement = "spread"\n' >>"$WORK/$name.toml"
    fi
    "$binary" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        [ -s "$WORK/$name/credentials/bootstrap.token" ] && return 0
        sleep 0.1
    done
    echo "$name did not start; log:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}

start "$A" 7520
start "$B" 7530
NAME_A=${A%%:*}
NAME_B=${B%%:*}
sleep 1

if [ -n "$SCRAPE" ]; then
    (while true; do curl -s -o /dev/null "http://127.0.0.1:$((PORT[$SCRAPE] + 2))/metrics" || true; sleep 1; done) &
    PIDS+=($!)
fi

RES="$WORK/results.jsonl"
for r in $(seq "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
        if [ $((r % 2)) -eq 1 ]; then order="$NAME_A $NAME_B"; else order="$NAME_B $NAME_A"; fi
        for side in $order; do
            # shellcheck disable=SC2086
            "$BIN/arqonbus-perf" --placement "$PLACEMENT" --server "tcp://127.0.0.1:${PORT[$side]}" \
                --credential-file "$WORK/$side/credentials/bootstrap.token" $s 2>/dev/null |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"side":sys.argv[1],"scenario":sys.argv[2],"rate":d["result"]["msgs_per_sec"],"complete":d["result"]["complete"]}))' "$side" "$s" >>"$RES"
        done
    done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RES" "$OUT" "$TITLE" "$COMMAND" "$NAME_A" "$NAME_B" "$A" "$B" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import json, statistics, sys
res, out, title, command, a, b, spec_a, spec_b, commit = sys.argv[1:10]
rows = [json.loads(l) for l in open(res)]
lines = [
    f"# {title}",
    "",
    f"Command: `{command}` (commit {commit}, release build, plaintext). Sides: "
    f"`{spec_a}` and `{spec_b}` (name:shards:metrics[:binary]). Runs alternated, median of each side; "
    "deliveries per second.",
    "",
    f"| scenario | {a} | {b} | {a} / {b} | incomplete runs |",
    "|---|---:|---:|---:|---:|",
]
ratios = []
for sc in dict.fromkeys(r["scenario"] for r in rows):
    va = [r["rate"] for r in rows if r["scenario"] == sc and r["side"] == a]
    vb = [r["rate"] for r in rows if r["scenario"] == sc and r["side"] == b]
    bad = sum(1 for r in rows if r["scenario"] == sc and not r["complete"])
    ma, mb = statistics.median(va), statistics.median(vb)
    ratios.append(ma / mb)
    lines.append(f"| `{sc}` | {ma:,.0f} | {mb:,.0f} | {ma / mb:.3f} | {bad} |")
lines += ["", f"Geometric mean of {a} / {b}: {statistics.geometric_mean(ratios):.3f}."]
lines += ["", "Every run: " + ", ".join(f"{r['side']} {r['rate']:,.0f}" for r in rows), ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
