"""One writer at a time, and images that are complete or absent, on both backends.

A real `reconcile --once` is paused in the middle of applying a layer
(tests/pause_runner.py) while a second run starts beside it: the second one
exits with code 4 and touches nothing; a `--dry-run` plans beside it and
writes nothing; the first one then finishes a complete image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

from reconciler.publish import layout
from reconciler.reconcile import Reconciler
from reconciler.watchlist import load_watchlist
from tests.registry_server import wait_until
from tests.test_publishers import (
    Backend,
    assert_matches_full_apply,
    backend,  # noqa: F401  (the fixture, both backends)
    img,
    run,
)

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def reconcile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], env=_env(), capture_output=True, text=True,
                          timeout=120)


def _default_sigint() -> None:
    """Ctrl-C as at a terminal: a test session started in the background by a
    non-interactive shell (`.ci/run &`) inherits SIGINT ignored, and Python
    then installs no KeyboardInterrupt handler in the run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class PausedRun:
    """A `reconcile --once` held in the middle of its first layer."""

    def __init__(self, watchlist: Path, pause_dir: Path) -> None:
        pause_dir.mkdir()
        self.pause_dir = pause_dir
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.pause_runner", "--once", "--watchlist",
                                      str(watchlist)], env=_env(PAUSE_DIR=str(pause_dir)),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_default_sigint)
        wait_until(lambda: (pause_dir / "paused").exists() or self.proc.poll() is not None, timeout=60,
                   what="the first run to pause inside its build")
        assert self.proc.poll() is None, self.proc.communicate()

    def resume(self) -> Tuple[int, str, str]:
        (self.pause_dir / "resume").touch()
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def snapshot(top: Path) -> Dict[str, Tuple[int, int, int]]:
    """Every path under `top` with its mode, size and mtime: what "writes nothing" compares."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, top)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_a_second_run_waits_its_turn_and_a_dry_run_plans_beside_the_first(backend, fixture_registry, tmp_path,
                                                                          fixture_images):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "edges", '["latest"]', "edges"), img(host, "basic", '["v1"]', "basic")])
    first = PausedRun(wl, tmp_path / "pause")
    try:
        calls_before = len(backend.calls())
        second = reconcile("--once", "--watchlist", str(wl))
        assert second.returncode == 4, second.stderr
        (line,) = second.stderr.strip().splitlines()  # one line, no traceback
        assert "another reconciler is using the state directory" in line and f"pid {first.proc.pid}" in line
        plan = reconcile("--dry-run", "--watchlist", str(wl))
        assert plan.returncode == 0, plan.stderr
        assert "planned   " in plan.stdout
        # Neither touched the first run's work: no recovery, no abort, no cvmfs_server call at all.
        assert len(backend.calls()) == calls_before
        if backend.kind == "local":
            assert list((backend.tmp / "publish" / ".staging").iterdir()), "the first run's build is still there"
        code, out, err = first.resume()
    finally:
        first.kill()
    assert code == 0, err
    assert "2 published" in out
    image = Path(os.path.realpath(backend.visible / "edges:latest"))
    assert_matches_full_apply(image, fixture_images["edges"], tmp_path / "scratch")
    again = reconcile("--once", "--watchlist", str(wl))
    assert again.returncode == 0 and "2 unchanged" in again.stdout


def test_two_state_directories_cannot_publish_to_one_target(backend, fixture_registry, tmp_path):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "edges", '["latest"]', "edges")])
    other = backend.watchlist(host, [img(host, "basic", '["v1"]', "basic")], name="other.toml")
    first = PausedRun(wl, tmp_path / "pause")
    try:
        second = reconcile("--once", "--watchlist", str(other))
        code, _, err = first.resume()
    finally:
        first.kill()
    assert second.returncode == 4
    what = "the publish root" if backend.kind == "local" else f"the CernVM-FS repository {backend.repo}"
    assert f"another reconciler is using {what}" in second.stderr
    assert code == 0, err
    assert not (backend.tmp / "state-other.toml" / "state.db").exists()  # it stopped before touching anything


def test_a_dry_run_writes_nothing(backend, fixture_registry):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "edges", '["latest"]', "edges"), img(host, "basic", '["v1"]', "basic")])
    before = snapshot(backend.tmp)
    plan = reconcile("--dry-run", "--watchlist", str(wl))
    assert plan.returncode == 0 and "2 planned" in plan.stdout
    assert snapshot(backend.tmp) == before, "a dry run on a fresh machine created files"
    assert not run(wl).failed
    wl.write_text(wl.read_text().replace('tags = ["v1"]', 'tags = ["latest"]'))  # basic:v1 goes, basic:latest comes
    before = snapshot(backend.tmp)
    plan = reconcile("--dry-run", "--watchlist", str(wl))
    assert plan.returncode == 0, plan.stderr
    assert "removed   basic:v1" in plan.stdout and "planned   " in plan.stdout
    assert snapshot(backend.tmp) == before, "a dry run beside existing state changed files"


def unlink_published(backend, *relpaths: str) -> None:
    """Remove files of the published tree as a crash or an older version could
    have left it (on CVMFS, in a transaction of its own)."""
    if backend.kind == "cvmfs":
        subprocess.run(["cvmfs_server", "transaction", backend.repo], check=True, capture_output=True)
    tree = backend.mount() if backend.kind == "cvmfs" else backend.visible
    for relpath in relpaths:
        os.unlink(tree / relpath)
    if backend.kind == "cvmfs":
        subprocess.run(["cvmfs_server", "publish", backend.repo], check=True, capture_output=True)


def test_an_image_without_its_completion_record_is_rebuilt(backend, fixture_registry, fixture_images, tmp_path):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "edges", '["latest"]', "edges")])
    assert not run(wl).failed
    digest = fixture_images["edges"].top.digest
    # What a crash (or an older version, or a race) can leave: the directory, half filled, no record.
    unlink_published(backend, layout.completion_relpath(digest), layout.image_relpath(digest) + "/after-empty")
    report = run(wl)
    assert [o.status for o in report.outcomes] == ["published"]  # never "unchanged"
    assert_matches_full_apply(Path(os.path.realpath(backend.visible / "edges:latest")), fixture_images["edges"],
                              tmp_path / "scratch")
    assert (backend.visible / layout.completion_relpath(digest)).is_file()
    assert [o.status for o in run(wl).outcomes] == ["unchanged"]


def test_an_image_of_0_1_keeps_serving_its_tag_until_its_rebuild_is_complete(backend, fixture_registry,
                                                                           fixture_images, monkeypatch):
    """An image published by 0.1 has no completion record. Its rebuild failing
    must not take it away from its tag, and GC never counts it unreferenced."""
    import reconciler.cycle.build as build_stage
    from reconciler.errors import LayerError

    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "edges", '["latest"]', "edges")])
    assert not run(wl).failed
    digest = fixture_images["edges"].top.digest
    unlink_published(backend, layout.completion_relpath(digest))  # as 0.1 left it

    def failing_apply(*a, **kw):
        raise LayerError("injected: the rebuild fails")

    real_apply = build_stage.apply_layer
    monkeypatch.setattr(build_stage, "apply_layer", failing_apply)
    reconciler = Reconciler(load_watchlist(wl))
    try:
        assert digest in reconciler.publisher.tag_links().values()  # a reference, record or not
        report = reconciler.run_once()
    finally:
        reconciler.close()
    assert [o.status for o in report.outcomes] == ["failed"]
    assert (backend.visible / "edges:latest" / "after-empty").exists(), "the tag lost its image"
    monkeypatch.setattr(build_stage, "apply_layer", real_apply)
    assert [o.status for o in run(wl).outcomes] == ["published"]
    assert (backend.visible / layout.completion_relpath(digest)).is_file()


# -- the CVMFS transaction marker and commit --------------------------------------------------------


def _cvmfs(tmp_path, monkeypatch, fixture_registry):
    backend = Backend("cvmfs", tmp_path, monkeypatch)
    host = fixture_registry.host
    return backend, backend.watchlist(host, [img(host, "basic", '["v1"]', "app")])


def _in_transaction(backend) -> bool:
    listing = subprocess.run(["cvmfs_server", "list"], capture_output=True, text=True, check=True).stdout
    return any(line.split()[:1] == [backend.repo] and "in transaction" in line for line in listing.splitlines())


def test_cvmfs_marker_of_a_live_process_is_respected_and_of_a_dead_one_recovered(tmp_path, monkeypatch,
                                                                                 fixture_registry):
    from reconciler.locking import process_start_time

    backend, wl = _cvmfs(tmp_path, monkeypatch, fixture_registry)
    marker = tmp_path / "state-watchlist.toml" / "cvmfs-transaction.json"
    marker.parent.mkdir()
    subprocess.run(["cvmfs_server", "transaction", backend.repo], check=True, capture_output=True)
    alive = subprocess.Popen(["sleep", "120"])  # stands for another reconciler at work
    try:
        marker.write_text(json.dumps({"pid": alive.pid, "start_time": process_start_time(alive.pid)}))
        Reconciler(load_watchlist(wl)).close()
    finally:
        alive.kill()
        alive.wait()
    assert _in_transaction(backend) and "abort" not in [c[0] for c in backend.calls()]
    finished = subprocess.Popen(["true"])
    finished.wait()
    marker.write_text(json.dumps({"pid": finished.pid, "start_time": 1}))  # a pid reused later has another start time
    Reconciler(load_watchlist(wl)).close()
    assert backend.calls()[-1] == ["abort", "-f", backend.repo]
    assert not _in_transaction(backend) and not marker.exists()
    backend.check()


def test_cvmfs_marker_is_written_only_once_the_transaction_is_open(tmp_path, monkeypatch, fixture_registry):
    backend, wl = _cvmfs(tmp_path, monkeypatch, fixture_registry)
    subprocess.run(["cvmfs_server", "transaction", backend.repo], check=True, capture_output=True)  # someone else's
    report = run(wl)
    assert report.failed
    assert not (tmp_path / "state-watchlist.toml" / "cvmfs-transaction.json").exists()
    subprocess.run(["cvmfs_server", "abort", "-f", backend.repo], check=True, capture_output=True)
    assert not run(wl).failed  # and the foreign transaction, once gone, blocks nothing
    backend.check()


def test_cvmfs_a_failing_publish_always_ends_in_a_checked_abort(tmp_path, monkeypatch, fixture_registry):
    from reconciler.errors import PublishError
    from reconciler.publish.cvmfs import CvmfsPublisher

    backend, wl = _cvmfs(tmp_path, monkeypatch, fixture_registry)
    marker = tmp_path / "state-watchlist.toml" / "cvmfs-transaction.json"
    real_run = CvmfsPublisher.run

    def timing_out(self, *args, check=True):
        if args[0] == "publish":
            raise PublishError("cvmfs_server publish did not finish within 21600s")
        return real_run(self, *args, check=check)

    monkeypatch.setattr(CvmfsPublisher, "run", timing_out)
    report = run(wl)
    assert report.failed and "did not finish" in report.outcomes[0].reason
    assert backend.calls()[-1] == ["abort", "-f", backend.repo]
    assert not _in_transaction(backend) and not marker.exists()

    def abort_fails_too(self, *args, check=True):
        if args[0] in ("publish", "abort"):
            return subprocess.CompletedProcess(args, 1, "", f"injected {args[0]} failure")
        return real_run(self, *args, check=check)

    monkeypatch.setattr(CvmfsPublisher, "run", abort_fails_too)
    service = Reconciler(load_watchlist(wl))  # as in the service: one reconciler, cycle after cycle
    try:
        report = service.run_once()
        assert report.failed and "injected publish failure" in report.outcomes[0].reason
        assert _in_transaction(backend) and marker.exists(), "the marker stays while the transaction is open"
        monkeypatch.setattr(CvmfsPublisher, "run", real_run)
        assert not service.run_once().failed  # the next cycle closes the stale transaction first, then publishes
    finally:
        service.close()
    assert not _in_transaction(backend) and not marker.exists()
    assert (backend.visible / "app:v1" / "etc" / "motd").exists()
    backend.check()
