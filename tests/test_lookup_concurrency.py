"""The default per-registry limits, end to end through `Reconciler`: more tag
lookups (manifest HEADs and GETs) in flight than blob downloads, so that a
thousand tags far from the registry cost round trips in parallel; and still
one HEAD per tag and nothing else when nothing changed.

The registry is a small one served over loopback HTTP (a threaded server, so
concurrency is real). Each request of a kind waits until as many of its kind
are in flight as the default allows, or a short deadline passes: the highest
count seen is what the client let through at once."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Dict, Tuple

from fixtures.build import build_tar
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.registry.manifest import OCI_MANIFEST
from reconciler.watchlist import REGISTRY, load_watchlist
from tests.loopback_http import LoopbackServer

REPO = "lib/app"
TAGS = [f"t{i:02d}" for i in range(32)]
HOLD_S = 2.0  # the most a request waits for others of its kind


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class GatheringRegistry:
    """One repository of distinct three-layer images, one per tag. A HEAD waits
    until `heads_wanted` HEADs are in flight, a blob GET until `blobs_wanted`
    are (or HOLD_S passes); the highest in-flight count of each is kept."""

    def __init__(self, heads_wanted: int, blobs_wanted: int) -> None:
        self.manifests: Dict[str, bytes] = {}
        self.blobs: Dict[str, bytes] = {}
        for tag in TAGS:
            # Three layers each: the images fetched at once have more layers than the download limit.
            layers = [build_tar([{"type": "file", "path": f"id{n}", "content": tag}]) for n in range(3)]
            config = json.dumps({"os": "linux", "architecture": "amd64",
                                 "rootfs": {"type": "layers", "diff_ids": [digest_of(t) for t in layers]}}).encode()
            self.manifests[tag] = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(t),
                            "size": len(t)} for t in layers]}).encode()
            self.blobs[digest_of(config)] = config
            self.blobs.update({digest_of(t): t for t in layers})
        self.layers = {d for d, b in self.blobs.items() if not b.startswith(b"{")}
        self.wanted = {"HEAD": heads_wanted, "layer": blobs_wanted}
        self.in_flight: Counter = Counter()
        self.most: Counter = Counter()
        self.requests: Counter = Counter()
        self._cond = threading.Condition()
        self.server = LoopbackServer(self.handle)

    def _gather(self, kind: str) -> None:
        """Wait, in flight, until `wanted[kind]` requests of `kind` are, or HOLD_S passes."""
        with self._cond:
            self.in_flight[kind] += 1
            self.most[kind] = max(self.most[kind], self.in_flight[kind])
            self._cond.notify_all()
            deadline = time.monotonic() + HOLD_S
            while self.most[kind] < self.wanted[kind] and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            self.in_flight[kind] -= 1

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path
        prefix = f"/v2/{REPO}/"
        status, headers, body = 404, {}, b""
        if path.startswith(prefix + "manifests/"):
            ref = path[len(prefix + "manifests/"):]
            manifest = self.manifests.get(ref) or next((m for m in self.manifests.values() if digest_of(m) == ref),
                                                       None)
            self.requests[f"{method} manifest"] += 1
            if method == "HEAD" and self.requests["HEAD manifest"] > 1:  # the first goes alone (a token, maybe)
                self._gather("HEAD")
            if manifest is not None:
                status, body = 200, manifest
                headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest_of(manifest)}
        elif path.startswith(prefix + "blobs/"):
            digest = path[len(prefix + "blobs/"):]
            self.requests[f"{method} blob"] += 1
            if digest in self.layers:
                self._gather("layer")
            if digest in self.blobs:
                status, body = 200, self.blobs[digest]
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(body)


def run(watchlist_path: Path) -> Tuple[object, float]:
    reconciler = Reconciler(load_watchlist(watchlist_path), retry=RetryPolicy(attempts=1, base_delay=0.01))
    start = time.monotonic()
    try:
        return reconciler.run_once(), time.monotonic() - start
    finally:
        reconciler.close()


def test_default_limits_let_more_lookups_than_downloads_through_and_a_warm_cycle_only_heads(tmp_path):
    lookups, downloads = REGISTRY.default_whole("max_lookups"), REGISTRY.default_whole("max_concurrency")
    assert lookups > downloads  # what this test is about: HEADs are cheap, downloads are not
    registry = GatheringRegistry(heads_wanted=lookups, blobs_wanted=downloads)
    try:
        path = tmp_path / "watchlist.toml"
        path.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                        f'[registries."{registry.server.host}"]\ninsecure = true\n'
                        f'[[image]]\nsource = "{registry.server.host}/{REPO}"\ntags = {json.dumps(TAGS)}\n'
                        'dest = "app"\n')
        report, _ = run(path)
        assert not report.failed and len(report.outcomes) == len(TAGS)
        assert (tmp_path / "publish" / "app:t07" / "id2").read_text() == "t07"
        # As many HEADs at once as the default allows; downloads never above theirs.
        assert registry.most["HEAD"] == lookups
        assert registry.most["layer"] == downloads
        registry.requests.clear()
        warm, _ = run(path)
        assert {o.status for o in warm.outcomes} == {"unchanged"}
        assert dict(registry.requests) == {"HEAD manifest": len(TAGS)}  # one HEAD per tag, nothing else
    finally:
        registry.server.close()
