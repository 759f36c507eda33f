#!/usr/bin/env bash
# Builds the .deb, installs it with `dpkg --root` into a clean Debian root (debootstrap minbase
# plus systemd and procps,
# cached in target/deb-smoke/base; each run installs into a fresh copy), then, inside private
# mount and network namespaces (its own loopback, so no port clashes with the host):
#   1. checks what the maintainer scripts made (user arqonbus, /var/lib/arqonbus 0700),
#   2. `systemd-analyze verify --root` on the installed unit,
#   3. runs the installed `arqonbus doctor` (exit 0, 1 or 2 is a report; 3 is a failure),
#   4. starts the installed `arqonbus serve` as the unit does (user arqonbus, CAP_BPF and
#      CAP_PERFMON only,
#      the installed configuration), waits for /readyz, publishes through the installed `arqon`
#      over TLS with the generated CA and bootstrap credential, reads /metrics (steering active
#      with those two), and stops it with SIGTERM (the lame duck), expecting exit 0.
# Needs root. SKIP_BUILD=1 reuses target/release binaries; KEEP=1 keeps the root.
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK="$ROOT_DIR/target/deb-smoke"
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
say() { echo "deb-smoke: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (dpkg --root, chroot, namespaces)"
mkdir -p "$WORK"
cd "$ROOT_DIR"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --locked -p arqonbus -p arqonbus-cli
fi
command -v cargo-deb >/dev/null || die "cargo-deb missing: cargo install cargo-deb --locked"
rm -f "$WORK"/arqonbus_*.deb
cargo deb -p arqonbus --no-build --output "$WORK/" >&2
DEB=$(ls "$WORK"/arqonbus_*.deb)
say "built $DEB"
dpkg-deb --info "$DEB" >&2
dpkg-deb --contents "$DEB" >&2

# A minimal Debian with systemd (for `systemd-analyze verify --root`) and procps (/bin/kill).
if [ ! -x "$WORK/base/lib/systemd/systemd" ] || [ ! -x "$WORK/base/bin/kill" ]; then
  command -v debootstrap >/dev/null || apt-get install -y debootstrap >&2
  say "debootstrap --variant=minbase --include=systemd,procps $SUITE (once; cached in $WORK/base)"
  rm -rf "$WORK/base"
  debootstrap --variant=minbase --include=systemd,procps "$SUITE" "$WORK/base" "$MIRROR" >&2
fi
R="$WORK/root"
rm -rf "$R"
cp -a "$WORK/base" "$R"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$R"' EXIT

say "dpkg --root $R -i $(basename "$DEB")"
dpkg --root="$R" -i "$DEB" >&2

# 1. What the maintainer scripts made.
# Owners as the root's own passwd and group files name them (the host has no such user).
uid=$(awk -F: '$1 == "arqonbus" { print $3 }' "$R/etc/passwd")
gid=$(awk -F: '$1 == "arqonbus" { print $3 }' "$R/etc/group")
[ -n "$uid" ] && [ -n "$gid" ] || die "no user or group arqonbus"
[ "$(stat -c '%a %u' "$R/var/lib/arqonbus")" = "700 $uid" ] || die "/var/lib/arqonbus is $(stat -c '%a %u' "$R/var/lib/arqonbus")"
[ "$(stat -c '%a %u %g' "$R/etc/arqonbus/arqonbus.toml")" = "640 0 $gid" ] || die "config is $(stat -c '%a %u %g' "$R/etc/arqonbus/arqonbus.toml")"
for f in usr/bin/arqonbus usr/bin/arqonctl usr/bin/arqon usr/sbin/arqonbus-tune \
         lib/systemd/system/arqonbus.service usr/share/arqonbus/tuning/profiles/latency.conf; do
  [ -e "$R/$f" ] || die "$f not installed"
done
say "installed: binaries, unit, config, profiles; user arqonbus and /var/lib/arqonbus 0700"

# 2. The unit, against the installed root.
systemd-analyze verify --root="$R" /lib/systemd/system/arqonbus.service >&2 || die "systemd-analyze verify"
say "systemd-analyze verify: ok"

# 3 and 4, in private mount and network namespaces.
unshare --mount --net --propagation private bash -euo pipefail -s "$R" <<'INNER'
R=$1
say() { echo "deb-smoke: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }
ip link set lo up
for d in proc sys dev; do mount --rbind "/$d" "$R/$d"; done
mount -t tmpfs tmpfs "$R/tmp"

set +e
chroot "$R" /usr/bin/arqonbus doctor --config /etc/arqonbus/arqonbus.toml >&2
code=$?
set -e
[ "$code" -le 2 ] || die "arqonbus doctor exited $code"
say "installed arqonbus doctor: exit $code (0 ok, 1 warn, 2 fail; a report either way)"

# As the unit runs it: user arqonbus, CAP_BPF and CAP_PERFMON only, no new privileges.
chroot "$R" setpriv --reuid=arqonbus --regid=arqonbus --init-groups \
  --inh-caps=-all,+bpf,+perfmon --ambient-caps=-all,+bpf,+perfmon --bounding-set=-all,+bpf,+perfmon --no-new-privs \
  /usr/bin/arqonbus serve --config /etc/arqonbus/arqonbus.toml 2>"$R/tmp/serve.log" &
pid=$!
for _ in $(seq 200); do
  curl -sf http://127.0.0.1:7422/readyz >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$R/tmp/serve.log" >&2; die "serve exited"; }
  sleep 0.1
done
curl -sf http://127.0.0.1:7422/readyz >&2 || { cat "$R/tmp/serve.log" >&2; die "/readyz"; }
echo >&2
# A TLS client: the installed arqon, the generated CA, the bootstrap credential.
chroot "$R" setpriv --reuid=arqonbus --regid=arqonbus --init-groups \
  /usr/bin/arqon --server tls://127.0.0.1:7420 --ca /var/lib/arqonbus/tls/ca.pem \
  --credential-file /var/lib/arqonbus/credentials/bootstrap.token pub smoke.deb 'installed' >&2 \
  || { cat "$R/tmp/serve.log" >&2; die "arqon pub over TLS"; }
metrics=$(curl -sf http://127.0.0.1:7422/metrics)
echo "$metrics" | grep -E '^arqonbus_(messages_in_total|steering_active)' >&2
echo "$metrics" | grep -q '^arqonbus_steering_active 1' || die "steering not active with CAP_BPF and CAP_PERFMON"
echo "$metrics" | grep -Eq '^arqonbus_messages_in_total\{shard="[0-9]+"\} [1-9]' || die "the publish was not counted"
kill -TERM $pid
set +e
wait $pid
code=$?
set -e
[ "$code" = 0 ] || { cat "$R/tmp/serve.log" >&2; die "serve exited $code after SIGTERM"; }
say "installed serve: ready, TLS publish counted, steering active with CAP_BPF+CAP_PERFMON only, SIGTERM exit 0"
INNER
say "ok"
