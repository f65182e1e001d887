"""How the CVMFS publisher tells that a `cvmfs_server publish` is running on
this machine without disturbing it (reconciler/publish/cvmfs.py): a publish
that finds its lock taken, even for a moment, gives up (`flock -n` in
cvmfs_server 2.11.5), so the lock is read from /proc/locks, never taken; and
before a publish takes its lock it spends seconds on checks, so its process
is looked for too."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from reconciler.publish.cvmfs import flock_holder, publish_process


def _wait_for(check, what: str, deadline_s: float = 10.0):
    deadline = time.monotonic() + deadline_s
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {deadline_s} s")
        time.sleep(0.02)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/locks is Linux's")
def test_the_lock_holder_is_read_without_taking_the_lock(tmp_path, monkeypatch):
    lock = tmp_path / "is_publishing.lock"
    lock.write_text("")
    assert flock_holder(lock) is None
    # -o: flock holds the lock itself, not the command it runs.
    holder = subprocess.Popen(["flock", "-o", str(lock), "sleep", "30"], start_new_session=True)
    try:
        pid = _wait_for(lambda: flock_holder(lock), "the flock to show in /proc/locks")
        assert pid == holder.pid

        def no_flock(*args):
            raise AssertionError("the probe took the publish's lock")

        monkeypatch.setattr(fcntl, "flock", no_flock)
        assert flock_holder(lock) == pid
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert _wait_for(lambda: True if flock_holder(lock) is None else None, "the lock to go") is True
    assert flock_holder(tmp_path / "missing.lock") is None


def test_a_publish_is_found_by_its_command_line():
    # What the kernel shows for `cvmfs_server publish -m … repo/lease` (a bash script).
    fake = subprocess.Popen(["bash", "-c", "sleep 30; true", "/usr/bin/cvmfs_server", "publish", "-m",
                             "reconciler: x", "probe.test.org/b"])
    try:
        assert _wait_for(lambda: publish_process("probe.test.org/b"), "the fake publish") == fake.pid
        assert publish_process("probe.test.org/a") is None  # another node's lease
        assert publish_process("probe.test.org") is None
    finally:
        fake.kill()
        fake.wait()
    assert publish_process("probe.test.org/b") is None
