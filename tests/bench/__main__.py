"""`python -m tests.bench`: reconciler against skopeo + umoci, side by side, on
one real image served by the loopback docker-registry. Not a test: it reports
ratios and writes them to `.bench/results.json`.

Measures, alternating in the same run:
- apply: our applier on the image's three layers vs `umoci unpack` of the same layers;
- cold: `reconcile --once` (fresh state and root) vs `skopeo copy` + `umoci unpack`,
  and vs the same followed by `sync` (ours flushes its root's filesystem before
  a tag moves; the pair alone leaves its tree in the page cache);
- warm: `reconcile --once` again with nothing changed (requests and blob bytes
  served, from the registry's log);
- incremental: v2 (new top layer only) added after v1;
- peak RSS of the reconciler process.

`--cvmfs` adds the same comparison into a real CernVM-FS repository (root,
CernVM-FS from ../shared/cvmfs): cold `reconcile --once` against skopeo +
umoci + `cp -a` into a transaction + publish, the v2 update, and the catalog
entries each adds.

`--huge GB` measures the headline instead: a generated image of about GB
gigabytes from webhook to published revision (tests/bench/huge.py).

`--big-layer N`, `--dirs-layer N` and `--dotdot-layer N` instead measure the applier alone on one
generated layer of N entries (see tests/bench/biglayer.py) against
`umoci unpack`: time and peak RSS of both, the bound the applier must keep.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from fixtures.push import FixturePusher
from tests.bench.biglayer import build_layer, describe, layer_summary, single_layer_image, write_layout
from tests.bench.images import build_images
from tests.registry_server import start_registry

REPO = Path(__file__).resolve().parents[2]
RECONCILE = Path(sys.executable).with_name("reconcile")
GNU_TIME = "/usr/bin/time"


def timed(cmd: List[str], *, settle: bool = True, **kw) -> Tuple[float, int]:
    """Run a command; wall seconds and its peak RSS in KiB.

    Dirty pages of the previous run are flushed first (unless not `settle`:
    the second step of one pipeline), so one run's writeback does not land in
    the next one's time. The RSS comes from GNU time: a forked child's own
    ru_maxrss would include the pre-exec copy of this process.
    """
    if settle:
        os.sync()
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        done = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss.name, *cmd], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, **kw)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
        return elapsed, int(rss.read().strip().splitlines()[-1])


class RegistryCounter:
    """Requests and bytes the registry served between two points (from its JSON log)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.log_path.stat().st_size

    def since(self) -> Dict[str, int]:
        # The registry logs a request when it completes; wait until the log stops growing.
        size, deadline = -1, time.monotonic() + 5
        while time.monotonic() < deadline:
            now = self.log_path.stat().st_size
            if now == size:
                break
            size = now
            time.sleep(0.2)
        out = {"requests": 0, "manifest_gets": 0, "manifest_heads": 0, "blob_gets": 0, "blob_bytes": 0}
        with self.log_path.open("rb") as fh:
            fh.seek(self.offset)
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                method, uri = entry.get("http.request.method"), entry.get("http.request.uri", "")
                if not method or "http.response.status" not in entry:
                    continue
                out["requests"] += 1
                if "/manifests/" in uri:
                    out["manifest_gets" if method == "GET" else "manifest_heads"] += 1
                elif "/blobs/" in uri and method == "GET":
                    out["blob_gets"] += 1
                    out["blob_bytes"] += int(entry.get("http.response.written", 0))
        return out


def push(host: str, images) -> None:
    pusher = FixturePusher(host)
    for image in images.values():
        container = pusher._container(image.repository, image.tags[0])
        for layer in image.layer_files:
            pusher.registry.upload_blob(str(layer.gz), container,
                                        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                         "digest": layer.digest, "size": layer.size})
        with tempfile.TemporaryDirectory() as tmp:
            for blob in image.blobs:
                pusher.push_blob(image.repository, blob, Path(tmp))
        pusher.push_manifest(image.repository, image.top, image.tags[0])


def write_watchlist(path: Path, host: str, tags: List[str]) -> None:
    path.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                    f'[registries."{host}"]\ninsecure = true\n'
                    f'[[image]]\nsource = "{host}/bench/app"\ntags = {json.dumps(tags)}\ndest = "app"\n')


def fresh(path: Path) -> Path:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs per comparison (default 3)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench")
    parser.add_argument("--only", choices=("apply", "e2e", "cvmfs"), help="run one part only")
    parser.add_argument("--cvmfs", action="store_true", help="also into a real CernVM-FS repository (as root)")
    parser.add_argument("--cvmfs-lease", action="store_true", help="only v1 -> v2 through a gateway lease: cold, "
                        "copy of v1 in the lease, ingest, graft, and the stratum 0 update (see tests/bench/lease.py)")
    parser.add_argument("--cvmfs-settings", action="store_true", help="only what CernVM-FS offers for a cheaper "
                        "publish of the bench image's tree: ingest of a tar stream, no compression, more upload "
                        "tasks (see tests/bench/publish_settings.py)")
    parser.add_argument("--settings-variants", type=lambda v: [x.strip() for x in v.split(",")], default=None,
                        metavar="VARIANT,...", help="--cvmfs-settings: these variants only (and copy), e.g. graft")
    parser.add_argument("--cvmfs-lease-on-s0", action="store_true", help="--cvmfs-lease's candidates in whole "
                        "transactions of the bench's own stratum 0 (no gateway, no test session lock)")
    parser.add_argument("--scratch", type=Path, help="where both tools write their trees (default: the workdir); "
                        "a tmpfs such as /dev/shm/bench gives steadier numbers on disks mounted with `discard`")
    parser.add_argument("--scale", action="store_true", help="only 1,000 watched tags behind a proxy adding "
                        "latency: cold, warm and warm without latency (see tests/bench/scale.py)")
    parser.add_argument("--takeover", type=int, metavar="N", help="only the takeover of a cvmfs-singularity-sync "
                        "repository of N tags behind the --rtt proxy (see tests/bench/takeover.py)")
    parser.add_argument("--huge", type=float, metavar="GB", help="only the headline: a generated image of about "
                        "GB gigabytes from webhook to published revision in the real CernVM-FS, against skopeo + "
                        "transaction + umoci unpack + publish; peak memory and disk of both (tests/bench/huge.py)")
    parser.add_argument("--rtt", type=float, default=0.05, help="the latency --scale adds per request (seconds)")
    parser.add_argument("--repositories", type=int, default=200, help="--scale: watched repositories, 5 tags each")
    parser.add_argument("--distinct", action="store_true", help="--scale: each tag its own small image (a cold "
                        "cycle downloads and builds them all)")
    parser.add_argument("--registry-keys", default="", metavar="KEY = VALUE,...",
                        help='--scale: registry settings beside the defaults, e.g. "max_lookups = 4"')
    parser.add_argument("--big-layer", type=int, metavar="N",
                        help="only the applier vs umoci on one layer of N small files (peak RSS and time)")
    parser.add_argument("--dirs-layer", type=int, metavar="N",
                        help="only the applier vs umoci on one layer of N directories")
    parser.add_argument("--dotdot-layer", type=int, metavar="N",
                        help="only the applier vs umoci on one layer of N files written through long `..` chains")
    parser.add_argument("--resolution", metavar="SHAPE,...",
                        help="only the applier vs umoci on symlink-resolution shapes (tests/bench/resolution.py: "
                        "bomb, deep-dotdot, link-chains, absolute-chain, wide, churn; `all` for every one)")
    parser.add_argument("--undo-replay", type=int, metavar="N",
                        help="only the peak memory of replaying the undo log of an N-entry top layer")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="--undo-replay: also replay with the reconciler package of another checkout")
    args = parser.parse_args()
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (bash .ci/setup installs it)")
    if not os.path.exists(GNU_TIME):
        subprocess.run(["apt-get", "install", "-y", "-qq", "time"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    work = args.workdir
    scratch = args.scratch or work
    if args.scale:
        from tests.bench.scale import bench_scale, scale_summary

        results = bench_scale(fresh(work / "scale"), RECONCILE, args.rtt, timed, args.repositories,
                              args.distinct, args.registry_keys)
        out = work / "results-scale.json"
        out.write_text(json.dumps(results, indent=2))
        print(scale_summary(results))
        return 0
    if args.huge:
        from tests.bench.huge import bench_huge, huge_summary

        results = bench_huge(work, RECONCILE, args.huge, args.pairs, catalog_entries, BENCH_REPO)
        out = work / f"results-huge-{args.huge:g}.json"
        out.write_text(json.dumps(results, indent=2))
        print(huge_summary(results))
        return 0
    if args.takeover:
        from tests.bench.takeover import bench_takeover, takeover_summary

        results = bench_takeover(fresh(work / "takeover"), RECONCILE, args.rtt, args.takeover,
                                 BENCH_REPO if args.cvmfs else None)
        out = work / "results-takeover.json"
        out.write_text(json.dumps(results, indent=2))
        print(takeover_summary(results))
        return 0
    if args.resolution:
        from tests.bench.resolution import SHAPES

        names = list(SHAPES) if args.resolution == "all" else args.resolution.split(",")
        all_results = {}
        for shape in names:
            all_results[shape] = bench_big_layer(work, scratch, shape, 0, args.pairs)
            print(big_layer_summary(all_results[shape]), flush=True)
        out = work / "results-resolution.json"
        out.write_text(json.dumps(all_results, indent=2))
        print(f"bench: details in {out}", file=sys.stderr)
        return 0
    if args.undo_replay:
        from tests.bench.undo_replay import bench_undo_replay

        print(bench_undo_replay(fresh(scratch / "undo-replay"), args.undo_replay, timed, args.baseline))
        return 0
    shapes = {"files": args.big_layer, "dirs": args.dirs_layer, "dotdot": args.dotdot_layer}
    if any(shapes.values()):
        shape, n = next((shape, n) for shape, n in shapes.items() if n)
        results = bench_big_layer(work, scratch, shape, n, args.pairs)
        out = work / f"results-{shape}-{n}.json"
        out.write_text(json.dumps(results, indent=2))
        print(big_layer_summary(results))
        print(f"bench: details in {out}", file=sys.stderr)
        return 0
    images = build_images(work / "cache")
    v1 = images["v1"]
    results: Dict[str, object] = {"image": {
        "layers_gzip_bytes": sum(f.size for f in v1.layer_files),
        "layers_tar_bytes": sum(f.tar.stat().st_size for f in v1.layer_files)}}
    registry = start_registry(fresh(work / "registry"))
    try:
        push(registry.host, images)
        counter = RegistryCounter(registry.log_path)
        oci = scratch / "oci"

        def skopeo_umoci(tag: str) -> float:
            fresh(oci)
            t1, _ = timed(["skopeo", "copy", "-q", "--src-tls-verify=false",
                           f"docker://{registry.host}/bench/app:{tag}", f"oci:{oci / 'layout'}:{tag}"])
            # One pipeline: skopeo's writes are not flushed for free before umoci starts.
            t2, _ = timed(["umoci", "unpack", "--image", f"{oci / 'layout'}:{tag}", str(oci / "bundle")],
                          settle=False)
            return t1 + t2

        if args.only in (None, "apply"):
            results["apply"] = bench_apply(scratch, v1, args.pairs, skopeo_umoci)
        if args.only in (None, "e2e"):
            results.update(bench_e2e(scratch, registry.host, args.pairs, skopeo_umoci, counter))
        if args.cvmfs_lease or args.cvmfs_lease_on_s0:
            from tests.bench.lease import bench_lease, lease_summary

            lease = bench_lease(scratch, registry.host, args.pairs, RECONCILE, timed, catalog_entries, BENCH_REPO,
                                on_gateway=args.cvmfs_lease)
            name = "results-lease.json" if args.cvmfs_lease else "results-lease-s0.json"
            (work / name).write_text(json.dumps(lease, indent=2))
            print(lease_summary(lease))
            return 0
        if args.cvmfs_settings:
            from tests.bench.huge import fresh_repository
            from tests.bench.publish_settings import VARIANTS, bench_settings, settings_summary

            skopeo_umoci("v1")
            settings = bench_settings(oci / "bundle" / "rootfs", BENCH_REPO, args.pairs, fresh_repository,
                                      v1.layer_files, scratch / "staging",  # type: ignore[attr-defined]
                                      args.settings_variants or VARIANTS)
            (work / "results-settings.json").write_text(json.dumps(settings, indent=2))
            print(settings_summary(settings))
            return 0
        if args.cvmfs or args.only == "cvmfs":
            results["cvmfs"] = bench_cvmfs(scratch, registry.host, args.pairs, skopeo_umoci)
        results["scratch"] = str(scratch)
    finally:
        registry.stop()
    out = work / "results.json"
    out.write_text(json.dumps(results, indent=2))
    print(summary(results))
    print(f"bench: details in {out}", file=sys.stderr)
    return 0


APPLY_ONE = ("import sys\nfrom reconciler.applier import apply_layer\n"
             "with open(sys.argv[2], 'rb') as f:\n"
             "    apply_layer(f, 'application/vnd.oci.image.layer.v1.tar+gzip', sys.argv[1], expected_diff_id=sys.argv[3])\n")


def bench_big_layer(work: Path, scratch: Path, shape: str, n: int, pairs: int) -> Dict[str, object]:
    """Our applier vs `umoci unpack` on one generated layer, alternating; times and peak RSS of both."""
    layer = build_layer(work / "cache", shape, n)
    image = single_layer_image(layer, "bench/big", "big")
    layout = fresh(scratch / "big-oci") / "layout"
    write_layout(image, layout, "big")
    ours, theirs, our_rss, their_rss = [], [], 0, 0
    for _ in range(pairs):
        target = fresh(scratch / "big-ours")
        t, r = timed([sys.executable, "-c", APPLY_ONE, str(target), str(layer.gz), layer.diff_id])
        ours.append(t)
        our_rss = max(our_rss, r)
        subprocess.run(["rm", "-rf", str(target)], check=True)
        bundle = scratch / "big-umoci"
        subprocess.run(["rm", "-rf", str(bundle)], check=True)
        t, r = timed(["umoci", "unpack", "--image", f"{layout}:big", str(bundle)])
        theirs.append(t)
        their_rss = max(their_rss, r)
        subprocess.run(["rm", "-rf", str(bundle)], check=True)
    name = describe(shape, n, 64 if shape == "dotdot" else None) if n else f"{shape} layer ({layer.entries:,} entries)"
    return {"layer": {**layer_summary(layer), "shape": shape, "name": name},
            "ours_s": ours, "umoci_s": theirs, "ours_median_s": statistics.median(ours),
            "umoci_median_s": statistics.median(theirs), "ratio": statistics.median(ours) / statistics.median(theirs),
            "ours_peak_rss_mib": round(our_rss / 1024, 1), "umoci_peak_rss_mib": round(their_rss / 1024, 1)}


def big_layer_summary(results: Dict[str, object]) -> str:
    """One line: the layer, both times and their ratio, both peak RSS figures."""
    return (f"bench: {results['layer']['name']}: apply {results['ours_median_s']:.2f}s vs umoci "
            f"{results['umoci_median_s']:.2f}s = {results['ratio']:.2f}x; peak RSS ours "
            f"{results['ours_peak_rss_mib']} MiB, umoci {results['umoci_peak_rss_mib']} MiB")


def bench_apply(work: Path, image, pairs: int, skopeo_umoci) -> Dict[str, object]:
    """Our applier on the three layers vs `umoci unpack` of the same layers."""
    code = ("import sys\nfrom reconciler.applier import apply_layer\n"
            "root = sys.argv[1]\n"
            "for gz, diff in zip(sys.argv[2::2], sys.argv[3::2]):\n"
            "    with open(gz, 'rb') as f:\n"
            "        apply_layer(f, 'application/vnd.oci.image.layer.v1.tar+gzip', root, expected_diff_id=diff)\n")
    args: List[str] = []
    for layer in image.layer_files:
        args += [str(layer.gz), layer.diff_id]
    skopeo_umoci("v1")  # leaves the OCI layout that umoci unpacks below
    layout = work / "oci" / "layout"
    ours, theirs, rss = [], [], 0
    for _ in range(pairs):
        target = fresh(work / "apply-ours")
        t, r = timed([sys.executable, "-c", code, str(target), *args])
        ours.append(t)
        rss = max(rss, r)
        bundle = work / "apply-umoci"
        subprocess.run(["rm", "-rf", str(bundle)], check=True)
        t, _ = timed(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)])
        theirs.append(t)
    return {"ours_s": ours, "umoci_s": theirs, "ours_median_s": statistics.median(ours),
            "umoci_median_s": statistics.median(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs), "ours_peak_rss_kib": rss}


def bench_e2e(work: Path, host: str, pairs: int, skopeo_umoci, counter: RegistryCounter) -> Dict[str, object]:
    run_dir = work / "run"
    watchlist = run_dir / "watchlist.toml"

    def reconcile() -> Tuple[float, int]:
        return timed([str(RECONCILE), "--once", "--watchlist", str(watchlist)])

    ours, theirs, synced, rss = [], [], [], 0
    for _ in range(pairs):
        fresh(run_dir)
        write_watchlist(watchlist, host, ["v1"])
        t, r = reconcile()
        ours.append(t)
        rss = max(rss, r)
        theirs.append(skopeo_umoci("v1"))
        start = time.perf_counter()
        os.sync()  # what it takes for the pair's tree to be on disk, as ours is when a tag moves
        synced.append(theirs[-1] + time.perf_counter() - start)
    cold = {"ours_s": ours, "skopeo_umoci_s": theirs, "skopeo_umoci_sync_s": synced,
            "ours_median_s": statistics.median(ours), "skopeo_umoci_median_s": statistics.median(theirs),
            "skopeo_umoci_sync_median_s": statistics.median(synced),
            "ratio": statistics.median(ours) / statistics.median(theirs),
            "ratio_to_synced": statistics.median(ours) / statistics.median(synced)}
    # warm: the last cold run's state, nothing changed upstream
    counter.mark()
    t, r = reconcile()
    rss = max(rss, r)
    warm = {"seconds": t, **counter.since()}
    # incremental: v2 (a new top layer) added after v1
    write_watchlist(watchlist, host, ["v1", "v2"])
    counter.mark()
    t, r = reconcile()
    rss = max(rss, r)
    incremental = {"seconds": t, "ratio_to_cold": t / cold["ours_median_s"], **counter.since()}
    return {"cold": cold, "warm": warm, "incremental": incremental, "peak_rss_mib": round(rss / 1024, 1)}


BENCH_REPO = "bench.reconciler.org"


def catalog_entries(repo: str) -> int:
    """Entries in all catalogs of the repository's published revision."""
    out = subprocess.run(["cvmfs_server", "list-catalogs", "-e", repo], capture_output=True, text=True,
                         check=True).stdout
    # Lines such as "4 /" and "│  ├─ 12442 /.images/05/05ee…": the count stands before the path.
    return sum(int(m.group(1)) for m in re.finditer(r"(\d+) /", out))


def tree_entries(root: Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(root))


def bench_cvmfs(work: Path, host: str, pairs: int, skopeo_umoci) -> Dict[str, object]:
    """Cold into a real repository, ours vs skopeo + umoci + cp -a + publish; then the v2 update."""
    from tests import cvmfs_real

    if not cvmfs_real.available():
        sys.exit(f"bench: --cvmfs needs root and CernVM-FS (bash {cvmfs_real.SHARED}/install.sh)")
    run_dir = work / "cvmfs-run"
    watchlist = run_dir / "watchlist.toml"
    mount = Path("/cvmfs") / BENCH_REPO

    def write(tags: List[str]) -> None:
        watchlist.write_text(f'[publish]\nbackend = "cvmfs"\nrepository = "{BENCH_REPO}"\nroot = "{mount}"\n'
                             f'[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\n'
                             f'[[image]]\nsource = "{host}/bench/app"\ntags = {json.dumps(tags)}\ndest = "app"\n')

    def naive() -> float:
        took = skopeo_umoci("v1")  # leaves the bundle in <work>/oci/bundle
        cvmfs_real.fresh_repository(BENCH_REPO)
        start = time.perf_counter()
        subprocess.run(["cvmfs_server", "transaction", BENCH_REPO], check=True, capture_output=True)
        subprocess.run(["cp", "-a", str(work / "oci" / "bundle" / "rootfs"), str(mount / "app")], check=True)
        subprocess.run(["cvmfs_server", "publish", BENCH_REPO], check=True, capture_output=True, cwd="/")
        return took + time.perf_counter() - start

    ours, theirs, ours_entries, theirs_entries = [], [], 0, 0
    image_entries = 0
    for _ in range(pairs):
        cvmfs_real.fresh_repository(BENCH_REPO)
        fresh(run_dir)
        write(["v1"])
        t, _ = timed([str(RECONCILE), "--once", "--watchlist", str(watchlist)], cwd="/")
        ours.append(t)
        ours_entries = catalog_entries(BENCH_REPO)
        theirs.append(naive())
        theirs_entries = catalog_entries(BENCH_REPO)
        image_entries = tree_entries(work / "oci" / "bundle" / "rootfs")
    # The update: ours from the last cold state (re-made: the naive run wiped the repository).
    cvmfs_real.fresh_repository(BENCH_REPO)
    fresh(run_dir)
    write(["v1"])
    timed([str(RECONCILE), "--once", "--watchlist", str(watchlist)], cwd="/")
    before = catalog_entries(BENCH_REPO)
    write(["v1", "v2"])
    update, _ = timed([str(RECONCILE), "--once", "--watchlist", str(watchlist)], cwd="/")
    added = catalog_entries(BENCH_REPO) - before
    cold = statistics.median(ours)
    return {"ours_s": ours, "naive_s": theirs, "ours_median_s": cold, "naive_median_s": statistics.median(theirs),
            "ratio": cold / statistics.median(theirs), "image_entries": image_entries,
            "ours_catalog_entries": ours_entries, "naive_catalog_entries": theirs_entries,
            "entries_ratio": ours_entries / max(1, image_entries), "update_s": update,
            "update_ratio_to_cold": update / cold, "update_catalog_entries_added": added}


def summary(results: Dict[str, object]) -> str:
    parts = []
    if "apply" in results:
        a = results["apply"]
        parts.append(f"apply {a['ours_median_s']:.2f}s vs umoci {a['umoci_median_s']:.2f}s = {a['ratio']:.2f}x "
                     f"(applier peak RSS {a['ours_peak_rss_kib'] // 1024} MiB)")
    if "cold" in results:
        c, w, i = results["cold"], results["warm"], results["incremental"]
        parts.append(f"cold {c['ours_median_s']:.2f}s vs skopeo+umoci {c['skopeo_umoci_median_s']:.2f}s = "
                     f"{c['ratio']:.2f}x, vs skopeo+umoci+sync {c['skopeo_umoci_sync_median_s']:.2f}s = "
                     f"{c['ratio_to_synced']:.2f}x")
        parts.append(f"warm {w['seconds']:.2f}s {w['blob_bytes']} blob bytes {w['manifest_gets']} manifest GETs")
        parts.append(f"incremental {i['seconds']:.2f}s = {i['ratio_to_cold']:.2f}x cold, {i['blob_bytes']} blob bytes")
        parts.append(f"reconcile peak RSS {results['peak_rss_mib']} MiB")
    if "cvmfs" in results:
        c = results["cvmfs"]
        parts.append(f"cvmfs cold {c['ours_median_s']:.2f}s vs skopeo+umoci+cp+publish {c['naive_median_s']:.2f}s = "
                     f"{c['ratio']:.2f}x, catalog entries {c['ours_catalog_entries']} for an image of "
                     f"{c['image_entries']} = {c['entries_ratio']:.2f}x (naive {c['naive_catalog_entries']}); "
                     f"update {c['update_s']:.2f}s = {c['update_ratio_to_cold']:.2f}x cold, "
                     f"+{c['update_catalog_entries_added']} entries")
    return "bench: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
