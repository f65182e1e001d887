"""`python -m tests.bench --cvmfs-settings`: what CernVM-FS itself offers to
make a publish cheaper, on the bench image's unpacked tree (umoci's bundle),
each variant into a freshly made repository (an empty store), alternating:

- copy: `cp -a` of the tree into a transaction, then `cvmfs_server publish`
  (what the reconciler's publish costs beyond its own writes);
- copy, -Z none: the same, published without compression (`publish -Z none`,
  what `CVMFS_COMPRESSION_ALGORITHM=none` sets for a repository);
- copy, 4 upload tasks: `CVMFS_NUM_UPLOAD_TASKS=4` in server.conf;
- ingest: the tree as a tar stream into `cvmfs_server ingest -t - -b DIR`
  (no union mount: the tar is read straight into the publish pipeline);
- ingest, -Z none;
- applier + publish: what a cold `reconcile` does after its downloads, the
  bench image's layers applied by our applier into a transaction, published;
- applier + ingest: the same layers applied into a staging tree on disk,
  then streamed into `ingest` (what a cold build through ingest would cost).

Each variant's time is the whole command (transaction to published
revision) and the store's size after it.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List

VARIANTS = ("copy", "copy -Z none", "copy 4 upload tasks", "ingest", "ingest -Z none", "applier + publish",
            "applier + ingest")


def _store_bytes(repo: str) -> int:
    out = subprocess.run(["du", "-sb", f"/srv/cvmfs/{repo}/data"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _set_upload_tasks(repo: str, tasks: int) -> None:
    conf = Path("/etc/cvmfs/repositories.d") / repo / "server.conf"
    lines = [line for line in conf.read_text().splitlines() if not line.startswith("CVMFS_NUM_UPLOAD_TASKS=")]
    conf.write_text("\n".join(lines + [f"CVMFS_NUM_UPLOAD_TASKS={tasks}"]) + "\n")


def _apply(layers: List[object], dest: Path) -> None:
    from reconciler.applier import apply_layer

    dest.mkdir()
    for layer in layers:
        with open(layer.gz, "rb") as fh:  # type: ignore[attr-defined]
            apply_layer(fh, "application/vnd.oci.image.layer.v1.tar+gzip", dest,
                        expected_diff_id=layer.diff_id)  # type: ignore[attr-defined]


def _ingest(tree: Path, repo: str, *options: str) -> None:
    tar = subprocess.Popen(["tar", "--xattrs", "-C", str(tree), "-cf", "-", "."], stdout=subprocess.PIPE)
    subprocess.run(["cvmfs_server", "ingest", *options, "-t", "-", "-b", "app", repo], stdin=tar.stdout, check=True,
                   capture_output=True, cwd="/")
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError("tar failed")


def run_variant(variant: str, rootfs: Path, repo: str, layers: List[object], staging: Path) -> float:
    """One variant into `repo` (made fresh by the caller); wall seconds."""
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, cwd="/")  # noqa: E731
    if variant == "copy 4 upload tasks":
        _set_upload_tasks(repo, 4)
    subprocess.run(["rm", "-rf", str(staging)], check=True)
    start = time.perf_counter()
    if variant == "applier + publish":
        run("cvmfs_server", "transaction", repo)
        _apply(layers, Path(f"/cvmfs/{repo}/app"))
        run("cvmfs_server", "publish", repo)
    elif variant == "applier + ingest":
        _apply(layers, staging)
        _ingest(staging, repo)
    elif variant.startswith("copy"):
        run("cvmfs_server", "transaction", repo)
        run("cp", "-a", str(rootfs), f"/cvmfs/{repo}/app")
        run("cvmfs_server", "publish", *(["-Z", "none"] if variant.endswith("-Z none") else []), repo)
    else:
        _ingest(rootfs, repo, *(["-Z", "none"] if variant.endswith("-Z none") else []))
    elapsed = time.perf_counter() - start
    subprocess.run(["rm", "-rf", str(staging)], check=True)
    return elapsed


def bench_settings(rootfs: Path, repo: str, rounds: int, fresh_repository: Callable[[str], None],
                   layers: List[object], staging: Path) -> Dict[str, object]:
    """Every variant `rounds` times, alternating; medians and ratios to `copy`."""
    times: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    store: Dict[str, int] = {}
    for _ in range(rounds):
        for variant in VARIANTS:
            fresh_repository(repo)
            subprocess.run(["sync"], check=True)
            times[variant].append(run_variant(variant, rootfs, repo, layers, staging))
            store[variant] = _store_bytes(repo)
    fresh_repository(repo)
    base = statistics.median(times["copy"])
    return {"seconds": times, "store_bytes": store,
            "median_s": {v: statistics.median(t) for v, t in times.items()},
            "ratio_to_copy": {v: statistics.median(t) / base for v, t in times.items()}}


def settings_summary(r: Dict[str, object]) -> str:
    med, ratio, store = r["median_s"], r["ratio_to_copy"], r["store_bytes"]
    return "bench: publish of the bench tree: " + "; ".join(
        f"{v} {med[v]:.2f}s = {ratio[v]:.2f}x, store {store[v] / 1e6:.0f} MB" for v in VARIANTS)  # type: ignore[index]
