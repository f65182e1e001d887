"""`python -m tests.bench --scale`: a thousand watched tags far from the registry.

200 repositories × 5 tags of one small image on the loopback docker-registry
(`distinct`: each tag its own small image, so a cold cycle downloads and
builds 1,000), behind tests/faultproxy.py adding a delay to every request (50 ms by default,
like a site far from Docker Hub). Times a cold cycle (all new), a warm one
(nothing changed) and a warm one straight to the registry (no proxy, no
delay), and counts the requests of the warm cycle: exactly one HEAD per tag
and platform, no GET. The registry settings are the defaults (`keys` adds
some, e.g. "max_lookups = 4").

Then the same repositories behind token auth (the registry's token mode, its
token server granting anonymous pulls as auth.docker.io does for public
repositories, several scopes in one token): the token requests of a cold
and of a warm `--once` (each a new process, so each starts without a token).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

from fixtures.build import BuiltImage, build_all, build_image
from fixtures.push import FixturePusher
from tests.faultproxy import FaultProxy
from tests.registry_server import start_registry

REPOSITORIES = 200
TAGS = 5


def _distinct(repository: str, tag: str) -> BuiltImage:
    """A small image of its own: one layer with a file naming it."""
    return build_image({"name": "distinct", "layers": [{"entries": [
        {"type": "dir", "path": "etc"}, {"type": "file", "path": "etc/image", "content": f"{repository}:{tag}\n"}]}]})


def _push(host: str, repositories: int, distinct: bool) -> None:
    """The `basic` fixture (or, `distinct`, an image of each tag's own) under
    `repositories` repositories, TAGS tags each."""
    image = build_all()["basic"]
    pusher = FixturePusher(host)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repositories):
            repository = f"scale/r{r:03d}"
            for t in range(TAGS):
                if distinct or t == 0:
                    image = _distinct(repository, f"t{t}") if distinct else image
                    for blob in image.blobs:
                        pusher.push_blob(repository, blob, Path(tmp))
                pusher.push_manifest(repository, image.top, f"t{t}")


def _token_requests(registry, cmd: List[str]) -> Tuple[float, int]:
    """Run `cmd`; its wall time and the token requests it made."""
    before = len(registry.token_server.requests)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start, len(registry.token_server.requests) - before


def _watchlist(path: Path, host: str, repositories: int, keys: str = "") -> None:
    tags = ", ".join(f'"t{t}"' for t in range(TAGS))
    text = f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\n' \
           + "".join(f"{key.strip()}\n" for key in keys.split(",") if key.strip())
    text += "".join(f'[[image]]\nsource = "{host}/scale/r{r:03d}"\ntags = [{tags}]\ndest = "r{r:03d}"\n'
                    for r in range(repositories))
    path.write_text(text)


def _requests(proxy: FaultProxy, since: int) -> Dict[str, int]:
    kinds: Counter = Counter()
    for record in proxy.requests[since:]:
        what = "manifest" if "/manifests/" in record["path"] else "blob" if "/blobs/" in record["path"] else "other"
        kinds[f"{record['method']} {what}"] += 1
    return dict(kinds)


def bench_scale(work: Path, reconcile: Path, rtt: float, timed, repositories: int = REPOSITORIES,
                distinct: bool = False, keys: str = "") -> Dict[str, object]:
    """Cold, warm and warm-without-latency cycles of `repositories` × TAGS tags
    (`keys`: registry settings, comma-separated, beside the defaults)."""
    registry = start_registry(work / "scale-registry")
    proxy = FaultProxy(registry.url)
    try:
        _push(registry.host, repositories, distinct)
        proxy.add(path=".*", method="ANY", times=10**9, delay=rtt)
        run = work / "scale-run"
        run.mkdir(parents=True, exist_ok=True)
        watchlist = run / "watchlist.toml"
        _watchlist(watchlist, proxy.host, repositories, keys)
        cmd: List[str] = [str(reconcile), "--once", "--watchlist", str(watchlist)]
        cold, cold_rss = timed(cmd)
        mark = len(proxy.requests)
        warm, warm_rss = timed(cmd)
        warm_requests = _requests(proxy, mark)
        _watchlist(watchlist, registry.host, repositories, keys)  # straight to the registry: no proxy, no delay
        warm_no_rtt, _ = timed(cmd)
        tokens = _token_cycles(work, registry.storage, reconcile, repositories, keys)
    finally:
        proxy.close()
        registry.stop()
    return {"repositories": repositories, "tags": repositories * TAGS, "distinct_images": distinct,
            "registry_keys": keys or "defaults", "rtt_ms": rtt * 1000, "cold_s": cold,
            "warm_s": warm, "warm_no_rtt_s": warm_no_rtt, "warm_requests": warm_requests,
            "peak_rss_mib": round(max(cold_rss, warm_rss) / 1024, 1), **tokens}


def _token_cycles(work: Path, storage: Path, reconcile: Path, repositories: int, keys: str) -> Dict[str, object]:
    """Cold and warm `--once` against the same storage behind token auth."""
    registry = start_registry(work / "scale-token-registry", mode="token", storage=storage, acl={"": ["scale/*"]})
    try:
        run = work / "scale-token-run"
        run.mkdir(parents=True, exist_ok=True)
        watchlist = run / "watchlist.toml"
        _watchlist(watchlist, registry.host, repositories, keys)
        cmd = [str(reconcile), "--once", "--watchlist", str(watchlist)]
        cold, cold_tokens = _token_requests(registry, cmd)
        warm, warm_tokens = _token_requests(registry, cmd)
    finally:
        registry.stop()
    return {"token_cold_s": cold, "token_warm_s": warm, "token_requests_cold": cold_tokens,
            "token_requests_warm": warm_tokens}


def scale_summary(r: Dict[str, object]) -> str:
    """One line for the scale figures."""
    images = f"{r['tags']} distinct images" if r.get("distinct_images") else "one image"
    return (f"bench: {r['tags']} tags ({images}, registry settings: {r.get('registry_keys', 'defaults')}) "
            f"at {r['rtt_ms']:.0f} ms: cold {r['cold_s']:.1f}s, warm {r['warm_s']:.1f}s, "
            f"warm at 0 ms {r['warm_no_rtt_s']:.1f}s; warm requests {r['warm_requests']}; "
            f"peak RSS {r['peak_rss_mib']} MiB; behind token auth: {r['token_requests_cold']} token requests "
            f"cold ({r['token_cold_s']:.1f}s), {r['token_requests_warm']} warm ({r['token_warm_s']:.1f}s) "
            f"for {r['repositories']} repositories")
