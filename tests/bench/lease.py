"""`python -m tests.bench --cvmfs-lease`: how to build v2 of the bench image
from a published v1 through a gateway lease, where a template transaction
(`cvmfs_server transaction -T`) is not available.

Measured per round, on the real gateway repository (tests/cvmfs_real.py
GW_REPO, lease path `bench`), v1 published cold first:
- cold: `reconcile --once` of v1 into an empty lease (what every update
  through a lease costs today: v2 shares no work with v1);
- copy: the cheapest form of "start from v1 inside the lease": `cp -a
  --reflink=never` of v1's tree in the lease's union mount, then publish (the
  undo-log replay and the one new layer would come on top);
- ingest: v1's tree as a tar stream into `cvmfs_server ingest -b` (no union
  mount; the gateway takes the lease itself);
- graft: v1's tree as a grafted copy (tests/bench/graft.py: empty
  placeholders and `.cvmfsgraft-` markers naming the stored content), then
  publish; checked to serve v1 byte for byte;
- update: `reconcile --once` adding v2 beside the published v1 (through a
  lease: a cold build of v2);
and, for comparison, the stratum 0's own update (`transaction -T`) of the
same pair on the plain bench repository. Each candidate reports its time and
the catalog entries it added. The copies are removed (untimed) after each.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from reconciler.dirfd import DIR_FLAGS
from tests.bench import graft

LEASE = "bench"


def graft_copy(src: Path, dst: Path) -> int:
    """v1's tree as a grafted copy at `dst` (tests/bench/graft.py), sealed
    as a build seals it; returns how many files were grafted."""
    dst.mkdir()
    tag = graft.new_tag()
    src_fd, dst_fd = os.open(src, DIR_FLAGS), os.open(dst, DIR_FLAGS)
    try:
        count = graft.graft_copy(src_fd, dst_fd, tag)
        graft.seal(dst_fd, tag)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    return count


def _run(*cmd: str, stdin: object = None) -> None:
    subprocess.run(cmd, check=True, capture_output=True, cwd="/", stdin=stdin)  # type: ignore[arg-type]


def _fresh_bench_repository(repo: str) -> None:
    """The bench's own repository emptied (no test uses it: no session lock)."""
    mount = Path("/cvmfs") / repo
    if any(mount.iterdir()):
        _run("cvmfs_server", "transaction", repo)
        for entry in mount.iterdir():
            subprocess.run(["rm", "-rf", str(entry)], check=True)
        _run("cvmfs_server", "publish", repo)


def bench_lease(work: Path, host: str, rounds: int, reconcile: Path, timed: Callable[..., Tuple[float, int]],
                catalog_entries: Callable[[str], int], bench_repo: str, on_gateway: bool = True) -> Dict[str, object]:
    """Cold, copy, ingest and graft through a lease (or, not `on_gateway`, in
    whole-repository transactions of the bench's own stratum 0), and the
    stratum 0 update, `rounds` times each."""
    from tests import cvmfs_real

    repo = cvmfs_real.GW_REPO if on_gateway else bench_repo
    lease = LEASE if on_gateway else ""
    target = f"{repo}/{lease}" if lease else repo
    mount = Path("/cvmfs") / repo
    tree = mount / lease if lease else mount
    run_dir = work / "lease-run"

    def fresh_repository() -> None:
        if on_gateway:
            cvmfs_real.fresh_repository(repo, gateway=True)
        else:
            _fresh_bench_repository(repo)

    def write(tags: List[str], target: str, lease: bool) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        watchlist = run_dir / f"{target}.toml"
        watchlist.write_text(f'[publish]\nbackend = "cvmfs"\nrepository = "{target}"\nroot = "/cvmfs/{target}"\n'
                             + (f'lease_path = "{LEASE}"\n' if lease and on_gateway else "")
                             + f'[state]\ndir = "state-{target}"\n[registries."{host}"]\ninsecure = true\n'
                             f'[[image]]\nsource = "{host}/bench/app"\ntags = {json.dumps(tags)}\ndest = "app"\n')
        return watchlist

    def reconcile_once(watchlist: Path) -> float:
        t, _ = timed([str(reconcile), "--once", "--watchlist", str(watchlist)], cwd="/")
        return t

    def v1_tree() -> Path:
        found = [p for p in glob.glob(str(tree / ".images" / "*" / "*")) if len(Path(p).name) == 64]
        assert len(found) == 1, found
        return Path(found[0])

    def drop(relpath: str) -> None:
        _run("cvmfs_server", "transaction", target)
        subprocess.run(["rm", "-rf", str(tree / relpath)], check=True)
        _run("cvmfs_server", "publish", repo)

    cold: List[float] = []
    copy: List[float] = []
    ingest: List[float] = []
    ingest_failed = ""
    grafting: List[float] = []
    grafted: List[int] = []
    entries: Dict[str, int] = {}
    s0_cold: List[float] = []
    s0_update: List[float] = []
    lease_update: List[float] = []
    for _ in range(rounds):
        fresh_repository()
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        cold.append(reconcile_once(write(["v1"], repo, True)))
        base = catalog_entries(repo)
        entries["v1"] = base
        source = v1_tree()
        start = time.perf_counter()
        _run("cvmfs_server", "transaction", target)
        _run("cp", "-a", "--reflink=never", str(source), str(tree / "copy"))
        _run("cvmfs_server", "publish", repo)
        copy.append(time.perf_counter() - start)
        entries["copy_added"] = catalog_entries(repo) - base
        drop("copy")
        base = catalog_entries(repo)
        start = time.perf_counter()
        tar = subprocess.Popen(["tar", "-C", str(source), "--numeric-owner", "-cf", "-", "."],
                               stdout=subprocess.PIPE, cwd="/")
        assert tar.stdout is not None
        with tar.stdout:  # ours closed once ingest has it: a failed ingest then stops tar (SIGPIPE)
            done = subprocess.run(["cvmfs_server", "ingest", "-t", "-", "-b", f"{lease}/ingested".lstrip("/"),
                                   repo], stdin=tar.stdout, capture_output=True, text=True, cwd="/")
        tar.wait()
        if done.returncode == 0:
            ingest.append(time.perf_counter() - start)
            entries["ingest_added"] = catalog_entries(repo) - base
            drop("ingested")
        else:
            ingest_failed = f"exit {done.returncode}: {(done.stdout + done.stderr)[-600:]}"
            subprocess.run(["cvmfs_server", "abort", "-f", repo], capture_output=True, cwd="/")  # if it left one open
        base = catalog_entries(repo)
        start = time.perf_counter()
        _run("cvmfs_server", "transaction", target)
        grafted.append(graft_copy(source, tree / "grafted"))
        _run("cvmfs_server", "publish", repo)
        grafting.append(time.perf_counter() - start)
        entries["graft_added"] = catalog_entries(repo) - base
        # What the grafted copy serves is v1, byte for byte.
        diff = subprocess.run(["diff", "-r", "--no-dereference", str(source), str(tree / "grafted")],
                              capture_output=True, text=True)
        assert diff.returncode == 0, diff.stdout[-2000:] + diff.stderr[-2000:]
        done = subprocess.run(["cvmfs_server", "check", repo], capture_output=True, text=True, cwd="/")
        assert done.returncode == 0, done.stdout[-2000:]
        drop("grafted")
        base = catalog_entries(repo)
        # The update through the lease: v2 beside v1 (on the stratum 0: -T).
        lease_update.append(reconcile_once(write(["v1", "v2"], repo, True)))
        entries["lease_update_added"] = catalog_entries(repo) - base
        if not on_gateway:
            continue
        # The stratum 0 (template transaction) for comparison.
        _fresh_bench_repository(bench_repo)
        s0_cold.append(reconcile_once(write(["v1"], bench_repo, False)))
        base = catalog_entries(bench_repo)
        s0_update.append(reconcile_once(write(["v1", "v2"], bench_repo, False)))
        entries["s0_update_added"] = catalog_entries(bench_repo) - base
    fresh_repository()
    med = statistics.median
    if not on_gateway:
        s0_cold, s0_update = cold, lease_update
    return {"repository": target, "ingest_failed": ingest_failed, "lease_cold_s": cold, "lease_copy_s": copy,
            "lease_ingest_s": ingest, "lease_update_s": lease_update, "lease_graft_s": grafting,
            "grafted_files": grafted, "s0_cold_s": s0_cold, "s0_update_s": s0_update, "entries": entries,
            "graft_ratio_to_cold": med(grafting) / med(cold), "copy_ratio_to_cold": med(copy) / med(cold),
            "ingest_ratio_to_cold": med(ingest) / med(cold) if ingest else None,
            "lease_update_ratio_to_cold": med(lease_update) / med(cold),
            "s0_update_ratio_to_cold": med(s0_update) / med(s0_cold)}


def lease_summary(r: Dict[str, object]) -> str:
    """One line of medians and ratios."""
    med = statistics.median

    def m(key: str) -> float:
        values = r[key]
        assert isinstance(values, list)
        return float(med(values))

    ingest = (f"{m('lease_ingest_s'):.2f}s = {r['ingest_ratio_to_cold']:.2f}x" if r["lease_ingest_s"]
              else f"failed ({r['ingest_failed']})")
    return (f"bench: {r['repository']}: cold {m('lease_cold_s'):.2f}s; update {m('lease_update_s'):.2f}s "
            f"= {r['lease_update_ratio_to_cold']:.2f}x cold; v1 copied (cp -a) + publish "
            f"{m('lease_copy_s'):.2f}s = {r['copy_ratio_to_cold']:.2f}x; ingest of v1's tar {ingest}; "
            f"v1 grafted + publish {m('lease_graft_s'):.2f}s = {r['graft_ratio_to_cold']:.2f}x "
            f"({r['grafted_files']} files); stratum 0 update {m('s0_update_s'):.2f}s = "
            f"{r['s0_update_ratio_to_cold']:.2f}x its cold {m('s0_cold_s'):.2f}s; catalog entries {r['entries']}")
