"""The local directory publisher's durability and what it costs: the publish
root's filesystem is flushed once per transaction, after every image is built
and before the first tag link moves (real images from the loopback registry)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import List

import pytest

from reconciler.publish import make_publisher
from reconciler.publish.flush import open_root, sync_filesystem
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.watchlist import load_watchlist


class Flushes:
    """A flush seam: notes, at each flush, the tag links and completion records
    that stand under the root; then flushes for real (or fails, when told)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.links_seen: List[List[str]] = []
        self.records_seen: List[int] = []
        self.fail = False

    def __call__(self, fd: int) -> None:
        self.links_seen.append(sorted(p.name for p in self.root.iterdir() if p.is_symlink()))
        self.records_seen.append(len(list(self.root.glob(".images/*/*.complete"))))
        if self.fail:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        sync_filesystem(fd)


def image(host: str, name: str, tags: str, dest: str) -> str:
    return f'[[image]]\nsource = "{host}/fixtures/{name}"\ntags = {tags}\ndest = "{dest}"\n'


def write_watchlist(tmp_path: Path, host: str, images: List[str]) -> Path:
    path = tmp_path / "watchlist.toml"
    path.write_text('[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                    f'[registries."{host}"]\ninsecure = true\n' + "".join(images))
    return path


def run(path: Path, flushes: Flushes):
    watchlist = load_watchlist(path)
    publisher = make_publisher(watchlist.publish, state_dir=watchlist.state_dir)
    publisher.flush = flushes  # type: ignore[attr-defined]  # the local publisher's seam
    reconciler = Reconciler(watchlist, publisher=publisher, retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        return reconciler.run_once()
    finally:
        reconciler.close()


@pytest.fixture
def os_syncs(monkeypatch) -> List[int]:
    """Every os.sync() call (a flush of the whole machine) is noted, and still done."""
    calls: List[int] = []
    real = os.sync

    def counted() -> None:
        calls.append(1)
        real()

    monkeypatch.setattr(os, "sync", counted)
    return calls


def test_a_cycle_of_several_images_flushes_once_before_any_tag_moves(tmp_path, fixture_registry, os_syncs):
    host = fixture_registry.host
    root = tmp_path / "publish"
    flushes = Flushes(root)
    wl = write_watchlist(tmp_path, host, [image(host, "basic", '["v1", "latest"]', "a"),
                                          image(host, "edges", '["latest"]', "b"),
                                          image(host, "special", '["latest"]', "c")])
    report = run(wl, flushes)
    assert not report.failed and report.transactions == 1
    # Three images, one flush of the root's filesystem only, and nothing of the whole machine.
    assert len(flushes.links_seen) + len(os_syncs) == 1 and os_syncs == []
    # At the flush no tag link stood yet (nor any completion record); after it, all four.
    assert flushes.links_seen == [[]] and flushes.records_seen == [0]
    assert len(list(root.glob(".images/*/*.complete"))) == 3
    assert sorted(p.name for p in root.iterdir() if p.is_symlink()) == ["a:latest", "a:v1", "b:latest", "c:latest"]
    assert (root / "a:v1" / "etc" / "motd").read_text() == "upper motd\n"

    again = run(wl, flushes)  # nothing changed: nothing built, nothing flushed
    assert {o.status for o in again.outcomes} == {"unchanged"} and len(flushes.links_seen) == 1

    wl = write_watchlist(tmp_path, host, [image(host, "basic", '["v1", "latest"]', "a"),
                                          image(host, "edges", '["latest"]', "b"),
                                          image(host, "special", '["latest"]', "c"),
                                          image(host, "edges", '["latest"]', "d")])
    run(wl, flushes)  # a new tag of an image already on disk: a link only, no flush
    assert len(flushes.links_seen) == 1 and os.readlink(root / "d:latest") == os.readlink(root / "b:latest")


def test_a_failed_flush_moves_no_tag_and_the_next_cycle_publishes(tmp_path, fixture_registry, os_syncs):
    host = fixture_registry.host
    root = tmp_path / "publish"
    flushes = Flushes(root)
    flushes.fail = True
    wl = write_watchlist(tmp_path, host, [image(host, "basic", '["v1"]', "a"), image(host, "edges", '["latest"]', "b")])
    report = run(wl, flushes)
    assert {o.status for o in report.outcomes} == {"failed"}
    assert all("cannot flush the filesystem of the publish root" in o.reason and "Input/output error" in o.reason
               for o in report.outcomes)
    assert len(flushes.links_seen) == 1  # said again to every tag, never asked again: it would not fail twice
    assert not [p for p in root.iterdir() if p.is_symlink()]
    assert list(root.glob(".images/*/*")) == []  # built, never on disk for sure: removed
    flushes.fail = False
    healed = run(wl, flushes)
    assert not healed.failed and (root / "a:v1" / "etc" / "motd").exists() and (root / "b:latest").exists()


def test_sync_filesystem_uses_syncfs_not_a_flush_of_the_machine(tmp_path, monkeypatch):
    def whole_machine() -> None:
        raise AssertionError("os.sync called: syncfs exists on Linux")

    monkeypatch.setattr(os, "sync", whole_machine)
    fd = open_root(tmp_path)
    try:
        sync_filesystem(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as failed:
        sync_filesystem(fd)  # closed: the kernel's error comes back, never swallowed
    assert failed.value.errno == errno.EBADF
