"""`python -m tests.bench --takeover`: taking over a repository of a
cvmfs-singularity-sync list of 500 entries (#20), on the local backend.

The old tree is made by that tool's rules (tests/old_layouts.py): 500 tags
`takeover/rNNN:latest`, each an absolute link to its own old image directory.
The registry serves the `basic` fixture under the 500 names, behind
tests/faultproxy.py adding a delay to every request (50 ms by default), as the
--scale bench does. Measured: the `--dry-run` plan, the first cycle (every tag
replaced), then cycles until converged (with `gc_grace = "0s"` the old image
directories go `gc_max_per_cycle`, 50, a cycle): time, requests by kind, blob
bytes downloaded, and the cycles that changed the tree (a CernVM-FS revision
each: one transaction a cycle). With `--cvmfs`, the same in the real
CernVM-FS repository bench.reconciler.org, its revisions counted.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from fixtures.build import build_all
from fixtures.push import FixturePusher
from reconciler.publish import LocalPublisher
from tests.bench.scale import _requests
from tests.faultproxy import FaultProxy
from tests.old_layouts import OldTag, make_osg
from tests.registry_server import start_registry

ENTRIES = 500


def _push(host: str, entries: int) -> None:
    image = build_all()["basic"]
    pusher = FixturePusher(host)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(entries):
            repository = f"takeover/r{r:03d}"
            for blob in image.blobs:
                pusher.push_blob(repository, blob, Path(tmp))
            pusher.push_manifest(repository, image.top, "latest")


def _fake(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


def _old_tree(root: Path, mount: str, entries: int, cvmfs_repo: Optional[str]) -> None:
    tags = [OldTag(f"takeover/r{r:03d}:latest", (_fake(f"layer{r}"),), _fake(f"c{r}")) for r in range(entries)]
    if cvmfs_repo is None:
        root.mkdir(parents=True)
        make_osg(root, mount, tags)
        return
    from tests import cvmfs_real

    cvmfs_real.fresh_repository(cvmfs_repo)
    subprocess.run(["cvmfs_server", "transaction", cvmfs_repo], check=True, capture_output=True)
    make_osg(root, mount, tags)
    subprocess.run(["cvmfs_server", "publish", cvmfs_repo], check=True, capture_output=True, cwd="/")


def bench_takeover(work: Path, reconcile: Path, rtt: float, entries: int = ENTRIES,
                   cvmfs_repo: Optional[str] = None) -> Dict[str, object]:
    """The takeover of `entries` tags: plan, first cycle, cycles to convergence
    (into the CernVM-FS repository `cvmfs_repo` if given, else a local root)."""
    registry = start_registry(work / "takeover-registry")
    proxy = FaultProxy(registry.url)
    try:
        _push(registry.host, entries)
        proxy.add(path=".*", method="ANY", times=10**9, delay=rtt)
        run = work / "takeover-run"
        run.mkdir(parents=True)
        root = Path("/cvmfs") / cvmfs_repo if cvmfs_repo else run / "publish"
        _old_tree(root, str(root), entries, cvmfs_repo)
        revision_before = _revision(cvmfs_repo)
        watchlist = run / "watchlist.toml"
        publish = f'backend = "cvmfs"\nrepository = "{cvmfs_repo}"\nroot = "{root}"\n' if cvmfs_repo else \
            'root = "publish"\n'
        text = f'[publish]\n{publish}gc_grace = "0s"\n[state]\ndir = "state"\n' \
               f'[registries."{proxy.host}"]\ninsecure = true\nmax_concurrency = 16\n'
        text += "".join(f'[[image]]\nsource = "{proxy.host}/takeover/r{r:03d}"\ntags = ["latest"]\n'
                        f'dest = "takeover/r{r:03d}"\n' for r in range(entries))
        watchlist.write_text(text)
        cmd: List[str] = [str(reconcile), "--watchlist", str(watchlist)]
        start = time.perf_counter()
        plan = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, check=True, cwd="/").stdout
        plan_s = time.perf_counter() - start
        line = next(x for x in plan.splitlines() if x.startswith("takeover:"))
        cost = re.search(r"(\d+) images to build, (\d+) bytes", line)
        assert cost is not None
        cycles = []
        old_left = len(LocalPublisher(root).foreign_images())
        while True:
            mark = len(proxy.requests)
            start = time.perf_counter()
            done = subprocess.run([*cmd, "--once"], capture_output=True, text=True, cwd="/")
            if done.returncode != 0:
                raise RuntimeError(f"reconcile --once failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
            left = len(LocalPublisher(root).foreign_images())
            cycles.append({"seconds": round(time.perf_counter() - start, 2), "requests": _requests(proxy, mark),
                           "old_images_removed": old_left - left})
            old_left = left
            if left == 0 or len(cycles) > 30:
                break
        blobs = sum(p.stat().st_size for p in (run / "state" / "blobs").rglob("*") if p.is_file())
        revisions = _revision(cvmfs_repo) - revision_before
    finally:
        proxy.close()
        registry.stop()
    return {"entries": entries, "backend": "cvmfs" if cvmfs_repo else "local", "revisions": revisions,
            "rtt_ms": rtt * 1000, "plan_s": round(plan_s, 2), "plan": line,
            "images_to_build": int(cost.group(1)), "bytes_planned": int(cost.group(2)), "blob_store_bytes": blobs,
            "cycles": cycles, "cycles_to_converge": len(cycles), "total_s": round(sum(c["seconds"] for c in cycles), 1)}


def _revision(repo: Optional[str]) -> int:
    """The repository's published revision (0 for a local root)."""
    if repo is None:
        return 0
    from tests.revisions import revision

    return revision(repo)


def takeover_summary(r: Dict[str, object]) -> str:
    """One line for the takeover figures."""
    cycles = r["cycles"]
    assert isinstance(cycles, list)
    first = cycles[0]
    return (f"bench: takeover of {r['entries']} tags ({r['backend']}, {r['revisions']} revisions) "
            f"at {r['rtt_ms']:.0f} ms: plan {r['plan_s']}s "
            f"({r['images_to_build']} images, {r['bytes_planned']} bytes); first cycle {first['seconds']}s, "
            f"requests {first['requests']}; converged (old images collected) after {r['cycles_to_converge']} "
            f"cycles = revisions, {r['total_s']}s in all; blob store {r['blob_store_bytes']} bytes")
