#!/usr/bin/env bash
# The tests on the Pythons this machine does not have: the install guide
# promises EL9's Python 3.9 and Debian 13 ships 3.13, while this machine
# (Debian 12) runs 3.11. In a fresh minimal Debian 11 (bullseye: python3.9) or
# Debian 13 (trixie: python3.13) with a copy of this checkout in
# /root/reconciler, as root: apt installs python3, its venv module, the
# reference registry and umoci, pip installs the package with its test extras
# into .venv, and pytest runs every test but those needing CernVM-FS (they
# skip) or chromium (the status page); then the applier, registry client and
# unit tests again in a second venv with every dependency at the lower bound
# pyproject.toml gives (tests/pyversions/lowest.py).
#
#   bash tests/pyversions/run-in-rootfs.sh SUITE [PYTEST ARGS...]
#        # SUITE: bullseye or trixie (bookworm works too); as root;
#        # PYTEST ARGS replace both test selections
#        # exit 77: cannot run here; 1: the setup or a test failed
#
# The rootfs (cached, copied afresh per run, entered in its own namespaces) is
# tests/rootfs/lib.sh's; see there for the caches and what of the host is copied in.
set -euo pipefail
SUITE="${1:?usage: run-in-rootfs.sh SUITE [PYTEST ARGS...]}"
shift
ROOTFS_TAG="pyversions $SUITE"
# shellcheck source=../rootfs/lib.sh
source "$(dirname "$0")/../rootfs/lib.sh"
rootfs_check_suite "$SUITE"

# Every test but the status page's (chromium); CernVM-FS's skip (not installed
# in there). About a minute on this machine.
tests=(--ignore=tests/test_status_page.py)
# With the lowest versions: the applier, the registry client, the watch list,
# state, undo, the list readers (PyYAML) and the service's small parts (the code the dependencies touch;
# about 5 s).
lowest_tests=(tests/test_applier_hostile.py tests/test_applier_umoci.py tests/test_watchlist.py
  tests/test_registry_units.py tests/test_registry_quirks.py tests/test_registry_protocol.py
  tests/test_undo.py tests/test_treecopy.py tests/test_state.py tests/test_blobstore.py
  tests/test_webhooks.py tests/test_progress.py tests/test_backoff.py tests/test_lists.py tests/test_signatures.py
  tests/test_signatures_interop.py)
[ $# -gt 0 ] && tests=("$@") lowest_tests=("$@")

rootfs_require
rootfs_base "$SUITE"
rootfs_copy "$SUITE"

# Inside: the apt packages, the venv, the tests. Arguments are passed through a
# file (the chroot's environment is cleaned).
printf '%s\n' "${tests[@]}" >"$ROOTFS_ROOT/root/pyversions-tests"
printf '%s\n' "${lowest_tests[@]}" >"$ROOTFS_ROOT/root/pyversions-lowest-tests"
cat >"$ROOTFS_ROOT/root/pyversions-check.sh" <<'EOF'
set -euo pipefail
cd /root/reconciler
export DEBIAN_FRONTEND=noninteractive
echo "+ apt-get install python3 python3-venv ca-certificates docker-registry umoci [cosign]"
apt-get update -qq
# --no-install-recommends, as on a minimal machine. Without an init, the
# postinst of docker-registry would start its SysV service on :5000 in here;
# the tests start their own registries: policy-rc.d forbids service starts.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
# Debian 13 packages cosign (2.5.0): there the real-cosign test runs both ways
# (tests/test_signature_cosign.py; it skips where cosign is absent).
extra=()
apt-cache show cosign >/dev/null 2>&1 && extra+=(cosign)
apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates docker-registry umoci \
  "${extra[@]}" >/root/apt.log 2>&1 || { tail -n 30 /root/apt.log; exit 1; }
[ ${#extra[@]} -eq 0 ] || cosign version 2>/dev/null | grep -m1 GitVersion || true
python3 --version
echo "+ python3 -m venv .venv; pip install -e '.[test]'"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
mapfile -t tests </root/pyversions-tests
echo "+ python -m pytest -q ${tests[*]}"
.venv/bin/python -m pytest -q -p no:cacheprovider "${tests[@]}"
# Then with every dependency at its lower bound in pyproject.toml: pip picks
# the newest, so bounds that no longer hold would go unnoticed.
echo "+ the same with the lowest versions pyproject.toml admits (tests/pyversions/lowest.py)"
python3 tests/pyversions/lowest.py >/root/lowest.txt
python3 -m venv /root/lowest-venv
/root/lowest-venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
/root/lowest-venv/bin/python -m pip install -q -c /root/lowest.txt -e '.[test]'
mapfile -t lowest_tests </root/pyversions-lowest-tests
echo "+ python -m pytest -q ${lowest_tests[*]}"
/root/lowest-venv/bin/python -m pytest -q -p no:cacheprovider "${lowest_tests[@]}"
EOF

say "in the rootfs: apt, venv, pip install -e '.[test]', pytest"
rootfs_run_check /root/pyversions-check.sh "the tests in a fresh minimal $SUITE"
