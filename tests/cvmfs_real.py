"""A real CernVM-FS stratum 0 for the tests (../shared/cvmfs: CernVM-FS 2.11.5
built from source, the real `cvmfs_server`, apache, overlayfs and FUSE).

Two repositories serve every test: a plain one and one published through a
local `cvmfs_gateway` (leases). Each test starts from an empty published
root (`fresh_repository`), and every scenario ends with `cvmfs_server check`
clean and no transaction open (`assert_healthy`).

Calls are recorded by a shim put first on PATH (tests/cvmfs_shim/cvmfs_server
runs the real one, then logs its exit code and arguments to $CVMFS_CALL_LOG),
so tests can say which commands a run issued.

Where CernVM-FS is missing the tests that need it skip, saying how to install
it; with RECONCILER_REQUIRE_CVMFS=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the checkout, as CI lays it; RECONCILER_SHARED names it for
# a checkout elsewhere (a git worktree, a copy under /root).
SHARED = Path(os.environ.get("RECONCILER_SHARED") or ROOT.parent / "shared") / "cvmfs"
REAL_COMMAND = "/usr/bin/cvmfs_server"
REPO = "reconciler.test.org"
GW_REPO = "reconciler-gw.test.org"
# A repository with a membership requirement (readers must hold a VOMS role).
VOMS_REPO = "reconciler-voms.test.org"
_MKFS_OPTIONS = {VOMS_REPO: ("-V", "cms:/cms")}
SHIM_DIR = Path(__file__).resolve().parent / "cvmfs_shim"


def available() -> bool:
    """True when CernVM-FS is installed and this process may run it (root)."""
    return os.path.exists(REAL_COMMAND) and os.geteuid() == 0


def require() -> None:
    """Skip (or fail, in CI) when the real CernVM-FS is not here."""
    if available():
        return
    message = (f"needs a real CernVM-FS stratum 0 as root: run `bash {SHARED}/install.sh` as root "
               "(about 10 minutes the first time)")
    if os.environ.get("RECONCILER_REQUIRE_CVMFS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([REAL_COMMAND, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=600)
    if check and done.returncode != 0:
        raise RuntimeError(f"cvmfs_server {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stdout[-1500:]}{done.stderr[-1500:]}")
    return done


def in_transaction(repo: str) -> bool:
    """True when `cvmfs_server list` shows `repo` in a transaction."""
    for line in _run("list").stdout.splitlines():
        name, _, rest = line.strip().partition(" ")
        if name == repo:
            return "in transaction" in rest
    return False


def _ensure(repo: str, gateway: bool) -> None:
    """Create the repository, or bring apache, its mount and the gateway up."""
    script = SHARED / ("mkgwrepo.sh" if gateway else "mkrepo.sh")
    done = subprocess.run(["bash", str(script), repo, *_MKFS_OPTIONS.get(repo, ())], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{script} {repo} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    conf = Path("/etc/cvmfs/repositories.d") / repo / "server.conf"
    if "CVMFS_INCLUDE_XATTRS=true" not in conf.read_text():
        # What the README tells sites to set: images keep security.capability and user.* xattrs.
        with conf.open("a") as fh:
            fh.write("CVMFS_INCLUDE_XATTRS=true\n")


def _heal_mount(repo: str) -> None:
    """Mount the repository again when its FUSE process is gone (reading the
    mount point fails with ENOTCONN): `cvmfs_server mount` alone leaves a
    dead mount in place, so both layers are detached first."""
    try:
        os.listdir(Path("/cvmfs") / repo)
        return
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
    for mount_point in (Path("/cvmfs") / repo, Path("/var/spool/cvmfs") / repo / "rdonly"):
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=60)
    _run("mount", repo)
    os.listdir(Path("/cvmfs") / repo)  # fails the test session loudly if that did not help


_ensured: set = set()
_session_lock: List[int] = []  # the fd of the lock below, once taken
SESSION_LOCK = Path("/run/lock/reconciler-tests-cvmfs.lock")


def _take_session_lock() -> None:
    """The real repositories are one per machine: two test sessions at once
    (two checkouts, a developer and CI) would abort and wipe each other's
    transactions. The first session to use them holds this lock until it
    exits; another waits for it (polling, up to 20 minutes)."""
    if _session_lock:
        return
    SESSION_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + 1200
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                pytest.fail(f"another test session has held {SESSION_LOCK} for 20 minutes")
            time.sleep(0.5)
    _session_lock.append(fd)


def fresh_repository(repo: str, gateway: bool = False) -> Path:
    """The repository's mount point, its published root empty and no transaction open."""
    _take_session_lock()
    if repo not in _ensured:
        _ensure(repo, gateway)
        _heal_mount(repo)
        _ensured.add(repo)
    if in_transaction(repo):
        _run("abort", "-f", repo)
    mount = Path("/cvmfs") / repo
    if any(mount.iterdir()):
        _run("transaction", repo)
        for entry in mount.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        _run("publish", repo)
    return mount


def assert_healthy(repo: str) -> None:
    """No transaction left open and `cvmfs_server check` clean."""
    assert not in_transaction(repo), f"{repo} was left in a transaction"
    done = _run("check", repo, check=False)
    assert done.returncode == 0, f"cvmfs_server check {repo}: {done.stdout[-2000:]}{done.stderr[-2000:]}"


def read_calls(log: Path) -> List[List[str]]:
    """The argv of every call the shim recorded."""
    if not log.exists():
        return []
    return [line.split("\x1f")[1:] for line in log.read_text().splitlines()]
