"""`python -m tests.bench --huge GB`: the figure a LIGO admin knows. Their
pipeline (`docker save`, an unpack inside a `cvmfs_server` transaction, a
publish) took about 40 minutes from push to CernVM-FS for a 5 GB image.

A generated image of about GB gigabytes of tar (cached in the work
directory): the bench's debootstrap base, two layers of many small files
(about 8 KiB each, 15 % of the size), two layers of two large files each,
and a small top layer (v2 changes only that one). File contents are
distinct (no two chunks alike, as in a real image) and about 80 % as large
under gzip -6.

Per round, each into a freshly made repository of the real CernVM-FS (so
neither finds the other's objects in the store), with the page cache dropped
before each:
- ours: the reconciler running as a service with a webhook endpoint; the
  manifest is pushed, the registry's notification is posted, and the clock
  stops when the stratum 0 serves a new revision (`.cvmfspublished` over
  HTTP) holding the tag;
- naive: the pipeline started at the push: `skopeo copy` to an OCI layout,
  `cvmfs_server transaction`, `umoci unpack` into the repository, publish
  (the unpack straight into the transaction: no `cp -a` of a bundle).
For both, the peak RSS of the whole process tree (sampled every 0.2 s:
`cvmfs_server publish` and its `cvmfs_swissknife` included) and the peak
disk the run added (the root filesystem's used bytes, sampled likewise:
downloads, scratch area and the repository's store). Then, for ours, v2 is
pushed and hooked: the update through the stratum 0's template transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import httpx

from fixtures.build import Blob, BuiltImage
from tests.bench.images import _sha256_file, build_base
from tests.registry_server import free_port

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
SMALL_SHARE = 0.15
SMALL_MEAN = 8 * 1024
MTIME = 1_700_000_000
HOOK_TOKEN = "bench-hook-token-0123456789"
REPOSITORY = "bench/huge"


@dataclass
class HugeLayer:
    """A generated layer: its gzip file, digests and sizes (only the .gz is kept)."""

    gz: Path
    diff_id: str
    digest: str
    size: int
    tar_bytes: int


class _Content:
    """A file's bytes, generated as tarfile reads them: blocks of random bytes
    (incompressible) and of 16 symbols (half as large under gzip), in the
    proportion that makes the whole about 80 % under gzip -6."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self.rng, self.left = rng, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        data = self.rng.randbytes(n)
        if self.rng.random() < 0.6:
            data = data.translate(_SIXTEEN)
        return data


_SIXTEEN = bytes(b"0123456789abcdef"[i % 16] for i in range(256))


class _HashingWriter:
    """What tarfile writes, hashed on its way into gzip's stdin."""

    def __init__(self, sink) -> None:
        self.sink, self.sha, self.count = sink, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.count += len(data)
        self.sink.write(data)
        return len(data)


def _write_layer(out: Path, files: Iterator[Tuple[str, int]], seed: int) -> HugeLayer:
    """A layer of generated files, streamed through gzip -6 (no tar kept)."""
    meta = out.with_suffix(".json")
    if meta.exists() and out.exists():
        m = json.loads(meta.read_text())
        return HugeLayer(out, m["diff_id"], m["digest"], m["size"], m["tar_bytes"])
    rng = random.Random(seed)
    tmp = out.with_suffix(".part")
    with tmp.open("wb") as gz_file:
        gzip = subprocess.Popen(["gzip", "-n", "-6", "-c"], stdin=subprocess.PIPE, stdout=gz_file)
        writer = _HashingWriter(gzip.stdin)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
            dirs = set()
            for name, size in files:
                parent = name.rpartition("/")[0]
                parts = parent.split("/")
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(d)
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
                        tf.addfile(info)
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = size, 0o644, MTIME
                tf.addfile(info, _Content(rng, size))
        assert gzip.stdin is not None
        gzip.stdin.close()
        if gzip.wait() != 0:
            raise RuntimeError(f"gzip failed for {out}")
    tmp.rename(out)
    layer = HugeLayer(out, "sha256:" + writer.sha.hexdigest(), _sha256_file(out), out.stat().st_size, writer.count)
    meta.write_text(json.dumps({"diff_id": layer.diff_id, "digest": layer.digest, "size": layer.size,
                                "tar_bytes": layer.tar_bytes}))
    return layer


def _small_files(rng: random.Random, total: int, prefix: str) -> Iterator[Tuple[str, int]]:
    written, i = 0, 0
    while written < total:
        size = min(int(rng.lognormvariate(8.3, 1.0)), 1 << 20)  # median ~4 KiB, mean ~8 KiB
        yield f"{prefix}/d{i // 500:04d}/f{i:06d}.dat", size
        written += size
        i += 1


def build_huge(cache: Path, gigabytes: float) -> Dict[str, BuiltImage]:
    """v1 and v2 of the generated image (v2: another top layer); cached."""
    cache.mkdir(parents=True, exist_ok=True)
    total = int(gigabytes * (1 << 30))
    base = build_base(cache.parent / "cache")
    small, large = int(total * SMALL_SHARE) // 2, int(total * (1 - SMALL_SHARE)) // 4
    tag = f"{gigabytes:g}g"
    layers: List[object] = [base]
    for n in range(2):
        rng = random.Random(100 + n)
        layers.append(_write_layer(cache / f"huge-{tag}-small{n}.tar.gz",
                                   _small_files(rng, small, f"opt/data/small{n}"), seed=200 + n))
    for n in range(2):
        files = iter([(f"opt/data/large/part{2 * n + k}.bin", large) for k in range(2)])
        layers.append(_write_layer(cache / f"huge-{tag}-large{n}.tar.gz", files, seed=300 + n))
    images = {}
    for version in (1, 2):
        top = _write_layer(cache / f"huge-{tag}-top-v{version}.tar.gz",
                           iter([(f"opt/app/v{version}/run.bin", 4096 * version), ("etc/huge-release", 64)]),
                           seed=400 + version)
        stack = layers + [top]
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/bash"]},
                             "rootfs": {"type": "layers",
                                        "diff_ids": [layer.diff_id for layer in stack]}}).encode()  # type: ignore[attr-defined]
        config_blob = Blob("application/vnd.oci.image.config.v1+json", config)
        manifest = Blob("application/vnd.oci.image.manifest.v1+json", json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_blob.descriptor(),
            "layers": [{"mediaType": GZ, "digest": layer.digest, "size": layer.size}  # type: ignore[attr-defined]
                       for layer in stack]}).encode())
        image = BuiltImage(f"v{version}", REPOSITORY, [config_blob], [manifest], [f"v{version}"], [])
        image.layer_files = stack  # type: ignore[attr-defined]
        images[f"v{version}"] = image
    return images


def image_summary(images: Dict[str, BuiltImage]) -> Dict[str, int]:
    layers = images["v1"].layer_files  # type: ignore[attr-defined]
    tar = sum(getattr(layer, "tar_bytes", 0) or layer.tar.stat().st_size for layer in layers)
    return {"layers": len(layers), "tar_bytes": tar, "gzip_bytes": sum(layer.size for layer in layers)}


class Sampler:
    """Peak summed RSS of a process and its descendants, and peak bytes the
    root filesystem gained, sampled every 0.2 s from a thread."""

    def __init__(self, pid: int, disk: str = "/") -> None:
        self.pid, self.disk = pid, disk
        self.base_used = self._used()
        self.peak_rss_kib, self.peak_disk = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        st = os.statvfs(self.disk)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _tree_rss_kib(self) -> int:
        children: Dict[int, List[int]] = {}
        rss: Dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/statm") as fh:
                    rss[int(entry)] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.2)

    def sample(self) -> None:
        self.peak_rss_kib = max(self.peak_rss_kib, self._tree_rss_kib())
        self.peak_disk = max(self.peak_disk, self._used() - self.base_used)

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {"peak_rss_mib": round(self.peak_rss_kib / 1024, 1), "peak_disk_gib": round(self.peak_disk / (1 << 30), 2)}


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fresh_repository(repo: str) -> None:
    """`repo` removed and made again: an empty store, so that neither run finds
    the other's objects (and the disk it adds is its own)."""
    from tests import cvmfs_real

    if Path(f"/etc/cvmfs/repositories.d/{repo}").exists():
        subprocess.run(["cvmfs_server", "rmfs", "-f", repo], check=True, capture_output=True, cwd="/")
    cvmfs_real._ensure(repo, gateway=False)


def served_revision(http: httpx.Client, repo: str) -> int:
    from reconciler.publish.replicas import read_served, stratum0_url

    return read_served(http, stratum0_url(repo)).revision


def wait_for(what: str, check: Callable[[], bool], deadline_s: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {what} did not happen within {deadline_s:.0f} s")
        time.sleep(every)


def _metric(http: httpx.Client, base: str, name: str) -> float:
    for line in http.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _hook(http: httpx.Client, base: str, tag: str, digest: str, pushed: float) -> None:
    when = dt.datetime.fromtimestamp(pushed, dt.timezone.utc).isoformat().replace("+00:00", "Z")
    event = {"events": [{"action": "push", "timestamp": when,
                         "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                    "repository": REPOSITORY, "digest": digest, "tag": tag}}]}
    answer = http.post(f"{base}/hooks/distribution", json=event,
                       headers={"Authorization": f"Bearer {HOOK_TOKEN}"})
    if answer.status_code != 202:
        raise RuntimeError(f"bench: the webhook got {answer.status_code} {answer.text}")


def run_ours(work: Path, reconcile: Path, host: str, repo: str, images: Dict[str, BuiltImage], round_tag: str,
             push_manifest: Callable[[BuiltImage, str], None],
             catalog_entries: Callable[[str], int]) -> Dict[str, object]:
    """The service with a webhook endpoint: v1 pushed and hooked until its
    revision is served (cold), then v2 (the update). Tags are new each
    round (`<round>v1`), so the service's first cycle finds neither."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mount = Path("/cvmfs") / repo
    tags = {version: f"{round_tag}{version}" for version in images}
    watchlist = work / "watchlist.toml"
    watchlist.write_text(
        f'[publish]\nbackend = "cvmfs"\nrepository = "{repo}"\nroot = "{mount}"\n[state]\ndir = "state"\n'
        f'[service]\nlisten = "127.0.0.1:{port}"\n[webhooks.distribution]\ntoken_env = "BENCH_HOOK_TOKEN"\n'
        f'[registries."{host}"]\ninsecure = true\n'
        f'[[image]]\nsource = "{host}/{REPOSITORY}"\ntags = {json.dumps(sorted(tags.values()))}\ndest = "huge"\n'
        f'interval = "24h"\n')
    http = httpx.Client(timeout=10)
    log = (work / "service.log").open("wb")
    service = subprocess.Popen([str(reconcile), "--watchlist", str(watchlist)], cwd="/", stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "BENCH_HOOK_TOKEN": HOOK_TOKEN})
    out: Dict[str, object] = {}
    try:
        wait_for("the service's first cycle", lambda: _ready(http, base), 120)
        for version, key in (("v1", "cold"), ("v2", "update")):
            image, tag = images[version], tags[version]
            before = served_revision(http, repo)
            drop_caches()
            sampler = Sampler(service.pid)
            push_manifest(image, tag)
            pushed = time.time()
            _hook(http, base, tag, image.top.digest, pushed)
            served = _wait_published(http, base, repo, tag, image.top.digest, before, 3600)
            took = time.time() - pushed
            out[key] = {"seconds": took, "stratum0_serves_s": served - pushed, **sampler.stop(),
                        "catalog_entries": catalog_entries(repo),
                        "phases_s": _phases(work / "service.log", tag, pushed)}
        out["service_peak_rss_mib"] = _peak_rss_mib(service.pid)
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(600)
        except subprocess.TimeoutExpired:
            service.kill()
        log.close()
        http.close()
    return out


def _wait_published(http: httpx.Client, base: str, repo: str, tag: str, digest: str, before: int,
                    deadline_s: float) -> float:
    """Poll until /status says the tag is published at `digest` (the
    transaction's `cvmfs_server publish` returned); the time the stratum 0
    first served a newer revision (its `.cvmfspublished`, which comes a
    little earlier) is returned."""
    deadline = time.monotonic() + deadline_s
    served = 0.0
    while time.monotonic() < deadline:
        if not served and served_revision(http, repo) > before:
            served = time.time()
        images = http.get(f"{base}/status").json()["images"]
        if any(t["tag"] == tag and t["published"] == digest for i in images for t in i["tags"]):
            return served or time.time()
        time.sleep(0.1)
    raise RuntimeError(f"bench: {tag} was not published within {deadline_s:.0f} s")


def _phases(log: Path, tag: str, pushed: float) -> Dict[str, float]:
    """From the service's log (whole seconds): when, after the push, the
    layers were downloaded and the image applied (its transaction's publish
    follows)."""
    marks = {"downloaded": f"{tag}: layers ready", "applied": f"published as huge:{tag}"}
    out: Dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        for name, text in marks.items():
            if text in line and name not in out:
                at = dt.datetime.strptime(line[:19], "%Y-%m-%dT%H:%M:%S").timestamp()
                out[name] = round(at - pushed, 1)
    return out


def _peak_rss_mib(pid: int) -> float:
    """The process's own peak RSS so far (VmHWM), without its children."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _ready(http: httpx.Client, base: str) -> bool:
    try:
        return _metric(http, base, "reconciler_cycles_total") >= 1
    except httpx.HTTPError:
        return False


def run_naive(work: Path, host: str, repo: str, tag: str) -> Dict[str, object]:
    """skopeo copy + transaction + umoci unpack into it + publish, as one process tree."""
    layout = work / "oci"
    subprocess.run(["rm", "-rf", str(layout)], check=True)
    script = (f"set -e; skopeo copy -q --src-tls-verify=false docker://{host}/{REPOSITORY}:{tag} oci:{layout}:{tag};"
              f" cvmfs_server transaction {repo} >/dev/null;"
              f" umoci unpack --image {layout}:{tag} /cvmfs/{repo}/huge >/dev/null;"
              f" cvmfs_server publish {repo} >/dev/null")
    drop_caches()
    start = time.time()
    proc = subprocess.Popen(["bash", "-c", script], cwd="/")
    sampler = Sampler(proc.pid)
    if proc.wait() != 0:
        raise RuntimeError(f"bench: the naive pipeline failed ({proc.returncode})")
    took = time.time() - start
    result: Dict[str, object] = {"seconds": took, **sampler.stop()}
    subprocess.run(["rm", "-rf", str(layout)], check=True)
    return result


def push_blobs(pusher, images: Dict[str, BuiltImage], scratch: Path) -> None:
    """Every layer and config of both versions, no manifest (no tag yet)."""
    for image in images.values():
        container = pusher._container(image.repository, "latest")
        for layer in image.layer_files:  # type: ignore[attr-defined]
            pusher.registry.upload_blob(str(layer.gz), container,
                                        {"mediaType": GZ, "digest": layer.digest, "size": layer.size})
        for blob in image.blobs:
            pusher.push_blob(image.repository, blob, scratch)


def bench_huge(work: Path, reconcile: Path, gigabytes: float, rounds: int, catalog_entries: Callable[[str], int],
               repo: str) -> Dict[str, object]:
    """`rounds` alternating rounds of ours (webhook to revision) and the naive pipeline."""
    from fixtures.push import FixturePusher
    from tests.bench.__main__ import fresh, tree_entries
    from tests.registry_server import start_registry

    images = build_huge(work / "huge-cache", gigabytes)
    results: Dict[str, object] = {"image": image_summary(images), "gigabytes": gigabytes}
    registry = start_registry(fresh(work / "huge-registry"))
    try:
        pusher = FixturePusher(registry.host)
        push_blobs(pusher, images, fresh(work / "huge-blobs"))

        def push_manifest(image: BuiltImage, tag: str) -> None:
            pusher.push_manifest(image.repository, image.top, tag)

        ours: List[Dict[str, object]] = []
        naive: List[Dict[str, object]] = []
        image_entries: Optional[int] = None
        for n in range(rounds):
            round_tag = f"r{int(time.time())}"
            fresh_repository(repo)
            ours.append(run_ours(fresh(work / "huge-run"), reconcile, registry.host, repo, images, round_tag,
                                 push_manifest, catalog_entries))
            print(f"bench: huge round {n + 1}: ours {ours[-1]}", flush=True)
            subprocess.run(["rm", "-rf", str(work / "huge-run")], check=True)
            fresh_repository(repo)
            naive.append(run_naive(work, registry.host, repo, f"{round_tag}v1"))
            naive[-1]["catalog_entries"] = catalog_entries(repo)
            if image_entries is None:
                image_entries = tree_entries(Path("/cvmfs") / repo / "huge" / "rootfs")
            print(f"bench: huge round {n + 1}: naive {naive[-1]}", flush=True)
        fresh_repository(repo)
    finally:
        registry.stop()
    cold = statistics.median(float(r["cold"]["seconds"]) for r in ours)  # type: ignore[index]
    theirs = statistics.median(float(r["seconds"]) for r in naive)  # type: ignore[arg-type]
    update = statistics.median(float(r["update"]["seconds"]) for r in ours)  # type: ignore[index]
    entries = int(ours[-1]["cold"]["catalog_entries"])  # type: ignore[index]
    results.update({"ours": ours, "naive": naive, "ours_median_s": cold, "naive_median_s": theirs,
                    "ratio": cold / theirs, "update_median_s": update, "update_ratio_to_cold": update / cold,
                    "image_entries": image_entries, "entries_ratio": entries / max(1, image_entries or 1)})
    return results


def huge_summary(r: Dict[str, object]) -> str:
    image = r["image"]
    ours, naive = r["ours"][-1], r["naive"][-1]  # type: ignore[index]
    return (f"bench: {image['tar_bytes'] / 1e9:.2f} GB image ({image['layers']} layers, "  # type: ignore[index]
            f"{image['gzip_bytes'] / 1e9:.2f} GB gzip): webhook to published revision {r['ours_median_s']:.1f}s "
            f"vs skopeo+transaction+umoci+publish {r['naive_median_s']:.1f}s = {r['ratio']:.2f}x; "
            f"peak RSS {ours['cold']['peak_rss_mib']} MiB vs {naive['peak_rss_mib']} MiB (the reconciler process "
            f"alone {ours.get('service_peak_rss_mib')} MiB), "
            f"peak disk {ours['cold']['peak_disk_gib']} GiB vs {naive['peak_disk_gib']} GiB; "
            f"catalog entries {ours['cold']['catalog_entries']} for an image of {r['image_entries']} = "
            f"{r['entries_ratio']:.3f}x (naive {naive['catalog_entries']}); "
            f"update (v2 hooked) {r['update_median_s']:.1f}s = {r['update_ratio_to_cold']:.3f}x cold")
