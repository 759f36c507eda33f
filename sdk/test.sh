#!/usr/bin/env bash
# The SDKs' tests against a real ArqonBus node: installs what they need
# (a venv with the Python SDK and its dev tools, `npm ci`, Debian's chromium
# when missing and we are root), builds the server and arqonctl if needed,
# checks the generated protobuf code is current, then runs
#   Python: mypy --strict, pytest;  TypeScript: tsc, build, vitest;
#   browser: the dashboard in headless Chromium.
# Fails on any failure. Usage (from anywhere): sdk/test.sh
# Environment: ARQONBUS_BIN / ARQONCTL_BIN (use these binaries, skip the
# build), CHROMIUM (browser path, default /usr/bin/chromium),
# SDK_SKIP_BROWSER=1 (skip the browser test), ARQONBUS_REQUIRE_WS (default 1:
# the WebSocket tests must use the server's edge; 0 allows the test relay),
# ARQONBUS_REQUIRE_PRESENCE (default 1: the presence tests must run; 0 lets
# them skip against a server without presence),
# SDK_SKIP_GEN_CHECK=1 (skip the generated-code checks, for a working tree
# whose .proto edits are still in progress; CI never sets it).
set -euo pipefail
# The server has the WebSocket edge (since 5818c45): its tests must not fall
# back to the relay or skip.
export ARQONBUS_REQUIRE_WS="${ARQONBUS_REQUIRE_WS:-1}"
# Presence frames are in the server too (since ca17072): the presence tests must run.
export ARQONBUS_REQUIRE_PRESENCE="${ARQONBUS_REQUIRE_PRESENCE:-1}"

sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$sdk/.." && pwd)"
step() { printf '\n==> %s\n' "$*"; }

if [[ -z "${ARQONBUS_BIN:-}" || -z "${ARQONCTL_BIN:-}" ]]; then
  step "cargo build -p arqonbus -p arqonbus-cli --locked"
  (cd "$root" && cargo build -p arqonbus -p arqonbus-cli --locked)
fi

# ---------------------------------------------------------------- Python
py="$sdk/python"
step "Python SDK: venv and dependencies"
if [[ ! -x "$py/.venv/bin/python" ]]; then
  python3 -m venv "$py/.venv"
fi
"$py/.venv/bin/python" -m pip install -q --upgrade pip
"$py/.venv/bin/python" -m pip install -q -e "$py[dev]"

gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
check_gen="$([[ "${SDK_SKIP_GEN_CHECK:-0}" == "1" ]] && echo 0 || echo 1)"
if [[ "$check_gen" == "1" ]]; then
  step "Python SDK: generated protobuf code is current"
  PYTHON="$py/.venv/bin/python" "$py/scripts/gen_proto.sh" "$gen/py" >/dev/null
  if ! diff -r -x __pycache__ "$gen/py/arqonbus/v1" "$py/src/arqonbus/v1" >/dev/null; then
    echo "sdk/python/src/arqonbus/v1 is stale: run sdk/python/scripts/gen_proto.sh and commit" >&2
    exit 1
  fi
fi

step "Python SDK: mypy --strict"
(cd "$py" && .venv/bin/mypy)

step "Python SDK: pytest"
(cd "$py" && timeout 900 .venv/bin/pytest -q)

# ------------------------------------------------------------ TypeScript
ts="$sdk/ts"
step "TypeScript SDK: npm ci"
(cd "$ts" && npm ci --no-audit --no-fund)

if [[ "$check_gen" == "1" ]]; then
  step "TypeScript SDK: generated protobuf code is current"
  (cd "$ts" && npx buf generate ../../proto/proto --template buf.gen.yaml \
    --path ../../proto/proto/arqonbus/v1 -o "$gen/ts")
  if ! diff -r "$gen/ts/src/gen" "$ts/src/gen" >/dev/null; then
    echo "sdk/ts/src/gen is stale: run (cd sdk/ts && npm run gen) and commit" >&2
    exit 1
  fi
fi

step "TypeScript SDK: typecheck and build"
(cd "$ts" && npm run -s typecheck && npm run -s build)

step "TypeScript SDK: vitest"
(cd "$ts" && timeout 900 npx vitest run)

# --------------------------------------------------------------- browser
if [[ "${SDK_SKIP_BROWSER:-0}" == "1" ]]; then
  step "browser test skipped (SDK_SKIP_BROWSER=1)"
else
  chromium="${CHROMIUM:-/usr/bin/chromium}"
  if [[ ! -x "$chromium" ]]; then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
      step "installing Debian's chromium"
      apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
    else
      echo "no browser at $chromium: install Debian's chromium, set CHROMIUM, or SDK_SKIP_BROWSER=1" >&2
      exit 1
    fi
  fi
  step "browser: the dashboard in headless Chromium"
  (cd "$ts" && CHROMIUM="$chromium" timeout 600 npm run -s test:browser)
fi

step "SDK tests passed"
