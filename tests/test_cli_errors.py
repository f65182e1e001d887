"""What a site admin sees when the machine or the watchlist is wrong: one line
on stderr, no traceback, and the documented exit code (issue #11).

  2  configuration error    3  cannot start    4  busy    130  Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.locking import ProcessLock
from tests.as_nobody import run_as_nobody
from tests.test_one_writer import PausedRun, reconcile
from tests.test_publishers import (
    Backend,
    backend,  # noqa: F401  (the fixture, both backends)
    img,
)


def one_line(done: subprocess.CompletedProcess) -> str:
    """The only line on stderr (a traceback would be many)."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_publish_root_under_a_file_exits_3(tmp_path):
    (tmp_path / "afile").write_text("not a directory\n")
    wl = tmp_path / "watchlist.toml"
    wl.write_text('[publish]\nroot = "afile/publish"\n[[image]]\nsource = "127.0.0.1:1/x/y"\ntags = ["v1"]\n'
                  'dest = "y"\n')
    done = reconcile("--once", "--watchlist", str(wl))
    assert done.returncode == 3
    line = one_line(done)
    assert "afile/publish" in line and "is a file" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to become nobody)")
def test_publish_root_not_writable_exits_3():
    # Run as nobody: root may write anywhere. The directory must be reachable by nobody.
    top = Path(tempfile.mkdtemp(prefix="reconciler-perm-"))
    try:
        os.chmod(top, 0o755)
        (top / "publish").mkdir(mode=0o755)
        (top / "state").mkdir()
        os.chown(top / "state", 65534, 65534)
        wl = top / "watchlist.toml"
        wl.write_text('[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                      '[[image]]\nsource = "127.0.0.1:1/x/y"\ntags = ["v1"]\ndest = "y"\n')
        done = run_as_nobody(lambda: cli.main(["--once", "--watchlist", str(wl)]))
        assert done.returncode == 3, done.stderr
        line = one_line(done)
        assert f"the publish root {top / 'publish'} is not writable by this user (uid 65534)" in line
        assert os.listdir(top / "publish") == []
    finally:
        shutil.rmtree(top)


def test_missing_password_file_is_a_configuration_error(tmp_path, fixture_registry):
    host = fixture_registry.host
    wl = tmp_path / "watchlist.toml"
    wl.write_text(f'[publish]\nroot = "publish"\n[registries."{host}"]\ninsecure = true\nusername = "u"\n'
                  f'password_file = "no-such-secret"\n[[image]]\nsource = "{host}/fixtures/basic"\ntags = ["v1"]\n'
                  'dest = "basic"\n')
    done = reconcile("--once", "--watchlist", str(wl))
    assert done.returncode == 2
    line = one_line(done)
    assert str(tmp_path / "no-such-secret") in line
    assert not (tmp_path / "publish").exists()


@pytest.mark.parametrize("listen, code, message", [
    ("localhost:80x", 2, "port '80x' is not a number from 1 to 65535"),
    ("in-use", 3, "the port is already in use"),
])
def test_bad_listen_addresses(tmp_path, listen, code, message):
    wl = tmp_path / "watchlist.toml"
    wl.write_text('[publish]\nroot = "publish"\n[[image]]\nsource = "127.0.0.1:1/x/y"\ntags = ["v1"]\ndest = "y"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if listen == "in-use":
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
        done = reconcile("--listen", listen, "--watchlist", str(wl))
    assert done.returncode == code
    assert message in one_line(done)
    assert not (tmp_path / "publish").exists()


def test_ctrl_c_during_once_exits_130_and_leaves_nothing_half_done(backend, fixture_registry, tmp_path):  # noqa: F811
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "edges", '["latest"]', "edges")])
    first = PausedRun(wl, tmp_path / "pause")
    try:
        first.proc.send_signal(signal.SIGINT)
        out, err = first.proc.communicate(timeout=60)
    finally:
        first.kill()
    assert first.proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("reconcile: interrupted") and "Traceback" not in err
    assert not (backend.visible / "edges:latest").exists()
    if backend.kind == "local":
        assert list((backend.tmp / "publish" / ".staging").iterdir()) == []
    else:
        # The transaction was aborted on the way out: the next run opens its own.
        assert [c[0] for c in backend.calls()][-2:] == ["transaction", "abort"]
    again = reconcile("--once", "--watchlist", str(wl))
    assert again.returncode == 0, again.stderr
    assert "1 published" in again.stdout


def test_a_state_database_that_cannot_be_opened_exits_3(tmp_path):
    (tmp_path / "state" / "state.db").mkdir(parents=True)  # a directory where the database goes
    wl = tmp_path / "watchlist.toml"
    wl.write_text('[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                  '[[image]]\nsource = "127.0.0.1:1/x/y"\ntags = ["v1"]\ndest = "y"\n')
    done = reconcile("--once", "--watchlist", str(wl))
    assert done.returncode == 3, done.stderr
    assert f"cannot open the state directory {tmp_path / 'state'}" in one_line(done)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to become nobody)")
def test_a_lock_file_left_by_root_does_not_stop_the_service_user():
    """After one run with sudo the lock file belongs to root: flock works on it read-only."""
    top = Path(tempfile.mkdtemp(prefix="reconciler-lock-"))
    try:
        os.chmod(top, 0o777)
        (top / "lock").write_text("")
        os.chmod(top / "lock", 0o644)

        def lock_and_release() -> int:
            lock = ProcessLock(top / "lock", "the test")
            lock.acquire()
            print("locked")
            lock.release()
            return 0

        done = run_as_nobody(lock_and_release)
        assert done.returncode == 0 and done.stdout.strip() == "locked", done.stderr
    finally:
        shutil.rmtree(top)


def test_a_working_directory_inside_the_repository_exits_3(tmp_path, monkeypatch, fixture_registry):
    """CernVM-FS refuses to publish while our process has its cwd under /cvmfs/<repo>."""
    backend = Backend("cvmfs", tmp_path, monkeypatch, double=True)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "app")])
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "--once", "--watchlist", str(wl)],
                          cwd=backend.mount(), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 3, done.stderr
    assert "run reconcile from another directory" in one_line(done)


@pytest.mark.skipif(os.geteuid() != 0, reason="file capabilities are applied as root only")
def test_file_capabilities_on_a_repository_that_drops_xattrs_are_reported(tmp_path, monkeypatch, fixture_registry,
                                                                          caplog):
    from reconciler.publish.cvmfs import CvmfsPublisher
    from tests.test_publishers import run

    backend = Backend("cvmfs", tmp_path, monkeypatch, double=True)
    monkeypatch.setattr(CvmfsPublisher, "drops_xattrs", lambda self: True)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "special", '["latest"]', "special"), img(host, "basic", '["v1"]', "b")])
    with caplog.at_level("WARNING"):
        assert not run(wl).failed
    warned = [r.getMessage() for r in caplog.records if "security.capability" in r.getMessage()]
    assert len(warned) == 1 and "fixtures/special" in warned[0] and "CVMFS_INCLUDE_XATTRS=true" in warned[0]
