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
  then streamed into `ingest` (what a cold build through ingest would cost);
- graft: the store's objects written by us (each file up to the minimum
  chunk size compressed with zlib at CernVM-FS's level 6 and hashed in two
  threads, named by the SHA-1 of the compressed bytes as the publish names
  them, so the objects are the publish's own), the tree in the transaction
  as empty files beside `.cvmfsgraft-` markers (larger files copied whole),
  then the publish, which reads no grafted file: what a cold build that
  compressed while it applied could save at most, on a local upstream.

Each variant's time is the whole command (transaction to published
revision) and the store's size after it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import statistics
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from tests.bench.graft import MARKER_PREFIX

VARIANTS = ("copy", "copy -Z none", "copy 4 upload tasks", "ingest", "ingest -Z none", "applier + publish",
            "applier + ingest", "graft")
# CernVM-FS's defaults: files above the minimum chunk size are chunked by the publish, never grafted here.
_MIN_CHUNK_SIZE = 4 * 1024 * 1024
_ZLIB_LEVEL = 6


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


def _store_object(path: Path, store: Path) -> Tuple[int, str]:
    """`path` compressed into the local store as the publish would write it; (size, content hash)."""
    data = path.read_bytes()
    packed = zlib.compress(data, _ZLIB_LEVEL)
    digest = hashlib.sha1(packed).hexdigest()
    final = store / digest[:2] / digest[2:]
    if not final.exists():
        temporary = store / "txn" / f"graft.{threading.get_ident()}"
        temporary.write_bytes(packed)
        os.chmod(temporary, 0o644)
        os.rename(temporary, final)
    return len(data), digest


def _graft(tree: Path, repo: str) -> int:
    """`tree` into the open transaction of `repo` as grafts (see the module's
    docstring); how many files were grafted."""
    dest = Path(f"/cvmfs/{repo}/app")
    # The structure with every regular file empty, attributes kept.
    subprocess.run(["cp", "-a", "--attributes-only", str(tree), str(dest)], check=True, capture_output=True)
    store = Path(f"/srv/cvmfs/{repo}/data")
    jobs = []
    with ThreadPoolExecutor(2) as pool:
        for top, _, names in os.walk(tree):
            for name in names:
                source = Path(top) / name
                st = source.lstat()
                target = dest / source.relative_to(tree)
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    continue
                if st.st_size > _MIN_CHUNK_SIZE:
                    subprocess.run(["cp", "-a", str(source), str(target)], check=True, capture_output=True)
                else:
                    jobs.append((target, pool.submit(_store_object, source, store)))
        for target, job in jobs:
            size, digest = job.result()
            marker = target.with_name(MARKER_PREFIX + target.name)
            marker.write_text(f"size={size}\nchecksum={digest}\ncompression=zlib\n")
    return len(jobs)


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
    elif variant == "graft":
        run("cvmfs_server", "transaction", repo)
        _graft(rootfs, repo)
        run("cvmfs_server", "publish", repo)
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
                   layers: List[object], staging: Path, variants: Sequence[str] = VARIANTS) -> Dict[str, object]:
    """Each of `variants` (`copy` always) `rounds` times, alternating; medians and ratios to `copy`."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"bench: no such variant {', '.join(unknown)}; the variants: {', '.join(VARIANTS)}")
    chosen = ["copy"] + [v for v in variants if v != "copy"]
    times: Dict[str, List[float]] = {v: [] for v in chosen}
    store: Dict[str, int] = {}
    for _ in range(rounds):
        for variant in chosen:
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
        f"{v} {med[v]:.2f}s = {ratio[v]:.2f}x, store {store[v] / 1e6:.0f} MB" for v in med)  # type: ignore[index,attr-defined]
