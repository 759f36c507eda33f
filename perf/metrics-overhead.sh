#!/usr/bin/env bash
# Metrics on versus off, side by side (issue 5: the overhead must stay under 3 %).
#
# "on" has the default [metrics] section (latency sampled one message in 64, /metrics
# scraped once a second, far more often than Prometheus would); "off" has
# [metrics] enabled = false (no sampling, no listener). Shard counters are plain per-shard
# integers and exist in both. One shard each, so every 1→1 run is the same-shard path.
#
# Usage: perf/metrics-overhead.sh [ROUNDS] [OUT_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
exec perf/ab.sh --title "Metrics on versus off" --a on:1:true --b off:1:false --scrape on \
    --rounds "${1:-5}" --out "${2:-perf/results/$(date -u +%F)-metrics-overhead.md}" -- \
    "pubsub --size 128 --duration 2" "pubsub --size 16 --duration 2" \
    "fanout --subs 8 --size 128 --duration 2"
