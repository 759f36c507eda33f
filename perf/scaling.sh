#!/usr/bin/env bash
# Two shards versus one (issue 3's goal: 2 shards ≥ 1.8× the throughput of 1).
#
# N→N with 8 pairs, each publisher on its subscriber's shard (--placement same), so with
# two shards the pairs split over both cores and never cross; with one shard every pair
# shares its core. On a 2-core host the load generator's 16 threads share the same two
# cores, so this understates what a dedicated host would show.
#
# Usage: perf/scaling.sh [ROUNDS] [OUT_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
exec perf/ab.sh --title "Two shards versus one" --a two:2:true --b one:1:true \
    --placement same --rounds "${1:-5}" \
    --out "${2:-perf/results/$(date -u +%F)-scaling.md}" -- \
    "n-to-n --pairs 8 --size 128 --duration 2" "n-to-n --pairs 8 --size 1024 --duration 2"
