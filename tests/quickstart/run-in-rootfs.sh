#!/usr/bin/env bash
# The README's quick start as a newcomer meets it: a fresh minimal Debian
# (debootstrap --variant=minbase: no python3, no CA certificates; Debian 12
# unless SUITE names another), a copy of this checkout in /root/reconciler,
# and as root, with only the package registries: `bash fixtures/demo.sh` must
# succeed and print the published tree, leave Debian's docker-registry service
# disabled and not running, and a rerun of `.ci/setup` must mend a half-made
# .venv and print no warning.
#
#   bash tests/quickstart/run-in-rootfs.sh [SUITE]   # as root; bookworm (default) or trixie
#                                                    # exit 77: cannot run here
#
# The rootfs (cached, copied afresh per run, entered in its own namespaces) is
# tests/rootfs/lib.sh's; see there for the caches and what of the host is copied in.
set -euo pipefail
SUITE="${1:-bookworm}"
ROOTFS_TAG="quickstart $SUITE"
# shellcheck source=../rootfs/lib.sh
source "$(dirname "$0")/../rootfs/lib.sh"
rootfs_check_suite "$SUITE"
declare -A release=([bullseye]="Debian 11" [bookworm]="Debian 12" [trixie]="Debian 13")
name="${release[$SUITE]} ($SUITE)"

rootfs_require
rootfs_base "$SUITE"
rootfs_copy "$SUITE"

# Inside: the quick start, then a half-made .venv and a rerun of the setup.
cat >"$ROOTFS_ROOT/root/quickstart-check.sh" <<'EOF'
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
rootfs_run_check /root/quickstart-check.sh "the quick start in a fresh minimal $name"
