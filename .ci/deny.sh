#!/usr/bin/env bash
# Dependency checks with cargo-deny (policy: deny.toml at the repository root).
#
# 1. bans, licenses, sources: offline (after `cargo fetch`), always; any error
#    fails this script.
# 2. advisories: only when the RustSec advisory database can be fetched (within
#    DENY_FETCH_TIMEOUT seconds, default 120); otherwise this prints
#    `advisories: skipped (advisory database unreachable: <reason>)` and does not fail.
#    DENY_REQUIRE_ADVISORIES=1 makes an unreachable database fail instead.
#
# Needs cargo-deny (`cargo install cargo-deny --locked`; 0.20.2 builds with rustc 1.95).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "deny: cargo-deny is not installed (cargo install cargo-deny --locked)" >&2
    exit 1
fi

# The offline checks read every locked crate, the other platforms' included,
# from the local registry: fetch them first (from the Rust registry, which CI
# reaches; a clean machine has only what its builds downloaded).
echo "deny: cargo fetch --locked (every platform's crates, for the offline checks)"
cargo fetch --locked

echo "deny: cargo deny check bans licenses sources (offline)"
cargo deny --locked --offline --color never check --hide-inclusion-graph bans licenses sources

timeout_s="${DENY_FETCH_TIMEOUT:-120}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if timeout "$timeout_s" cargo deny --locked --color never fetch db >"$log" 2>&1; then
    echo "deny: cargo deny check advisories (database fetched)"
    cargo deny --locked --offline --color never check --hide-inclusion-graph advisories
    echo "advisories: checked"
else
    status=$?
    if [ "$status" -eq 124 ]; then
        reason="no answer within ${timeout_s}s"
    else
        # The most specific line git or cargo-deny gave, without timestamps.
        reason="$(grep -E 'fatal:|error:|ERROR' "$log" | tail -n 1 \
            | sed -E 's/^[0-9: -]+\[ERROR\] //; s/^fatal: //' | cut -c1-200)"
        reason="${reason:-cargo deny fetch db exited with $status}"
    fi
    echo "advisories: skipped (advisory database unreachable: $reason)"
    if [ "${DENY_REQUIRE_ADVISORIES:-0}" = "1" ]; then
        exit 1
    fi
fi
