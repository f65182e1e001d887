"""Any failure of one image stays that image's: the cycle goes on, the others
publish, and every outcome is recorded (issue #11)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import httpx

from reconciler.blobstore import BlobStore
from reconciler.registry.client import RegistryClient
from reconciler.state import StateDB
from tests.test_publishers import Backend, img, run


def layer_digests(image) -> list:
    return [layer["digest"] for layer in json.loads(image.top.data)["layers"]]


def blob_bytes(image) -> int:
    """What the image needs in the blob store: its config and its layers."""
    manifest = json.loads(image.top.data)
    return manifest["config"]["size"] + sum({layer["digest"]: layer["size"] for layer in manifest["layers"]}.values())


def test_unexpected_errors_fail_their_image_only(tmp_path, monkeypatch, fixture_registry, fixture_images):
    """An httpx.DecodingError (a broken gzip body the client did not wrap) and
    ENOSPC in the blob store each end one image; the third publishes."""
    backend = Backend("local", tmp_path, monkeypatch)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "basic"), img(host, "edges", '["latest"]', "edges"),
                                  img(host, "special", '["latest"]', "special")])
    broken_body = layer_digests(fixture_images["edges"])[-1]
    no_space = layer_digests(fixture_images["special"])[-1]
    real_fetch, real_fill = RegistryClient.fetch_blob, BlobStore._fill

    def fetch_blob(self, repository, blob, *a, **kw):
        if blob.digest == broken_body:
            raise httpx.DecodingError("Error -3 while decompressing data: invalid block type")
        return real_fetch(self, repository, blob, *a, **kw)

    def fill(self, digest, size, path, *a, **kw):
        if digest == no_space:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_fill(self, digest, size, path, *a, **kw)

    monkeypatch.setattr(RegistryClient, "fetch_blob", fetch_blob)
    monkeypatch.setattr(BlobStore, "_fill", fill)
    report = run(wl)
    by_name = {o.entry.dest: o for o in report.outcomes}
    assert by_name["basic"].status == "published"
    assert by_name["edges"].status == "failed"
    assert "unexpected DecodingError: Error -3 while decompressing data" in by_name["edges"].reason
    assert by_name["special"].status == "failed"
    assert "No space left on device under " in by_name["special"].reason and "free space there" in \
        by_name["special"].reason
    state = StateDB(tmp_path / "state-watchlist.toml" / "state.db")
    try:
        assert state.get("edges", "latest", "linux/amd64").failures == 1
        assert "DecodingError" in state.get("edges", "latest", "linux/amd64").failure_reason
        assert state.get("special", "latest", "linux/amd64").failures == 1
        assert state.get("basic", "v1", "linux/amd64").published_digest
    finally:
        state.close()
    monkeypatch.setattr(RegistryClient, "fetch_blob", real_fetch)
    monkeypatch.setattr(BlobStore, "_fill", real_fill)
    again = run(wl)
    assert not again.failed
    assert (backend.visible / "edges:latest").exists() and (backend.visible / "special:latest").exists()


def _with_cache_bound(path: Path, bound: int) -> None:
    path.write_text(path.read_text().replace("[state]\n", f"[state]\nblob_cache_max = \"{bound}B\"\n"))


def test_a_cache_bound_below_one_image_is_a_clear_error_and_the_largest_image_is_enough(
        tmp_path, monkeypatch, fixture_registry, fixture_images):
    backend = Backend("local", tmp_path, monkeypatch)
    host = fixture_registry.host
    images = {"edges": "latest", "chain-v1": "latest", "basic": "v1"}
    entries = [img(host, name, f'["{tag}"]', name) for name, tag in images.items()]
    largest = max(blob_bytes(fixture_images[name]) for name in images)
    wl = backend.watchlist(host, entries)
    _with_cache_bound(wl, largest - 1)
    report = run(wl)
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert failed, "no image exceeds a bound one byte below the largest"
    assert all("blob_cache_max" in o.reason and "raise blob_cache_max above the largest image" in o.reason
               for o in failed)
    # A bound of exactly the largest image: every image publishes, though the
    # cycle's blobs together exceed it (they are pinned until the cycle ends).
    assert sum(blob_bytes(fixture_images[name]) for name in images) > largest
    wl = backend.watchlist(host, entries, name="bounded.toml")
    _with_cache_bound(wl, largest)
    report = run(wl)
    assert not report.failed, [o.reason for o in report.outcomes]
    store = tmp_path / "state-bounded.toml" / "blobs"
    assert sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) <= largest


def test_a_blob_store_that_cannot_keep_an_unchanged_tags_manifests_fails_that_tag_only(
        tmp_path, monkeypatch, fixture_registry):
    """A second cycle finds both tags unchanged; the store refuses to touch one's
    manifests (a full disk): that tag fails, the other stays unchanged, the
    cycle ends normally (issue #19: one odd outcome never stops a run)."""
    backend = Backend("local", tmp_path, monkeypatch)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "basic"), img(host, "edges", '["latest"]', "edges")])
    assert not run(wl).failed
    first = run(wl)
    edges_digests = {d for o in first.outcomes if o.entry.dest == "edges" for d in (o.digests or ())}
    real_touch = BlobStore.touch

    def touch(self, digest, *a, **kw):
        if digest in edges_digests:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root))
        return real_touch(self, digest, *a, **kw)

    monkeypatch.setattr(BlobStore, "touch", touch)
    report = run(wl)
    by_dest = {o.entry.dest: o for o in report.outcomes}
    assert by_dest["basic"].status == "unchanged"
    assert by_dest["edges"].status == "failed" and "No space left on device" in by_dest["edges"].reason
