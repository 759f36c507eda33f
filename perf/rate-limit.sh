#!/usr/bin/env bash
# A tenant's messages-per-second limit, measured on the running server (issue 4: a tenant-wide
# rate is split across shards and rebalanced so that the tenant's total holds within 10 %).
#
# Starts one plaintext 2-shard node from the release build (ports 7540-7542), creates with
# arqonctl a tenant "limited" with --messages-per-second RATE, a principal and a bearer
# credential, then runs, ROUNDS times each:
#   pubsub      one publisher: its shard starts with half the rate and must win the idle
#               shard's share from the rebalancer to reach the whole rate;
#   n-to-n --pairs 8  eight publishers hashed over both shards, each shard throttled.
# Each run publishes RATE x SECS messages in total, as fast as the client can write, so the
# server is always over the limit; the figure is deliveries per second from the first write to
# the last delivery (nothing is dropped: a publish over the rate is held). Writes a Markdown
# table with the command that made it.
#
# Usage: perf/rate-limit.sh [RATE] [SECS] [ROUNDS] [OUT_FILE]
#   cargo build --release --locked -p arqonbus -p arqonbus-cli -p arqonbus-perf first.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-100000} SECS=${2:-10} ROUNDS=${3:-3}
OUT=${4:-perf/results/$(date -u +%F)-rate-limit.md}
COMMAND="perf/rate-limit.sh $RATE $SECS $ROUNDS $OUT"

BIN=target/release
WORK=$(mktemp -d)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

PORT=7540
cat >"$WORK/node.toml" <<EOF
data_dir = "$WORK/data"
[server]
listen = "127.0.0.1:$PORT"
shards = 2
[tls]
enabled = false
[control]
listen = "127.0.0.1:$((PORT + 1))"
[metrics]
listen = "127.0.0.1:$((PORT + 2))"
[log]
level = "warn"
EOF
"$BIN/arqonbus" serve --config "$WORK/node.toml" >"$WORK/node.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
    [ -s "$WORK/data/credentials/admin.token" ] && break
    sleep 0.1
done
ctl() { "$BIN/arqonctl" --server "https://127.0.0.1:$((PORT + 1))" --data-dir "$WORK/data" --json "$@"; }
for _ in $(seq 50); do ctl node status >/dev/null 2>&1 && break; sleep 0.1; done
ctl tenants create limited --messages-per-second "$RATE" >/dev/null
principal=$(ctl principals create --tenant limited load |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
(umask 077; ctl credentials issue --principal "$principal" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"], end="")' >"$WORK/limited.token")

TOTAL=$((RATE * SECS))
SCENARIOS=("pubsub --size 128 --count $TOTAL --duration 600"
    "n-to-n --pairs 8 --size 128 --count $((TOTAL / 8)) --duration 600")
RES="$WORK/results.jsonl"
for _ in $(seq "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
        # shellcheck disable=SC2086
        "$BIN/arqonbus-perf" --server "tcp://127.0.0.1:$PORT" --credential-file "$WORK/limited.token" \
            $s 2>/dev/null |
            python3 -c 'import json,sys; r=json.load(sys.stdin)["result"]; print(json.dumps({"scenario":sys.argv[1],"rate":r["msgs_per_sec"],"delivered":r["delivered"],"complete":r["complete"]}))' "$s" >>"$RES"
    done
done
throttled=$(curl -s "http://127.0.0.1:$((PORT + 2))/metrics" |
    awk '/^arqonbus_throttled_total/ {s += $2} END {print s + 0}')

mkdir -p "$(dirname "$OUT")"
python3 - "$RES" "$OUT" "$COMMAND" "$RATE" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$throttled" <<'EOF'
import json, statistics, sys
res, out, command, rate, commit, throttled = sys.argv[1:7]
rate = int(rate)
rows = [json.loads(l) for l in open(res)]
lines = [
    f"# A tenant's rate limit on a running node ({rate:,} msgs/s, 2 shards)",
    "",
    f"Command: `{command}` (commit {commit}, release build, plaintext, 128 B payloads). "
    "Deliveries per second from the first write to the last delivery; median of the runs.",
    "",
    "| scenario | limit | delivered/s (median) | / limit | worst run / limit | runs | incomplete |",
    "|---|---:|---:|---:|---:|---:|---:|",
]
for sc in dict.fromkeys(r["scenario"] for r in rows):
    v = [r["rate"] for r in rows if r["scenario"] == sc]
    worst = max(v, key=lambda x: abs(x - rate))
    bad = sum(1 for r in rows if r["scenario"] == sc and not r["complete"])
    m = statistics.median(v)
    lines.append(f"| `{sc}` | {rate:,} | {m:,.0f} | {m / rate:.3f} | {worst / rate:.3f} | {len(v)} | {bad} |")
lines += ["", f"Publishes held by the limit (`arqonbus_throttled_total`, all runs): {int(float(throttled)):,}."]
lines += ["", "Every run: " + ", ".join(f"`{r['scenario'].split()[0]}` {r['rate']:,.0f}" for r in rows), ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
