"""The cycle's stages in-process: a registry served by `httpx.MockTransport`,
a fake publisher, no network and no publish backend."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from reconciler.blobstore import BlobStore
from reconciler.cycle.fetch_stage import FetchStage
from reconciler.cycle.plan import Plan, plan
from reconciler.cycle.results import BuildResult, cycle_report
from reconciler.registry.client import RegistryClient, RetryPolicy
from reconciler.registry.manifest import OCI_MANIFEST, Platform
from reconciler.state import StateDB, TagKey
from reconciler.watchlist import Watchlist, load_watchlist

HOST = "registry.test"
REPO = "lib/app"
AMD64 = Platform("linux", "amd64")
NOW = 1_000_000.0


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Body(httpx.SyncByteStream):
    """A body streamed as it would come off the wire (a bytes body would be read
    up front, and the client reads raw chunks)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data


class FakeRegistry:
    """One repository's manifests and configs, served over a MockTransport; it
    notes every request as (method, path)."""

    def __init__(self) -> None:
        self.tags: Dict[str, bytes] = {}  # tag -> manifest body
        self.blobs: Dict[str, bytes] = {}
        self.requests: List[Tuple[str, str]] = []
        self.gone = False  # the repository was deleted: every request is answered 404

    def push(self, tag: str, marker: str) -> Tuple[str, bytes, str, bytes]:
        """An image with one layer; returns (manifest digest, manifest, config
        digest, config)."""
        layer = marker.encode() * 8
        config = json.dumps({"os": "linux", "architecture": "amd64",
                             "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(layer),
                        "size": len(layer)}],
        }).encode()
        self.tags[tag] = manifest
        self.blobs[digest_of(config)] = config
        self.blobs[digest_of(layer)] = layer
        return digest_of(manifest), manifest, digest_of(config), config

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        prefix = f"/v2/{REPO}/"
        if self.gone:
            return httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]})
        if path == prefix + "tags/list":
            return httpx.Response(200, json={"name": REPO, "tags": sorted(self.tags)})
        if path.startswith(prefix + "manifests/"):
            ref = path[len(prefix + "manifests/"):]
            body = self.tags.get(ref) or next((m for m in self.tags.values() if digest_of(m) == ref), None)
            if body is None:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest_of(body)}
            return httpx.Response(200, headers=headers, stream=Body(b"" if request.method == "HEAD" else body))
        if path.startswith(prefix + "blobs/"):
            blob = self.blobs.get(path[len(prefix + "blobs/"):])
            return httpx.Response(200, stream=Body(blob)) if blob is not None else httpx.Response(404)
        return httpx.Response(404)


class FakeRegistries:
    """The stages' view of the registry clients: one client on the fake registry, no mirror."""

    def __init__(self, registry: FakeRegistry) -> None:
        http = httpx.Client(transport=httpx.MockTransport(registry.handle))
        self._client = RegistryClient(HOST, http=http, retry=RetryPolicy(attempts=1, base_delay=0.01))

    def client(self, host: str) -> RegistryClient:
        assert host == HOST
        return self._client

    def mirror(self, host: str) -> Optional[RegistryClient]:
        return None


class FakePublisher:
    """What the plan reads of a publisher: the digest each tag link points at.
    Anything else it might call is missing, so a write would raise."""

    def __init__(self, root: Path, links: Dict[str, str]) -> None:
        self.root = root
        self.links = links

    def current_tag(self, tag_path: str) -> Optional[str]:
        return self.links.get(tag_path)

    def tag_links(self) -> Dict[str, str]:
        return dict(self.links)

    def foreign_links(self) -> Dict[str, str]:
        return {}


def snapshot(top: Path) -> Dict[str, Tuple[int, int, int, str]]:
    """Every path under `top`: mode, size, mtime and (files) content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            out[str(path.relative_to(top))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return out


def make_watchlist(tmp_path: Path, entry: str) -> Watchlist:
    path = tmp_path / "watchlist.toml"
    path.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[registries."{HOST}"]\ninsecure = true\n'
                    f'[[image]]\nsource = "{HOST}/{REPO}"\n{entry}\ndest = "app"\n')
    return load_watchlist(path)


@pytest.fixture
def site(tmp_path):
    """A watchlist of `v1` and `v2`; v1 published (its manifest and config in the
    blob store), v0 published by an earlier watchlist, v2 new; one image
    unreferenced for three days."""
    registry = FakeRegistry()
    v1 = registry.push("v1", "one")
    v2 = registry.push("v2", "two")
    watchlist = make_watchlist(tmp_path, 'tags = ["v1", "v2"]')
    (tmp_path / "publish").mkdir()
    store = BlobStore(watchlist.state_dir / "blobs")
    store.put_bytes(v1[0], v1[1])
    store.put_bytes(v1[2], v1[3])
    old, gone = "sha256:" + "0" * 64, "sha256:" + "9" * 64
    db = StateDB(watchlist.state_dir / "state.db")
    db.record_success(TagKey("app", "v1", str(AMD64), f"{HOST}/{REPO}", "app:v1"), v1[0], v1[0], now=NOW - 60)
    db.record_success(TagKey("app", "v0", str(AMD64), f"{HOST}/{REPO}", "app:v0"), old, old, now=NOW - 60)
    db.mark_images({gone: "app"}, set(), NOW - 3 * 86400)
    db.close()
    publisher = FakePublisher(tmp_path / "publish", {"app:v1": v1[0], "app:v0": old})
    return registry, watchlist, store, publisher, v1, v2, gone


def run_plan(tmp_path: Path, site, **kw) -> Plan:
    registry, watchlist, store, publisher, *_ = site
    state = StateDB.read_only(watchlist.state_dir / "state.db")  # writes raise
    before = snapshot(tmp_path)
    try:
        out = plan(watchlist, FakeRegistries(registry), store, publisher, state, now=NOW, **kw)
    finally:
        state.close()
    assert snapshot(tmp_path) == before, "the plan wrote to the state directory or the publish root"
    return out


def test_plan_of_a_changed_an_unchanged_and_a_removed_tag_writes_nothing(tmp_path, site):
    registry, _, store, _, v1, v2, gone = site
    out = run_plan(tmp_path, site)
    by_tag = {o.tag: o for o in out.outcomes}
    assert sorted(by_tag) == ["v1", "v2"]
    assert (by_tag["v1"].status, by_tag["v1"].digest, by_tag["v1"].tag_path) == ("unchanged", v1[0], "app:v1")
    assert (by_tag["v2"].status, by_tag["v2"].digest, by_tag["v2"].tag_path) == ("planned", v2[0], "app:v2")
    assert list(by_tag["v2"].resolved.config.diff_ids) == json.loads(v2[3])["rootfs"]["diff_ids"]
    assert out.changes == [by_tag["v2"]]
    assert [(r.dest, r.tag, r.tag_path) for r in out.removals] == [("app", "v0", "app:v0")]
    assert out.gc_candidates == [gone]
    assert out.entry_failures == []
    # What it downloaded is held for the fetch stage, not stored.
    assert out.fetched == {v2[0]: v2[1], v2[2]: v2[3]}
    assert not store.has(v2[0]) and not store.has(v2[2])
    # The unchanged tag cost one HEAD and nothing else; the changed one its manifest and config.
    manifests = f"/v2/{REPO}/manifests/"
    assert sorted(registry.requests) == sorted([
        ("HEAD", manifests + "v1"), ("HEAD", manifests + "v2"), ("GET", manifests + v2[0]),
        ("GET", f"/v2/{REPO}/blobs/{v2[2]}")])
    report = out.report()
    assert report.outcomes is out.outcomes and report.removed == out.removals
    assert "planned   " in report.summary() and "removed   app:v0" in report.summary()


def test_a_failed_listing_removes_and_collects_nothing_of_its_dest(tmp_path, site):
    registry = site[0]
    listing = make_watchlist(tmp_path, 'tag_pattern = "^v"')  # the same dest, its tags now listed …
    registry.gone = True  # … and the repository is gone: the listing fails
    out = run_plan(tmp_path, (registry, listing, *site[2:]))
    assert [e.dest for e, _ in out.entry_failures] == ["app"]
    assert "cannot list tags" in out.entry_failures[0][1]
    assert out.outcomes == [] and out.removals == [] and out.gc_candidates == [] and out.fetched == {}


def test_fetch_stores_what_the_plan_downloaded_and_the_layers_of_its_changes(tmp_path, site):
    registry, _, store, _, v1, v2, _ = site
    os.utime(store.path(v1[0]), (1, 1))
    out = run_plan(tmp_path, site)
    changed = out.changes[0]
    fetch = FetchStage(store, FakeRegistries(registry), cancel=threading.Event())
    with fetch.pinned(out):
        fetched = fetch.fetch(out)
    cycle_report(out, fetched, BuildResult())  # the stage returns what it did: the report applies it
    assert changed.status == "planned" and changed.downloaded == changed.resolved.layers[0].size
    assert all(store.has(d) for d in (v2[0], v2[2], changed.resolved.layers[0].digest))
    # Only the changed image's layer is downloaded: the unchanged one needs none.
    v1_layer = json.loads(v1[1])["layers"][0]["digest"]
    assert not store.has(v1_layer)
    # The unchanged tag's manifest, never read, is marked recently used all the same.
    assert store.path(v1[0]).stat().st_mtime > NOW - 86400


def test_an_unchanged_tag_is_known_from_its_head_and_the_state_alone(tmp_path, site):
    """The tag's HEAD digest is the one recorded and its image is published:
    neither its manifest nor its config is read (they may be long evicted)."""
    registry, _, store, _, v1, _, _ = site
    store.path(v1[0]).unlink()  # reading it would fail
    out = run_plan(tmp_path, site)
    unchanged = next(o for o in out.outcomes if o.tag == "v1")
    assert (unchanged.status, unchanged.resolved, unchanged.digests) == ("unchanged", None, (v1[0], v1[0]))
    assert ("GET", f"/v2/{REPO}/manifests/{v1[0]}") not in registry.requests


@pytest.mark.parametrize("drift", ["tag moved back", "image not published", "state lost"])
def test_an_unchanged_tag_is_resolved_in_full_when_state_and_tree_disagree(tmp_path, site, drift):
    """Only a HEAD digest equal to the recorded one, with that image complete in
    the tree, skips the manifest; anything else reads it and compares with the tree."""
    registry, watchlist, store, publisher, v1, _, _ = site
    db = StateDB(watchlist.state_dir / "state.db")
    key = TagKey("app", "v1", str(AMD64), f"{HOST}/{REPO}", "app:v1")
    if drift == "tag moved back":  # the state saw another digest last (a failed cycle's)
        db.record_success(key, "sha256:" + "1" * 64, "sha256:" + "1" * 64, now=NOW - 30)
    elif drift == "state lost":
        db.forget("app", "v1", str(AMD64))
    db.close()
    if drift == "image not published":
        publisher.links.pop("app:v1")
    out = run_plan(tmp_path, site)
    v1_outcome = next(o for o in out.outcomes if o.tag == "v1")
    assert v1_outcome.resolved is not None and v1_outcome.digest == v1[0]
    assert v1_outcome.status == ("planned" if drift == "image not published" else "unchanged")
