"""The tar relay into `cvmfs_server ingest` (reconciler/publish/cvmfs_ingest.py),
with a stand-in for ingest that keeps what it read; on the real CernVM-FS
the ingest path runs in tests/test_publishers.py and below."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from reconciler.errors import PublishError
from reconciler.publish.cvmfs_ingest import run_ingest

# Reads the whole stream, then keeps it: a reader killed before the end keeps nothing.
_READER = "import sys; data = sys.stdin.buffer.read(); open(sys.argv[1], 'wb').write(data); print('read', len(data))"


def _staging(tmp_path: Path) -> Path:
    staging = tmp_path / "staging"
    (staging / ".images" / "ab" / "image" / "etc").mkdir(parents=True)
    (staging / ".images" / "ab" / "image" / "etc" / "big").write_bytes(os.urandom(3 << 20))
    (staging / ".images" / "ab" / "image.complete").write_text("{}\n")
    os.symlink(".images/ab/image", staging / "app:latest")
    return staging


def test_the_whole_archive_reaches_ingest(tmp_path):
    staging = _staging(tmp_path)
    kept = tmp_path / "kept.tar"
    done = run_ingest([sys.executable, "-c", _READER, str(kept)], staging,
                      [".images/ab/image", ".images/ab/image.complete", "app:latest"], timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("read")
    with tarfile.open(kept) as archive:
        names = archive.getnames()
        assert names[-2:] == [".images/ab/image.complete", "app:latest"]
        assert archive.extractfile(".images/ab/image/etc/big").read() == \
            (staging / ".images/ab/image/etc/big").read_bytes()


def test_a_tar_failure_kills_ingest_before_the_end_of_the_archive(tmp_path):
    """tar skips what it cannot read and still ends the archive cleanly: the
    reader must never get that end (it would publish a tree without the file)."""
    staging = _staging(tmp_path)
    kept = tmp_path / "kept.tar"
    with pytest.raises(PublishError, match=r"tar of the staging tree .* failed \(exit 2\).*missing"):
        run_ingest([sys.executable, "-c", _READER, str(kept)], staging,
                   [".images/ab/image", ".images/ab/missing", ".images/ab/image.complete"], timeout=60)
    assert not kept.exists()


def test_an_ingest_that_ends_early_is_reported_with_its_own_message(tmp_path):
    staging = _staging(tmp_path)
    quits = "import sys; sys.stdin.buffer.read(1000); print('Fatal error in reading the archive'); sys.exit(3)"
    done = run_ingest([sys.executable, "-c", quits], staging, [".images/ab/image"], timeout=60)
    assert done.returncode == 3 and "Fatal error" in done.stdout


def test_the_relay_holds_back_only_the_last_record(tmp_path):
    """What ingest gets before tar's exit is all but the end-of-archive record."""
    from reconciler.publish import cvmfs_ingest

    read_end, write_end = os.pipe()
    sink_r, sink_w = os.pipe()
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("f")
        info.size = 5000
        archive.addfile(info, io.BytesIO(b"x" * 5000))
    data = payload.getvalue()
    os.write(write_end, data)
    os.close(write_end)
    held = cvmfs_ingest._relay(read_end, sink_w)
    os.close(sink_w)
    passed = os.read(sink_r, len(data))
    assert passed + held == data and len(held) == min(len(data), 20 * 512)


# -- on the real CernVM-FS stratum 0 ------------------------------------------


def _spool_staging(repo: str):
    from reconciler.publish.cvmfs_ingest import STAGING_PREFIX

    return [p for p in (Path("/var/spool/cvmfs") / repo).glob(STAGING_PREFIX + "*")]


def _links_serve_complete_images(visible: Path) -> None:
    """Every tag link in the published revision leads to an image whose
    completion record is there, its tree matching the image's own."""
    for link in visible.iterdir():
        if link.is_symlink():
            image = Path(os.path.realpath(link))
            assert image.with_name(image.name + ".complete").is_file(), link


def test_a_cold_cycle_is_one_ingest_and_matches_a_full_apply(tmp_path, monkeypatch, fixture_registry, fixture_images):
    from tests.test_publishers import Backend, assert_matches_full_apply, img, run

    backend = Backend("cvmfs", tmp_path, monkeypatch)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "chain-v1", '["latest"]', "v1"), img(host, "edges", '["latest"]', "b"),
                                  img(host, "basic", '["v1"]', "team/c")])
    report = run(wl)
    assert not report.failed and report.transactions == 1
    assert [c[0] for c in backend.calls()] == ["ingest"]  # one revision: no transaction, no publish
    visible = backend.visible
    assert_matches_full_apply(Path(os.path.realpath(visible / "v1:latest")), fixture_images["chain-v1"],
                              tmp_path / "scratch")
    _links_serve_complete_images(visible)
    assert (visible / "team" / "c:v1" / "etc" / "motd").read_text() == "upper motd\n"
    # each image a nested catalog, the buckets one, all 256 buckets made (a template's destination needs one)
    catalogs = subprocess.run(["cvmfs_server", "list-catalogs", backend.repo], capture_output=True, text=True,
                              check=True).stdout
    assert catalogs.count("/.images/") == 3 and "/.images\n" in catalogs, catalogs
    assert len(list((visible / ".images").glob("??"))) == 256
    assert _spool_staging(backend.repo) == []
    # the next version starts from the ingested one (its undo log came with it)
    wl = backend.watchlist(host, [img(host, "chain-v1", '["latest"]', "v1"), img(host, "chain-v2", '["latest"]', "v2")])
    assert not run(wl).failed
    assert [c[:2] for c in backend.calls() if c[0] == "transaction"][-1] == ["transaction", "-T"]
    assert_matches_full_apply(Path(os.path.realpath(visible / "v2:latest")), fixture_images["chain-v2"],
                              tmp_path / "scratch2")
    backend.check()


def test_an_image_with_xattrs_gets_them_in_a_transaction_after_the_ingest(tmp_path, monkeypatch, fixture_registry,
                                                                          fixture_images):
    """The repository keeps xattrs (CVMFS_INCLUDE_XATTRS=true, as the README
    advises), ingest drops them: the image's record and link come with them."""
    from tests.test_publishers import _OUR_ADDITIONS, _OUR_PARENTS, Backend, img, run
    from tests.treecompare import apply_image, as_cvmfs_publishes, describe_tree

    backend = Backend("cvmfs", tmp_path, monkeypatch)
    host = fixture_registry.host
    assert not run(backend.watchlist(host, [img(host, "special", '["latest"]', "s"),
                                            img(host, "basic", '["v1"]', "b")])).failed
    assert [c[0] for c in backend.calls()] == ["ingest", "transaction", "publish"]
    tree = Path(os.path.realpath(backend.visible / "s:latest"))
    apply_image(fixture_images["special"], tmp_path / "scratch")

    def described(root: Path):  # as a publish stores it, without what we add, directories without mtimes
        entries = as_cvmfs_publishes(describe_tree(root)[0])
        return {p: e[:7] if e[0] == 0o040000 else e for p, e in entries.items() if not p.startswith(_OUR_ADDITIONS)}

    ours, full = described(tree), described(tmp_path / "scratch")
    for parent in _OUR_PARENTS:  # made for the Apptainer files where the image has none
        if parent not in full:
            ours.pop(parent, None)
    assert ours == full
    assert any(e[6] for e in ours.values())  # the fixture's xattrs, on the published tree
    assert any(e[0] in (0o020000, 0o060000, 0o010000) for e in ours.values())  # device nodes and FIFOs too
    assert (backend.visible / "b:v1" / "etc" / "motd").exists()
    backend.check()


def test_a_tar_failure_publishes_nothing(tmp_path, monkeypatch, fixture_registry):
    from reconciler.publish.cvmfs_ingest import CvmfsIngestTransaction
    from tests.test_publishers import Backend, img, run

    backend = Backend("cvmfs", tmp_path, monkeypatch)
    host = fixture_registry.host
    real_members = CvmfsIngestTransaction._members
    # A member tar cannot read, between the images and their links.
    monkeypatch.setattr(CvmfsIngestTransaction, "_members",
                        lambda self: (lambda m: m[:-1] + [".images/gone"] + m[-1:])(real_members(self)))
    report = run(backend.watchlist(host, [img(host, "basic", '["v1"]', "a"), img(host, "edges", '["latest"]', "b")]))
    assert report.failed and all("tar of the staging tree" in o.reason for o in report.outcomes)
    assert not list(backend.visible.iterdir())  # the revision is the empty one it was
    assert _spool_staging(backend.repo) == []
    monkeypatch.setattr(CvmfsIngestTransaction, "_members", real_members)
    assert not run(backend.watchlist(host, [img(host, "basic", '["v1"]', "a")])).failed
    backend.check()


def test_reconciler_killed_during_an_ingest_never_shows_a_partial_image(tmp_path, monkeypatch, fixture_registry):
    """Killed alone, reconciler leaves the ingest to end on a cut stream: it
    fails, or publishes a prefix in which no record precedes its image and
    no link its record; the next start cleans up and converges."""
    import time

    from reconciler.publish.cvmfs import publish_process
    from tests import cvmfs_real
    from tests.test_publishers import Backend, img, run

    backend = Backend("cvmfs", tmp_path, monkeypatch)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "chain-v1", '["latest"]', "app"), img(host, "edges", '["latest"]', "e")])
    for cut in (64 << 10, 1 << 20):
        env = {**os.environ, "CRASH_AT": "ingest", "CRASH_INGEST_BYTES": str(cut),
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        crashed = subprocess.run([sys.executable, "-m", "tests.crash_runner", "--once", "--watchlist", str(wl)],
                                 env=env, capture_output=True)
        assert crashed.returncode == -9, crashed.stderr[-2000:]
        deadline = time.monotonic() + 120
        while publish_process(backend.repo) is not None:  # the ingest goes on alone, then ends
            assert time.monotonic() < deadline, "the ingest did not end"
            time.sleep(0.2)
        _links_serve_complete_images(backend.visible)
        report = run(wl)
        assert not report.failed
        assert (backend.visible / "e:latest" / "after-empty").exists()
        assert not cvmfs_real.in_transaction(backend.repo) and _spool_staging(backend.repo) == []
        backend.check()
        cvmfs_real.fresh_repository(backend.repo)
