#!/usr/bin/env bash
# The README's quick start as a newcomer meets it: a fresh minimal Debian 12
# (debootstrap --variant=minbase: no python3, no CA certificates), a copy of
# this checkout in /root/reconciler, and as root, with only the package
# registries: `bash fixtures/demo.sh` must succeed and print the published
# tree, leave Debian's docker-registry service disabled and not running, and
# a rerun of `.ci/setup` must mend a half-made .venv and print no warning.
#
#   bash tests/quickstart/run-in-rootfs.sh     # as root; exit 77: cannot run here
#
# The pristine rootfs is cached in $RECONCILER_ROOTFS_CACHE (default
# /var/cache/reconciler-rootfs/base) and copied afresh for every run, with
# apt's and pip's download caches kept beside it, so a warm run still installs
# everything but downloads little. This machine's apt sources and settings,
# resolv.conf and local CA certificates are copied in (its way to the
# registries); nothing else of the host is visible inside. The chroot runs in
# its own mount and PID namespaces: its mounts and any process it left behind
# vanish with it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${RECONCILER_ROOTFS_CACHE:-/var/cache/reconciler-rootfs}"
SUITE=bookworm
start=$SECONDS
say() { printf '[quickstart %4ds] %s\n' "$((SECONDS - start))" "$*"; }
skip() { echo "quickstart rootfs check skipped: $*" >&2; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, chroot, mounts)"
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap"
  { env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 ||
    { env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 &&
      env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1; }; } ||
    skip "debootstrap cannot be installed"
fi
unshare --mount --pid --fork --propagation private true 2>/dev/null || skip "no mount/PID namespaces here"

# The Debian mirror this machine uses (deb822 or one-line sources).
mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
  awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }')"
[ -n "$mirror" ] || mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
  awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }')"
mirror="${mirror:-http://deb.debian.org/debian}"

# 1. The pristine minimal rootfs, made once.
base="$CACHE/base"
mkdir -p "$CACHE/apt-archives/partial" "$CACHE/pip"
if [ ! -e "$base/.reconciler-rootfs-complete" ]; then
  say "debootstrap --variant=minbase $SUITE from $mirror into $base"
  rm -rf "$base" "$base.tmp"
  include=()
  # apt needs the CA bundle before .ci/setup can install it if the mirror is https
  [[ "$mirror" == https:* ]] && include=(--include=ca-certificates)
  debootstrap --variant=minbase "${include[@]}" "$SUITE" "$base.tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 30 "$CACHE/debootstrap.log" >&2; echo "debootstrap failed (log: $CACHE/debootstrap.log)" >&2; exit 1; }
  rm -rf "$base.tmp/var/cache/apt/archives"/*.deb "$base.tmp/var/lib/apt/lists"/*_Packages
  touch "$base.tmp/.reconciler-rootfs-complete"
  mv "$base.tmp" "$base"
else
  say "reusing the minimal rootfs in $base"
fi

# 2. A fresh copy of it for this run, with this machine's way to the registries.
work="$(mktemp -d /var/tmp/reconciler-quickstart.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
cp -a "$base" "$root"
rm -f "$root/.reconciler-rootfs-complete"
rm -f "$root/etc/apt/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  cp "$f" "$root$f"
  # keyrings the sources name (Signed-By, signed-by=) and the rootfs lacks
  for key in $(grep -oiE 'signed-by[:=] *[^] ]+' "$f" | sed -E 's/^[^:=]*[:=] *//'); do
    [ -f "$key" ] && [ ! -e "$root$key" ] && mkdir -p "$root$(dirname "$key")" && cp "$key" "$root$key"
  done
done
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do  # proxies, snapshot validity
  [ -f "$f" ] && grep -q 'Acquire::' "$f" && cp "$f" "$root$f"
done
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"

# The checkout as it is now: tracked and untracked files, not the ignored ones
# (.venv, .demo, caches).
mkdir -p "$root/root/reconciler"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -C "$root/root/reconciler" -xf -
else
  tar -C "$REPO" --exclude=.venv --exclude=.demo --exclude=.git -cf - . | tar -C "$root/root/reconciler" -xf -
fi
say "rootfs copied to $root with the checkout in /root/reconciler"

# 3. Inside: the quick start, then a half-made .venv and a rerun of the setup.
cat >"$root/root/quickstart-check.sh" <<'EOF'
set -uo pipefail
cd /root/reconciler
fail() { echo "QUICKSTART FAILED: $*" >&2; exit 1; }
command -v python3 >/dev/null && fail "the rootfs is not fresh: python3 is there before the setup"
echo "+ bash fixtures/demo.sh"
bash fixtures/demo.sh 2>&1 | tee /root/demo.log
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "bash fixtures/demo.sh exited ${PIPESTATUS[0]}"
grep -q '^published tree: ' /root/demo.log || fail "the demo printed no published tree"
grep -q '^  fixtures/basic:latest -> ' /root/demo.log || fail "the published tree has no fixtures/basic:latest"
grep -q '^docker-registry on 127\.0\.0\.1:' /root/demo.log || fail "the demo's registry is not on 127.0.0.1"
sed -n '/^\$ reconcile/,/^published tree/p' /root/demo.log | grep -iE 'warning|deprecat' && fail "warnings in the demo's run"
# Debian's system registry: disabled, not running
ls /etc/rc[2345].d/S*docker-registry 2>/dev/null && fail "docker-registry's SysV service is enabled"
[ -e /etc/systemd/system/multi-user.target.wants/docker-registry.service ] && fail "docker-registry.service is enabled"
for comm in /proc/[0-9]*/comm; do
  [ "$(cat "$comm" 2>/dev/null)" = docker-registry ] && fail "a docker-registry is still running: $(tr '\0' ' ' < "${comm%comm}cmdline")"
done
echo "+ a half-made .venv (python3 -m venv --without-pip), then bash .ci/setup"
rm -rf .venv && python3 -m venv --without-pip .venv
bash .ci/setup >/root/setup2.log 2>&1 || { cat /root/setup2.log; fail ".ci/setup did not mend a half-made .venv"; }
cat /root/setup2.log
.venv/bin/python -m pip --version >/dev/null || fail "no pip in .venv after .ci/setup"
.venv/bin/reconcile --help >/dev/null || fail "no reconcile in .venv after .ci/setup"
echo "+ bash .ci/setup   # again: nothing to do"
bash .ci/setup >/root/setup3.log 2>&1 || { cat /root/setup3.log; fail ".ci/setup failed on a rerun"; }
cat /root/setup3.log
cat /root/setup2.log /root/setup3.log | grep -iE 'warning|deprecat' && fail "warnings from .ci/setup"
echo "QUICKSTART OK"
EOF

say "in the rootfs: bash fixtures/demo.sh, then .ci/setup on a half-made .venv"
rc=0
unshare --mount --pid --fork --propagation private bash -c '
  set -e
  root=$1 cache=$2
  mount -t proc proc "$root/proc"
  mount --bind /sys "$root/sys"
  mount --bind /dev "$root/dev"
  mkdir -p "$root/dev/pts" && mount --bind /dev/pts "$root/dev/pts" 2>/dev/null || true
  mount -t tmpfs tmpfs "$root/tmp"
  mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
  mkdir -p "$root/root/.cache/pip" && mount --bind "$cache/pip" "$root/root/.cache/pip"
  exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash /root/quickstart-check.sh
' quickstart "$root" "$CACHE" || rc=$?
if [ "$rc" -ne 0 ]; then
  say "FAILED (exit $rc): the quick start in a fresh minimal Debian 12"
  exit 1
fi
say "passed: the quick start in a fresh minimal Debian 12"
