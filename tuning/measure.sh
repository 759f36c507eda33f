#!/usr/bin/env bash
# Side-by-side measurement of the tuning profiles' sysctls on this host (loopback), A B A B:
# each experiment alternates the kernel default (A) with the profile's value (B, C), ROUNDS times,
# and reports the median of each. Every sysctl it touches is saved first and restored on exit
# (also on Ctrl-C or failure).
#
#   tuning/measure.sh [OUT_DIR]        # needs root and target/release/{arqonbus,arqonbus-perf}
#   ROUNDS=3 EXPERIMENTS="backlog buffers busypoll" tuning/measure.sh
#
# Experiments (what loopback can show):
#   backlog   a TLS connect storm (512 threads, 6000 connects) against accept queues of 128
#             (somaxconn and tcp_max_syn_backlog before Linux 5.4, and still on small hosts)
#             and of 4096 (the profiles'); the server restarts each run, since the kernel
#             caps a listener's backlog when it opens. Reports ListenOverflows from
#             /proc/net/netstat and the handshake tail (a dropped SYN is retried after 1 s).
#   buffers   1 -> 1 pub/sub of 16 KiB messages (2 s) with the kernel's default tcp_rmem/tcp_wmem
#             (A), the throughput profile's (B) and the connections profile's (C).
#   busypoll  request/reply at 5,000 req/s (2 s) with busy polling off (A) and at 50 us (B).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
OUT=${1:-"$ROOT/perf/results/$(date -u +%Y-%m-%d)-tuning"}
ROUNDS=${ROUNDS:-3}
EXPERIMENTS=${EXPERIMENTS:-"backlog buffers busypoll"}
CPUS=${CPUS:-0,1}
PORT=${PORT:-17420}

[ "$(id -u)" = 0 ] || { echo "measure.sh: needs root (it sets sysctls)" >&2; exit 1; }
for b in arqonbus arqonbus-perf; do
  [ -x "$BIN/$b" ] || { echo "measure.sh: $BIN/$b missing: cargo build --release --locked -p arqonbus -p arqonbus-perf" >&2; exit 1; }
done

KEYS="net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_rmem net.ipv4.tcp_wmem net.core.busy_poll net.core.busy_read"
WORK=$(mktemp -d)
mkdir -p "$OUT"
SAVED="$OUT/sysctl-original.conf"
: > "$SAVED"
for k in $KEYS; do echo "$k = $(sysctl -n "$k" | tr '\t' ' ')" >> "$SAVED"; done
SERVER=
restore() {
  [ -n "$SERVER" ] && kill -INT "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  sysctl -q -p "$SAVED" >/dev/null
  rm -rf "$WORK"
  echo "restored the sysctls from $SAVED" >&2
}
trap restore EXIT

cat > "$WORK/tls.toml" <<EOF
data_dir = "$WORK/data"
[server]
listen = "127.0.0.1:$PORT"
shards = 2
[control]
listen = "127.0.0.1:$((PORT + 1))"
[metrics]
listen = "127.0.0.1:$((PORT + 2))"
[log]
level = "warn"
EOF
sed 's/^\[log\]/[tls]\nenabled = false\n[log]/' "$WORK/tls.toml" > "$WORK/plain.toml"
# Private copies: a rebuild of target/release during the run must not change what is measured.
cp "$BIN/arqonbus" "$BIN/arqonbus-perf" "$WORK/"
BIN_STAMP="$(stat -c %y "$BIN/arqonbus" | cut -d. -f1), sha256 $(sha256sum "$BIN/arqonbus" | cut -c1-12)"
BIN=$WORK

start() { # config
  taskset -c "$CPUS" "$BIN/arqonbus" serve --config "$1" 2>>"$WORK/server.log" &
  SERVER=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$((PORT + 2))/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "measure.sh: the server did not become ready" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop() { kill -INT "$SERVER"; wait "$SERVER" || true; SERVER=; }
overflows() { awk '/^TcpExt:/ { if (!h) { split($0, k); h = 1 } else { split($0, v); for (i in k) if (k[i] == "ListenOverflows") print v[i] } }' /proc/net/netstat; }
perf() { # url args...
  local url=$1; shift
  local ca=()
  [[ $url == tls://* ]] && ca=(--ca "$WORK/data/tls/ca.pem")
  "$BIN/arqonbus-perf" --server "$url" "${ca[@]}" --credential-file "$WORK/data/credentials/bootstrap.token" "$@" 2>/dev/null
}
record() { # experiment variant round json [extra]
  python3 -c 'import json,sys; d=json.loads(sys.argv[4]); d["experiment"]=sys.argv[1]; d["variant"]=sys.argv[2]; d["round"]=int(sys.argv[3]); d["extra"]=json.loads(sys.argv[5]); print(json.dumps(d))' "$@" >> "$OUT/runs.jsonl"
}

{
  echo "# measure.sh $(date -u +%FT%TZ) on $(uname -r), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# commit $(git -C "$ROOT" rev-parse --short HEAD), arqonbus built $BIN_STAMP"
  echo "# ROUNDS=$ROUNDS EXPERIMENTS=\"$EXPERIMENTS\" CPUS=$CPUS"
} | tee "$OUT/commands.txt" >&2
: > "$OUT/runs.jsonl"

for round in $(seq "$ROUNDS"); do
  for exp in $EXPERIMENTS; do
    case $exp in
      backlog)
        for variant in A B; do
          if [ $variant = A ]; then v=128; else v=4096; fi
          sysctl -qw net.core.somaxconn=$v net.ipv4.tcp_max_syn_backlog=$v
          start "$WORK/tls.toml"
          before=$(overflows)
          cmd=(connect-storm --connections 6000 --threads 512)
          json=$(perf "tls://127.0.0.1:$PORT" "${cmd[@]}")
          after=$(overflows)
          stop
          record backlog "$variant" "$round" "$json" "{\"somaxconn\":$v,\"tcp_max_syn_backlog\":$v,\"listen_overflows\":$((after - before))}"
          echo "backlog $variant round $round: somaxconn=$v overflows=$((after - before))" >&2
        done ;;
      buffers)
        start "$WORK/plain.toml"
        for variant in A B C; do
          case $variant in
            A) r="4096 131072 6291456"; w="4096 16384 4194304" ;;   # the kernel's defaults
            B) r="4096 131072 16777216"; w="4096 262144 16777216" ;; # throughput profile
            C) r="4096 16384 6291456"; w="4096 16384 4194304" ;;     # connections profile
          esac
          sysctl -qw net.ipv4.tcp_rmem="$r" net.ipv4.tcp_wmem="$w"
          json=$(perf "tcp://127.0.0.1:$PORT" pubsub --size 16384 --duration 2)
          record buffers "$variant" "$round" "$json" "{\"tcp_rmem\":\"$r\",\"tcp_wmem\":\"$w\"}"
          echo "buffers $variant round $round" >&2
        done
        stop ;;
      busypoll)
        start "$WORK/plain.toml"
        for variant in A B; do
          if [ $variant = A ]; then v=0; else v=50; fi
          sysctl -qw net.core.busy_poll=$v net.core.busy_read=$v
          json=$(perf "tcp://127.0.0.1:$PORT" req-reply --rate 5000 --duration 2)
          record busypoll "$variant" "$round" "$json" "{\"busy_poll\":$v,\"busy_read\":$v}"
          echo "busypoll $variant round $round" >&2
        done
        stop ;;
    esac
  done
done

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out = sys.argv[1]
runs = [json.loads(l) for l in open(f"{out}/runs.jsonl")]
def med(xs): return statistics.median(xs) if xs else float("nan")
def pick(exp, var, f): return [f(r) for r in runs if r["experiment"] == exp and r["variant"] == var]
print("| experiment | variant | setting | metric | median | each run (A B A B order) |")
print("|---|---|---|---|---|---|")
rows = {
  "backlog": [("conns/s", lambda r: r["result"]["conns_per_sec"], "{:.0f}"),
              ("failed", lambda r: r["result"]["failed"], "{:.0f}"),
              ("ListenOverflows", lambda r: r["extra"]["listen_overflows"], "{:.0f}"),
              ("handshake p99 ms", lambda r: r["result"]["handshake"]["p99_us"] / 1000, "{:.0f}"),
              ("handshake max ms", lambda r: r["result"]["handshake"]["max_us"] / 1000, "{:.0f}")],
  "buffers": [("msgs/s", lambda r: r["result"]["msgs_per_sec"], "{:.0f}"),
              ("MB/s", lambda r: r["result"]["payload_mb_per_sec"], "{:.0f}"),
              ("latency p50 ms", lambda r: r["result"]["latency"]["p50_us"] / 1000, "{:.1f}"),
              ("latency p99 ms", lambda r: r["result"]["latency"]["p99_us"] / 1000, "{:.1f}")],
  "busypoll": [("p50 us", lambda r: r["result"]["latency"]["p50_us"], "{:.0f}"),
               ("p99 us", lambda r: r["result"]["latency"]["p99_us"], "{:.0f}"),
               ("achieved req/s", lambda r: r["result"]["achieved_rate"], "{:.0f}")],
}
for exp, metrics in rows.items():
    variants = sorted({r["variant"] for r in runs if r["experiment"] == exp})
    for var in variants:
        setting = next(r["extra"] for r in runs if r["experiment"] == exp and r["variant"] == var)
        s = ", ".join(f"{k}={v}" for k, v in setting.items() if k != "listen_overflows")
        for name, f, fmt in metrics:
            xs = pick(exp, var, f)
            print(f"| {exp} | {var} | {s} | {name} | {fmt.format(med(xs))} | {' '.join(fmt.format(x) for x in xs)} |")
EOF
echo "results in $OUT" >&2
