#!/usr/bin/env bash
# Rebuilds the steering program (src/steer.bpf.c) into the committed object steer.bpf.o,
# which the loader embeds with include_bytes (so building ArqonBus needs no BPF toolchain).
#
#   ebpf/build.sh           rebuild ebpf/steer.bpf.o in place
#   ebpf/build.sh --check   rebuild into a temporary directory and fail if it differs from
#                           the committed object (CI runs this)
#
# The committed object was built on Debian 12 with:
#   Debian clang version 14.0.6 (packages clang and llvm 1:14.0-55.7~deb12u1, clang-14 1:14.0.6-12)
#   kernel UAPI headers from linux-libc-dev 6.1.x (the BTF describes struct sk_reuseport_md)
# Another clang version (or much newer UAPI headers) may legitimately emit different bytes for
# the same source; --check says so when the clang version differs.
#
# Reproducible: -fdebug-prefix-map rewrites the checkout path to ".", and llvm-strip
# --strip-debug removes the DWARF sections while keeping .BTF and .BTF.ext, which aya needs
# for the BTF-style map definitions in the ".maps" section.
set -euo pipefail

EXPECTED_CLANG="Debian clang version 14.0.6"

cd "$(dirname "$0")"
check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

for tool in clang llvm-strip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "ebpf/build.sh: $tool not found (Debian: apt-get install clang llvm)" >&2
        exit 1
    fi
done

clang_version="$(clang --version | head -n 1)"
multiarch="$(uname -m)-linux-gnu"

build() {
    local out="$1"
    clang -O2 -g -target bpf -mcpu=v3 \
        -Wall -Wextra -Werror \
        -I"/usr/include/$multiarch" \
        -fdebug-prefix-map="$PWD"=. \
        -c src/steer.bpf.c -o "$out"
    llvm-strip --strip-debug "$out"
}

if [ "$check" -eq 0 ]; then
    build steer.bpf.o
    echo "ebpf/build.sh: wrote ebpf/steer.bpf.o ($clang_version)"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
build "$tmp/steer.bpf.o"
if cmp -s "$tmp/steer.bpf.o" steer.bpf.o; then
    echo "ebpf/build.sh: ebpf/steer.bpf.o matches src/steer.bpf.c ($clang_version)"
    exit 0
fi

echo "ebpf/build.sh: ebpf/steer.bpf.o differs from a fresh build of ebpf/src/steer.bpf.c" >&2
case "$clang_version" in
    "$EXPECTED_CLANG"*)
        echo "  Same clang as the committed object ($EXPECTED_CLANG), so the source changed" >&2
        echo "  without the object being rebuilt: run ebpf/build.sh and commit ebpf/steer.bpf.o." >&2
        ;;
    *)
        echo "  This clang is \"$clang_version\"; the committed object was built with" >&2
        echo "  \"$EXPECTED_CLANG\". A different clang may legitimately emit different bytes:" >&2
        echo "  compare with the expected clang (Debian 12: apt-get install clang llvm) before" >&2
        echo "  concluding that the source and the object disagree." >&2
        ;;
esac
exit 1
