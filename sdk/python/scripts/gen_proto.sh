#!/usr/bin/env bash
# Generates the protobuf modules of the Python SDK from the repository's
# proto/proto/arqonbus/v1/*.proto into src/arqonbus/v1/ (committed).
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: src; --check compares)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
protos="$(cd "$here/../../proto/proto" && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
out="${1:-$here/src}"
mkdir -p "$out/arqonbus/v1"
"$py" -m grpc_tools.protoc -I "$protos" \
  --python_out="$out" --pyi_out="$out" \
  "$protos/arqonbus/v1/client.proto" "$protos/arqonbus/v1/token.proto"
cat > "$out/arqonbus/v1/__init__.py" <<'PY'
"""Generated protobuf modules (``arqonbus.v1``) from proto/proto/arqonbus/v1.

Do not edit: regenerate with ``scripts/gen_proto.sh``.
"""
PY
