# Sourced, not run: a fresh minimal Debian root filesystem with a copy of this
# checkout, entered with chroot in its own mount and PID namespaces. Shared by
# tests/quickstart/run-in-rootfs.sh (the README's quick start) and
# tests/pyversions/run-in-rootfs.sh (the tests on other Pythons).
#
#   ROOTFS_TAG=quickstart; source tests/rootfs/lib.sh
#   rootfs_require            # exit 77 unless root, debootstrap and namespaces
#   rootfs_base SUITE         # the pristine rootfs, made once: $ROOTFS_BASE
#   rootfs_copy SUITE         # a fresh copy with the checkout: $ROOTFS_ROOT
#   rootfs_enter SCRIPT       # runs /bin/bash SCRIPT (a path inside) as root
#
# The pristine rootfs (debootstrap --variant=minbase: no python3, no CA
# certificates) is cached in $RECONCILER_ROOTFS_CACHE/<suite> (default
# /var/cache/reconciler-rootfs) and copied afresh for every run, with apt's
# (per suite) and pip's download caches kept beside it, so a warm run still
# installs everything but downloads little. This machine's apt sources (their
# suite names rewritten for another suite) and settings, resolv.conf and local
# CA certificates are copied in (its way to the registries); nothing else of
# the host is visible inside. Mounts and any process left behind vanish with
# the namespaces; the copy is removed on exit.

ROOTFS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROOTFS_CACHE="${RECONCILER_ROOTFS_CACHE:-/var/cache/reconciler-rootfs}"
ROOTFS_TAG="${ROOTFS_TAG:-rootfs}"
ROOTFS_START=$SECONDS
say() { printf '[%s %4ds] %s\n' "$ROOTFS_TAG" "$((SECONDS - ROOTFS_START))" "$*"; }
skip() { echo "$ROOTFS_TAG rootfs check skipped: $*" >&2; exit 77; }

# The suites these scripts know: a typo must not debootstrap something odd.
rootfs_check_suite() {
  case "$1" in
    bullseye|bookworm|trixie) ;;
    *) echo "unknown Debian suite '$1' (bullseye, bookworm or trixie)" >&2; exit 2 ;;
  esac
}

rootfs_require() {
  [ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, chroot, mounts)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    { env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 ||
      { env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 &&
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1; }; } ||
      skip "debootstrap cannot be installed"
  fi
  unshare --mount --pid --fork --propagation private true 2>/dev/null || skip "no mount/PID namespaces here"
}

# This machine's Debian codename: its apt sources name it, and another suite's
# rootfs gets them with the name replaced.
ROOTFS_HOST_SUITE="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
ROOTFS_HOST_SUITE="${ROOTFS_HOST_SUITE:-bookworm}"

# The Debian mirror this machine uses (deb822 or one-line sources).
rootfs_mirror() {
  local mirror
  mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }')"
  [ -n "$mirror" ] || mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$ROOTFS_HOST_SUITE" '$1 == "deb" && $0 ~ (" " s " ") { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }')"
  echo "${mirror:-http://deb.debian.org/debian}"
}

# 1. The pristine minimal rootfs of SUITE, made once: sets ROOTFS_BASE.
rootfs_base() {
  local suite="$1" mirror include=()
  rootfs_check_suite "$suite"
  ROOTFS_BASE="$ROOTFS_CACHE/$suite"
  mkdir -p "$ROOTFS_CACHE/apt-archives/$suite/partial" "$ROOTFS_CACHE/pip"
  if [ -e "$ROOTFS_BASE/.reconciler-rootfs-complete" ]; then
    say "reusing the minimal $suite rootfs in $ROOTFS_BASE"
    return
  fi
  mirror="$(rootfs_mirror)"
  say "debootstrap --variant=minbase $suite from $mirror into $ROOTFS_BASE"
  rm -rf "$ROOTFS_BASE" "$ROOTFS_BASE.tmp"
  # apt needs the CA bundle before .ci/setup can install it if the mirror is https
  [[ "$mirror" == https:* ]] && include=(--include=ca-certificates)
  debootstrap --variant=minbase "${include[@]}" "$suite" "$ROOTFS_BASE.tmp" "$mirror" >"$ROOTFS_CACHE/debootstrap-$suite.log" 2>&1 ||
    { tail -n 30 "$ROOTFS_CACHE/debootstrap-$suite.log" >&2
      echo "debootstrap failed (log: $ROOTFS_CACHE/debootstrap-$suite.log)" >&2; exit 1; }
  rm -rf "$ROOTFS_BASE.tmp/var/cache/apt/archives"/*.deb "$ROOTFS_BASE.tmp/var/lib/apt/lists"/*_Packages
  touch "$ROOTFS_BASE.tmp/.reconciler-rootfs-complete"
  mv "$ROOTFS_BASE.tmp" "$ROOTFS_BASE"
}

# One apt sources file for SUITE. The host's own suite gets it as it is. Another
# suite gets only the Debian archive's entries (a URI ending in /debian or
# /debian-security), the host's codename replaced by SUITE (bookworm-security
# becomes bullseye-security or trixie-security): third-party repositories name
# the host's release and are not what a newcomer on SUITE has.
rootfs_adapt_sources() {
  local src="$1" dst="$2" suite="$3"
  if [ "$suite" = "$ROOTFS_HOST_SUITE" ]; then
    cp "$src" "$dst"
    return
  fi
  case "$src" in
    *.sources)  # deb822: keep whole stanzas (blank-line separated)
      awk -v RS= -v ORS='\n\n' '/(^|\n)URIs:[^\n]*\/debian(-security)?\/?([ \n]|$)/' "$src" ;;
    *)          # one-line: keep deb/deb-src lines of the Debian archive
      awk '$1 ~ /^deb(-src)?$/ && $0 ~ /\/debian(-security)?\/? /' "$src" ;;
  esac | sed -E "s/\\b$ROOTFS_HOST_SUITE\\b/$suite/g" >"$dst"
  [ -s "$dst" ] || rm -f "$dst"
}

# 2. A fresh copy of the SUITE rootfs for this run, with this machine's way to
# the registries and the checkout in /root/reconciler: sets ROOTFS_ROOT.
# Removed on exit (an EXIT trap).
rootfs_copy() {
  local suite="$1" f key
  ROOTFS_WORK="$(mktemp -d "/var/tmp/reconciler-${ROOTFS_TAG%% *}-$suite.XXXXXX")"
  trap 'rm -rf "$ROOTFS_WORK"' EXIT
  ROOTFS_ROOT="$ROOTFS_WORK/root"
  cp -a "$ROOTFS_BASE" "$ROOTFS_ROOT"
  rm -f "$ROOTFS_ROOT/.reconciler-rootfs-complete"
  rm -f "$ROOTFS_ROOT/etc/apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    rootfs_adapt_sources "$f" "$ROOTFS_ROOT$f" "$suite"
    [ -f "$ROOTFS_ROOT$f" ] || continue
    # keyrings the sources name (Signed-By, signed-by=) and the rootfs lacks
    for key in $(grep -oiE 'signed-by[:=] *[^] ]+' "$ROOTFS_ROOT$f" | sed -E 's/^[^:=]*[:=] *//'); do
      [ -f "$key" ] && [ ! -e "$ROOTFS_ROOT$key" ] && mkdir -p "$ROOTFS_ROOT$(dirname "$key")" && cp "$key" "$ROOTFS_ROOT$key"
    done
  done
  for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do  # proxies, snapshot validity
    [ -f "$f" ] && grep -q 'Acquire::' "$f" && cp "$f" "$ROOTFS_ROOT$f"
  done
  cp -L /etc/resolv.conf "$ROOTFS_ROOT/etc/resolv.conf"
  # debootstrap writes no /etc/hosts, which every installed Debian has (the
  # installer writes it): without it `localhost` does not resolve.
  [ -s "$ROOTFS_ROOT/etc/hosts" ] ||
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOTFS_ROOT/etc/hosts"
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    mkdir -p "$ROOTFS_ROOT/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$ROOTFS_ROOT/usr/local/share/ca-certificates/"
  fi
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOTFS_ROOT/etc/pip.conf"

  # The checkout as it is now: tracked and untracked files, not the ignored ones
  # (.venv, .demo, caches).
  mkdir -p "$ROOTFS_ROOT/root/reconciler"
  if git -C "$ROOTFS_REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOTFS_REPO" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -C "$ROOTFS_ROOT/root/reconciler" -xf -
  else
    tar -C "$ROOTFS_REPO" --exclude=.venv --exclude=.demo --exclude=.git -cf - . | tar -C "$ROOTFS_ROOT/root/reconciler" -xf -
  fi
  ROOTFS_SUITE="$suite"
  say "rootfs copied to $ROOTFS_ROOT with the checkout in /root/reconciler"
}

# 3. Run SCRIPT (a path inside the rootfs) with bash as root in the copy, in
# new mount and PID namespaces, with a clean environment; returns its status.
rootfs_enter() {
  unshare --mount --pid --fork --propagation private bash -c '
    set -e
    root=$1 archives=$2 pip=$3 script=$4
    # Drop the copies of CernVM-FS mounts this namespace inherited: a copy of a
    # FUSE mount kept alive here makes the host'"'"'s next remount of that repository
    # wait for ever on its cache lock (a publish hangs while this runs).
    awk '"'"'$2 ~ /^\/cvmfs\/|^\/var\/spool\/cvmfs\// {print $2}'"'"' /proc/self/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    mount -t proc proc "$root/proc"
    mount --bind /sys "$root/sys"
    mount --bind /dev "$root/dev"
    mkdir -p "$root/dev/pts" && mount --bind /dev/pts "$root/dev/pts" 2>/dev/null || true
    mount -t tmpfs tmpfs "$root/tmp"
    mount --bind "$archives" "$root/var/cache/apt/archives"
    mkdir -p "$root/root/.cache/pip" && mount --bind "$pip" "$root/root/.cache/pip"
    exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      /bin/bash "$script"
  ' "$ROOTFS_TAG" "$ROOTFS_ROOT" "$ROOTFS_CACHE/apt-archives/$ROOTFS_SUITE" "$ROOTFS_CACHE/pip" "$1"
}

# Run SCRIPT in the copy (rootfs_enter) and say how it went, naming WHAT was
# checked; exits 1 when it failed.
rootfs_run_check() {  # SCRIPT WHAT
  local rc=0
  rootfs_enter "$1" || rc=$?
  if [ "$rc" -ne 0 ]; then
    say "FAILED (exit $rc): $2"
    exit 1
  fi
  say "passed: $2"
}
