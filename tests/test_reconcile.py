"""`reconcile --once` end to end: the real registry, the applier, the local publisher."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest

from fixtures.push import FixturePusher
from reconciler.cli import main
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.watchlist import load_watchlist
from tests.registry_server import start_registry


def write_watchlist(tmp_path: Path, host: str, images: List[str]) -> Path:
    text = f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\n'
    text += "".join(f"[[image]]\n{body}\n" for body in images)
    path = tmp_path / "watchlist.toml"
    path.write_text(text)
    return path


def run(path: Path, **kw):
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        report = reconciler.run_once(**kw)
        stats = {h: c.stats for h, c in reconciler._clients.items()}
    finally:
        reconciler.close()
    return report, stats


def images_on_disk(root: Path) -> List[str]:
    base = root / ".images"
    if not base.exists():
        return []
    # Image directories only: not their undo logs (<digest>.undo) or records (<digest>.complete)
    return sorted(p.name for d in base.iterdir() for p in d.iterdir() if p.is_dir() and "." not in p.name)


@pytest.fixture
def cycle_watchlist(tmp_path, fixture_registry):
    host = fixture_registry.host
    return write_watchlist(tmp_path, host, [
        f'source = "{host}/fixtures/basic"\ntags = ["v1", "latest"]\ndest = "basic"',
        f'source = "{host}/fixtures/broken-diffid"\ntags = ["latest"]',
        f'source = "{host}/fixtures/multiarch"\ntags = ["latest"]\nplatforms = ["linux/amd64", "linux/arm/v7"]',
        f'source = "{host}/fixtures/manytags"\ntag_pattern = "^t00[0-2]$"\ndest = "many"',
        f'source = "{host}/fixtures/edges"\ntags = ["latest"]\ndest = "edges"',
    ])


def test_once_publishes_everything_but_the_broken_image(cycle_watchlist, fixture_registry, capsys):
    assert main(["--once", "--watchlist", str(cycle_watchlist)]) == 1
    out = capsys.readouterr().out
    assert "FAILED    " + f"{fixture_registry.host}/fixtures/broken-diffid:latest" in out
    assert "image config says sha256:0000" in out
    root = cycle_watchlist.parent / "publish"
    assert (root / "basic:v1" / "etc" / "motd").read_text() == "upper motd\n"
    # Apptainer-ready from the image config
    env = (root / "basic:v1" / ".singularity.d" / "env" / "10-docker2singularity.sh").read_text()
    assert 'GREETING="hello world"' in env
    assert "'/bin/sh' '-c'" in (root / "basic:v1" / ".singularity.d" / "runscript").read_text()
    assert (root / "basic:v1" / "cvmfs").is_dir()
    assert os.readlink(root / "basic:v1") == os.readlink(root / "basic:latest")
    arch = root / fixture_registry.host / "fixtures"
    assert (arch / "multiarch:latest" / "arch").read_text() == "amd64\n"
    assert (arch / "multiarch:latest@linux-arm-v7" / "arch").read_text() == "armv7\n"
    assert sorted(p.name for p in (root / "many").parent.iterdir() if p.name.startswith("many:")) == \
        ["many:t000", "many:t001", "many:t002"]
    # the broken image is absent, not half there, and nothing is left in staging
    assert not (root / fixture_registry.host / "fixtures" / "broken-diffid:latest").exists()
    assert len(images_on_disk(root)) == 5  # basic, 2 multiarch, manytags, edges
    assert list((root / ".staging").iterdir()) == []


def test_second_run_downloads_nothing_and_opens_no_transaction(cycle_watchlist):
    cycle_watchlist.write_text(cycle_watchlist.read_text().replace("fixtures/broken-diffid", "fixtures/basic-zstd"))
    first, _ = run(cycle_watchlist)
    assert first.transactions == 1 and not first.failed
    second, stats = run(cycle_watchlist)
    assert second.transactions == 0
    assert {o.status for o in second.outcomes} == {"unchanged"}
    (client_stats,) = stats.values()
    assert client_stats.blob_bytes == 0 and client_stats.manifest_gets == 0


def test_dry_run_changes_nothing(cycle_watchlist, capsys):
    assert main(["--dry-run", "--watchlist", str(cycle_watchlist)]) == 0
    assert "planned   " in capsys.readouterr().out
    assert not (cycle_watchlist.parent / "publish" / "basic:v1").exists()


@pytest.fixture
def own_registry(tmp_path, fixture_images):
    server = start_registry(tmp_path / "registry")
    pusher = FixturePusher(server.host)

    def push(fixture: str, tag: str) -> str:
        image = fixture_images[fixture]
        image_copy = type(image)(image.name, "team/app", image.blobs, image.manifests, [tag], image.layer_tars)
        pusher.push(image_copy)
        return image.top.digest

    server.push = push  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_tag_moves_to_a_new_digest(tmp_path, own_registry):
    own_registry.push("basic", "stable")
    wl = write_watchlist(tmp_path, own_registry.host, [f'source = "{own_registry.host}/team/app"\ntags = ["stable"]\ndest = "app"'])
    run(wl)
    root = tmp_path / "publish"
    old_target = os.readlink(root / "app:stable")
    new_digest = own_registry.push("edges", "stable")
    report, _ = run(wl)
    assert [o.status for o in report.outcomes] == ["published"]
    assert os.readlink(root / "app:stable") != old_target
    assert new_digest.split(":")[1] in os.readlink(root / "app:stable")
    assert (root / old_target).is_dir()  # the old image waits for GC


def test_removed_tags_lose_their_link(tmp_path, own_registry):
    own_registry.push("basic", "a")
    own_registry.push("manytags", "b")
    host = own_registry.host
    wl = write_watchlist(tmp_path, host, [f'source = "{host}/team/app"\ntags = ["a", "b"]\ndest = "app"'])
    run(wl)
    assert (tmp_path / "publish" / "app:b").is_symlink()
    write_watchlist(tmp_path, host, [f'source = "{host}/team/app"\ntags = ["a"]\ndest = "app"'])
    report, _ = run(wl)
    assert [r.tag_path for r in report.removed] == ["app:b"]
    assert not (tmp_path / "publish" / "app:b").exists() and (tmp_path / "publish" / "app:a").is_symlink()
    write_watchlist(tmp_path, host, [])  # the whole entry dropped from the watchlist
    run(wl)
    assert not (tmp_path / "publish" / "app:a").exists()


def test_failed_tag_listing_never_removes_published_tags(tmp_path, own_registry):
    own_registry.push("basic", "1.0")
    host = own_registry.host
    wl = write_watchlist(tmp_path, host, [f'source = "{host}/team/app"\ntag_pattern = "^1"\ndest = "app"'])
    run(wl)
    own_registry.stop()  # the registry is gone: the listing fails
    report, _ = run(wl)
    assert report.failed and report.entry_failures and not report.removed
    assert (tmp_path / "publish" / "app:1.0" / "etc" / "motd").exists()


def test_leftovers_of_a_crash_are_removed_at_start(cycle_watchlist):
    staging = cycle_watchlist.parent / "publish" / ".staging" / "deadbeef.1234"
    (staging / "usr").mkdir(parents=True)
    (staging / "usr" / "half").write_text("x")
    Reconciler(load_watchlist(cycle_watchlist)).close()
    assert list(staging.parent.iterdir()) == []


def _blob_gets(server, since: int) -> int:
    return sum(1 for e in server.access_log()[since:]
               if e["http.request.method"] == "GET" and "/blobs/" in e["http.request.uri"])


def test_blobs_come_from_the_mirror_and_tags_from_the_origin(tmp_path, token_registry, fixture_registry,
                                                             monkeypatch):
    monkeypatch.setenv("ORIGIN_PW", "wonder land, \"quoted\"")
    origin, mirror = token_registry, fixture_registry  # same storage: the mirror holds every blob
    wl = tmp_path / "watchlist.toml"
    wl.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                  f'[registries."{origin.host}"]\ninsecure = true\nusername = "alice"\npassword_env = "ORIGIN_PW"\n'
                  f'mirror = "http://{mirror.host}"\n'
                  f'[[image]]\nsource = "{origin.host}/fixtures/edges"\ntags = ["latest"]\ndest = "edges"\n')
    before = (len(origin.access_log()), len(mirror.access_log()))
    report, _ = run(wl)
    assert not report.failed
    assert _blob_gets(mirror, before[1]) >= 4  # config + layers
    origin_log = origin.access_log()[before[0]:]
    assert _blob_gets(origin, before[0]) == 0
    assert any(e["http.request.method"] == "HEAD" and "/manifests/latest" in e["http.request.uri"] for e in origin_log)
    assert (tmp_path / "publish" / "edges:latest" / "after-empty").exists()


def test_a_mirror_without_the_blob_falls_back_to_the_origin(tmp_path, fixture_registry):
    empty = start_registry(tmp_path / "empty-mirror")
    try:
        wl = tmp_path / "watchlist.toml"
        wl.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                      f'[registries."{fixture_registry.host}"]\ninsecure = true\nmirror = "http://{empty.host}"\n'
                      f'[[image]]\nsource = "{fixture_registry.host}/fixtures/basic"\ntags = ["v1"]\ndest = "b"\n')
        report, _ = run(wl)
        assert not report.failed
        assert any("/blobs/" in e["http.request.uri"] and e["http.response.status"] == 404
                   for e in empty.access_log())
        assert (tmp_path / "publish" / "b:v1" / "etc" / "motd").exists()
    finally:
        empty.stop()


def test_entries_sharing_a_source_never_remove_each_others_tags(tmp_path, own_registry):
    """The service polls one entry at a time: removals are scoped by dest and
    state rows keyed by (dest, tag, platform), so two entries of one source
    keep each other's tags, even the same tag under two dests."""
    own_registry.push("basic", "a")
    own_registry.push("manytags", "b")
    host = own_registry.host
    wl = write_watchlist(tmp_path, host, [f'source = "{host}/team/app"\ntags = ["a"]\ndest = "one"',
                                          f'source = "{host}/team/app"\ntags = ["a", "b"]\ndest = "two"'])
    reconciler = Reconciler(load_watchlist(wl), retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        one, two = reconciler.watchlist.images
        for entry in (one, two, one, two):
            report = reconciler.run_once(entries=[entry])
            assert not report.failed and not report.removed, [r.tag_path for r in report.removed]
        rows = {(r.dest, r.tag) for r in reconciler.state.all()}
    finally:
        reconciler.close()
    root = tmp_path / "publish"
    assert all((root / link).is_symlink() for link in ("one:a", "two:a", "two:b"))
    assert rows == {("one", "a"), ("two", "a"), ("two", "b")}


@pytest.mark.parametrize("available, newest, expected", [
    (["2.9", "2.10", "nightly"], 2, ["2.10", "2.9"]),
    (["2.9", "2.10", "nightly"], 3, ["2.10", "2.9", "nightly"]),
    (["latest", "nightly", "1.0"], 2, ["1.0", "nightly"]),  # non-versions by name, below every version
])
def test_newest_ranks_tags_that_are_not_versions_below_every_version(tmp_path, available, newest, expected):
    from reconciler.cycle.plan import select_tags

    wl = tmp_path / "watchlist.toml"
    wl.write_text(f'[[image]]\nsource = "example.org/team/app"\ntag_pattern = ".*"\nnewest = {newest}\n')
    (entry,) = load_watchlist(wl).images
    assert sorted(select_tags(entry, available)) == sorted(expected)


def test_a_lost_state_database_is_rebuilt_from_the_published_tree(tmp_path, own_registry):
    """The tree is the source of truth: with state.db gone, a tag no longer
    watched is still found (in the tree) and removed, and the rest is unchanged."""
    own_registry.push("basic", "a")
    own_registry.push("manytags", "b")
    host = own_registry.host
    wl = write_watchlist(tmp_path, host, [f'source = "{host}/team/app"\ntags = ["a", "b"]\ndest = "app"'])
    run(wl)
    for leftover in (tmp_path / "state").glob("state.db*"):
        leftover.unlink()
    write_watchlist(tmp_path, host, [f'source = "{host}/team/app"\ntags = ["a"]\ndest = "app"'])
    report, _ = run(wl)
    assert [o.status for o in report.outcomes] == ["unchanged"]
    assert [r.tag_path for r in report.removed] == ["app:b"]
    assert not os.path.lexists(tmp_path / "publish" / "app:b") and (tmp_path / "publish" / "app:a").is_symlink()


def test_threads_asking_for_a_registry_client_at_once_share_one(tmp_path, monkeypatch):
    """The stages ask for clients from their worker threads: one client per
    host however they race (its token cache and throttle are per client)."""
    import threading
    import time

    from reconciler import reconcile as reconcile_module

    made: List[str] = []
    real = reconcile_module.RegistryClient

    def slow_client(host: str, **kw):
        made.append(host)
        time.sleep(0.05)  # widens the window two unlocked threads would both pass through
        return real(host, **kw)

    monkeypatch.setattr(reconcile_module, "RegistryClient", slow_client)
    wl = write_watchlist(tmp_path, "127.0.0.1:1", ['source = "127.0.0.1:1/x/y"\ntags = ["v1"]'])
    reconciler = Reconciler(load_watchlist(wl))
    try:
        start = threading.Barrier(8)
        got: List[object] = []

        def ask() -> None:
            start.wait(timeout=10)
            got.append(reconciler.client("127.0.0.1:1"))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert made == ["127.0.0.1:1"] and len(got) == 8 and all(c is got[0] for c in got)
    finally:
        reconciler.close()
