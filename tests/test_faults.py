"""Faults injected against the real registry (through tests/faultproxy.py),
process death at every stage, a full disk, and bad manifests and configs.

The guarantee every test checks: after the fault (and a rerun), every tag
points at a complete image identical to a clean conversion, nothing partial
was ever visible, the blob store holds only verified blobs, and no CVMFS
transaction is left open. A fault in one image never stops the others.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pytest

from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.watchlist import load_watchlist
from tests.faultproxy import FaultProxy
from tests.test_publishers import Backend
from tests.treecompare import as_cvmfs_publishes, describe_tree, on_real_cvmfs

ROOT_DIR = Path(__file__).resolve().parent.parent
WATCHED = {"basic:v1": ("basic", "v1"), "edges:latest": ("edges", "latest")}
FAST = RetryPolicy(attempts=3, base_delay=0.01, timeout=10)


def image_entries(host: str, watched: Dict[str, tuple] = WATCHED) -> List[str]:
    return [f'source = "{host}/fixtures/{name}"\ntags = ["{tag}"]\ndest = "{dest.split(":")[0]}"'
            for dest, (name, tag) in watched.items()]


def write_watchlist(directory: Path, host: str, entries: Iterable[str], publish: str = '[publish]\nroot = "publish"\n',
                    extra: str = "") -> Path:
    text = publish + f'[state]\ndir = "state"\n{extra}[registries."{host}"]\ninsecure = true\n'
    text += "".join(f"[[image]]\n{body}\n" for body in entries)
    path = directory / "watchlist.toml"
    path.write_text(text)
    return path


def run(path: Path, retry: RetryPolicy = FAST):
    reconciler = Reconciler(load_watchlist(path), retry=retry)
    try:
        return reconciler.run_once()
    finally:
        reconciler.close()


def image_tree(link: Path):
    """What an image holds, minus what cannot match between two conversions:
    the CVMFS catalog marker and the times of the files we generate."""
    entries, hardlinks = describe_tree(Path(os.path.realpath(link)))
    if on_real_cvmfs(link):
        return as_cvmfs_publishes(image_tree_entries(entries)), None
    return image_tree_entries(entries), hardlinks


def image_tree_entries(entries):
    """Entries minus the catalog marker, with the times of our own files blanked."""
    out = {}
    for path, entry in entries.items():
        if path == b".cvmfscatalog":
            continue
        if path.startswith(b".singularity.d"):
            entry = entry[:7] + (None,) + entry[8:]
        out[path] = entry
    return out


def layer_digests(image) -> List[str]:
    return [layer["digest"] for layer in json.loads(image.top.data)["layers"]]


def biggest_layer(image) -> dict:
    return max(json.loads(image.top.data)["layers"], key=lambda layer: layer["size"])


@pytest.fixture(scope="module")
def clean_trees(tmp_path_factory, fixture_registry):
    """The watched images converted once with no fault at all."""
    tmp = tmp_path_factory.mktemp("clean")
    report = run(write_watchlist(tmp, fixture_registry.host, image_entries(fixture_registry.host)))
    assert not report.failed, report.summary()
    return {tag: image_tree(tmp / "publish" / tag) for tag in WATCHED}


@pytest.fixture
def proxy(fixture_registry):
    p = FaultProxy(fixture_registry.url)
    yield p
    p.close()


@pytest.fixture
def proxied(tmp_path, proxy):
    return write_watchlist(tmp_path, proxy.host, image_entries(proxy.host))


def same_image(tree, clean) -> bool:
    """`tree` (from image_tree) equals a clean local conversion; a real CVMFS
    tree is compared as CernVM-FS stores the clean one."""
    entries, hardlinks = tree
    if hardlinks is None:
        return entries == as_cvmfs_publishes(clean[0])
    return tree == clean


def assert_converged(visible: Path, clean_trees, tags: Iterable[str] = WATCHED) -> None:
    for tag in tags:
        assert same_image(image_tree(visible / tag), clean_trees[tag]), f"{tag} differs from a clean conversion"


def assert_store_verified(state_dir: Path) -> None:
    blobs = list((state_dir / "blobs" / "sha256").glob("*/*"))
    assert blobs
    for path in blobs:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"unverified blob {path}"


def assert_nothing_partial(visible: Path, clean_trees) -> None:
    """Every tag that is visible is a complete image; nothing is left half-built."""
    for tag in WATCHED:
        if os.path.lexists(visible / tag):
            assert same_image(image_tree(visible / tag), clean_trees[tag]), f"{tag} is visible but incomplete"


def faults_hit(proxy: FaultProxy) -> bool:
    return all(f.hits == f.times for f in proxy.faults)


# -- the registry misbehaves ---------------------------------------------------


def test_5xx_bursts_are_retried_within_the_cycle(proxied, proxy, clean_trees):
    proxy.add(path="/manifests/", method="HEAD", status=503, times=2)
    proxy.add(path="/manifests/", status=500)
    proxy.add(path="/blobs/", status=502, times=2)
    report = run(proxied)
    assert not report.failed, report.summary()
    assert faults_hit(proxy)
    assert_converged(proxied.parent / "publish", clean_trees)


def test_429_waits_as_long_as_retry_after_says(proxied, proxy, clean_trees):
    proxy.add(path="/fixtures/basic/manifests/v1", method="HEAD", status=429, headers={"Retry-After": "1"})
    report = run(proxied)
    assert not report.failed, report.summary()
    heads = [r for r in proxy.requests if r["method"] == "HEAD" and r["path"].endswith("/basic/manifests/v1")]
    assert heads[0]["fault"]["status"] == 429 and heads[1]["fault"] is None
    assert heads[1]["at"] - heads[0]["at"] >= 0.95
    assert_converged(proxied.parent / "publish", clean_trees)


def test_429_asking_for_too_long_is_left_to_the_next_cycle(proxied, proxy, clean_trees):
    proxy.add(path="/fixtures/basic/manifests/v1", method="HEAD", status=429, headers={"Retry-After": "3600"})
    report = run(proxied)
    (failed,) = [o for o in report.outcomes if o.status == "failed"]
    assert failed.name.endswith("basic:v1") and "asks to wait 3600s" in failed.reason
    assert [o.status for o in report.outcomes if o is not failed] == ["published"]  # the other image is not held up
    assert not os.path.lexists(proxied.parent / "publish" / "basic:v1")
    assert not run(proxied).failed
    assert_converged(proxied.parent / "publish", clean_trees)


def test_connection_reset_mid_blob_is_retried(proxied, proxy, fixture_images, clean_trees):
    layer = biggest_layer(fixture_images["edges"])
    proxy.add(path=layer["digest"], reset_after=layer["size"] // 2)
    report = run(proxied)
    assert not report.failed, report.summary()
    assert len([r for r in proxy.requests if layer["digest"] in r["path"] and r["method"] == "GET"]) == 2
    assert_converged(proxied.parent / "publish", clean_trees)
    assert_store_verified(proxied.parent / "state")


def test_body_cut_short_resumes_with_range(proxied, proxy, fixture_images, clean_trees):
    layer = biggest_layer(fixture_images["edges"])
    proxy.add(path=layer["digest"], short_after=1000)
    report = run(proxied)
    assert not report.failed, report.summary()
    gets = [r for r in proxy.requests if layer["digest"] in r["path"] and r["method"] == "GET"]
    assert [g["range"] for g in gets] == [None, "bytes=1000-"]  # the real registry honours it
    assert_converged(proxied.parent / "publish", clean_trees)
    assert_store_verified(proxied.parent / "state")


def test_wrong_bytes_fail_that_image_only_and_never_enter_the_store(proxied, proxy, fixture_images, clean_trees):
    bad = layer_digests(fixture_images["basic"])[0]
    proxy.add(path=bad, corrupt=True)
    report = run(proxied)
    status = {o.tag_path: o for o in report.outcomes}
    assert status["basic:v1"].status == "failed" and f"not {bad}" in status["basic:v1"].reason
    assert status["edges:latest"].status == "published"
    state_dir = proxied.parent / "state"
    assert not (state_dir / "blobs" / "sha256" / bad[7:9] / bad[7:]).exists()
    assert_store_verified(state_dir)
    reconciler = Reconciler(load_watchlist(proxied))
    try:
        row = row_of(reconciler.state, f"{proxy.host}/fixtures/basic", "v1")
    finally:
        reconciler.close()
    assert row is not None and row.failures == 1 and "hashes to" in (row.failure_reason or "")
    assert row.next_due is not None and row.next_due > time.time()  # backed off, retried next cycle
    assert not run(proxied).failed
    assert_converged(proxied.parent / "publish", clean_trees)


def test_slow_responses_past_the_timeout(proxied, proxy, clean_trees):
    impatient = RetryPolicy(attempts=2, base_delay=0.01, timeout=0.3)
    proxy.add(path="/fixtures/basic/manifests/v1", method="HEAD", delay=0.8)
    assert not run(proxied, impatient).failed  # one slow answer: retried
    assert faults_hit(proxy)
    proxy.add(path="/fixtures/edges/manifests/", method="ANY", delay=0.8, times=20)
    (proxied.parent / "publish" / "edges:latest").unlink()  # make edges due again
    report = run(proxied, impatient)
    (failed,) = [o for o in report.outcomes if o.status == "failed"]
    assert failed.tag_path == "edges:latest" and "Timeout" in failed.reason
    assert_converged(proxied.parent / "publish", clean_trees, ["basic:v1"])


def test_a_failing_token_endpoint_is_retried_then_reported(tmp_path, token_registry, clean_trees):
    tokens = token_registry.token_server
    wl = write_watchlist(tmp_path, token_registry.host, image_entries(token_registry.host, {"basic:v1": ("basic", "v1")}))
    try:
        tokens.fail_next = 2
        assert not run(wl).failed
        assert tokens.fail_next == 0
        (tmp_path / "publish" / "basic:v1").unlink()
        tokens.fail_next = 100
        report = run(wl)
        (failed,) = report.outcomes
        assert failed.status == "failed" and "token service" in failed.reason and "HTTP 503" in failed.reason
    finally:
        tokens.fail_next = 0
    assert not run(wl).failed
    assert_converged(tmp_path / "publish", clean_trees, ["basic:v1"])


def test_tag_list_failing_on_page_two_removes_nothing(tmp_path, fixture_registry):
    proxy = FaultProxy(fixture_registry.url, paginate_tags=2)
    try:
        wl = write_watchlist(tmp_path, proxy.host, [
            f'source = "{proxy.host}/fixtures/manytags"\ntag_pattern = "^t00[0-4]$"\ndest = "many"'])
        assert not run(wl).failed
        published = sorted(p.name for p in (tmp_path / "publish").glob("many:*"))
        assert published == [f"many:t00{i}" for i in range(5)]
        proxy.add(path=r"/tags/list\?.*last=", status=500, times=100)
        report = run(wl)
        assert report.entry_failures and "tags" in report.entry_failures[0][1]
        assert report.removed == []
        assert sorted(p.name for p in (tmp_path / "publish").glob("many:*")) == published
        proxy.faults.clear()
        # A 429 on page 2 is waited out; the cycle does not lose the listing.
        proxy.add(path=r"/tags/list\?.*last=", status=429, headers={"Retry-After": "0"})
        report = run(wl)
        assert not report.failed and report.removed == [] and faults_hit(proxy)
    finally:
        proxy.close()


# -- bad manifests and configs --------------------------------------------------


def _bad_manifest(case: str, image, push_blob) -> bytes:
    manifest = json.loads(image.top.data)
    if case == "not JSON":
        return b"<html>not a manifest</html>"
    if case == "no layers":
        del manifest["layers"]
    elif case == "huge":
        manifest["annotations"] = {"padding": "x" * (5 * 1024 * 1024)}
    elif case == "unknown layer type":
        manifest["layers"][0]["mediaType"] = "application/vnd.example.layer.v1+magic"
    elif case == "encrypted layer":
        manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
    elif case in ("config not JSON", "config without rootfs"):
        config = b"not json at all" if case == "config not JSON" else json.dumps(
            {"architecture": "amd64", "os": "linux", "config": {}}).encode()
        manifest["config"] = push_blob(config)
    return json.dumps(manifest).encode()


@pytest.mark.parametrize("case, message", [
    ("not JSON", "is not valid JSON"),
    ("no layers", "manifest.layers: expected a list"),
    ("huge", "larger than 4194304 bytes"),
    ("unknown layer type", "application/vnd.example.layer.v1+magic"),
    ("encrypted layer", "encrypted"),
    ("config not JSON", "is not valid JSON"),
    ("config without rootfs", "rootfs"),
])
def test_a_bad_manifest_or_config_fails_its_image_and_changes_nothing(case, message, proxied, proxy, fixture_registry,
                                                                      fixture_images, clean_trees):
    from fixtures.build import Blob
    from fixtures.push import FixturePusher

    assert not run(proxied).failed
    root = proxied.parent / "publish"
    before = os.readlink(root / "basic:v1")

    def push_blob(data: bytes) -> dict:
        blob = Blob("application/vnd.oci.image.config.v1+json", data)
        FixturePusher(fixture_registry.host).push_blob("fixtures/basic", blob, proxied.parent)
        return blob.descriptor()

    body = _bad_manifest(case, fixture_images["basic"], push_blob)
    proxy.add(path="/fixtures/basic/manifests/v1", method="ANY", body=body, times=100)
    report = run(proxied)
    status = {o.tag_path: o for o in report.outcomes}
    assert status["basic:v1"].status == "failed" and message in status["basic:v1"].reason, status["basic:v1"].reason
    assert status["edges:latest"].status == "unchanged"
    assert os.readlink(root / "basic:v1") == before  # the published image stays as it was
    assert_converged(root, clean_trees)
    assert list((root / ".staging").iterdir()) == []


# -- the disk fills up -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "cvmfs"])
def test_disk_full_during_apply_fails_that_image_and_leaves_nothing(kind, tmp_path, monkeypatch, fixture_registry,
                                                                    clean_trees):
    from reconciler.applier import apply as apply_module

    backend = Backend(kind, tmp_path, monkeypatch)
    host = fixture_registry.host
    wl = backend.watchlist(host, image_entries(host))
    real_write = apply_module._Applier._write_file

    def write_file(self, tf, member, parent_fd, name, mode):
        if name == b"big":  # edges' largest file: the device is full by then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, tf, member, parent_fd, name, mode)

    monkeypatch.setattr(apply_module._Applier, "_write_file", write_file)
    report = run(wl)
    status = {o.tag_path: o for o in report.outcomes}
    assert status["edges:latest"].status == "failed" and "No space left on device" in status["edges:latest"].reason
    assert status["basic:v1"].status == "published"
    assert not os.path.lexists(backend.visible / "edges:latest")
    assert len([p for p in backend.visible.glob(".images/*/*") if p.is_dir() and "." not in p.name]) == 1
    monkeypatch.setattr(apply_module._Applier, "_write_file", real_write)
    assert not run(wl).failed
    assert_converged(backend.visible, clean_trees)
    assert backend.violations() == []


def test_a_really_full_filesystem(tmp_path, fixture_images):
    """The same on a real 1 MiB tmpfs, where the kernel says ENOSPC (needs root)."""
    from fixtures.build import build_image
    from fixtures.push import FixturePusher
    from tests.registry_server import start_registry

    root = tmp_path / "publish"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    server = start_registry(tmp_path / "registry")
    try:
        big = build_image({"name": "big", "layers": [{"compression": "gzip", "entries": [
            {"type": "file", "path": "data/big", "size": 4 * 1024 * 1024}]}]})
        pusher = FixturePusher(server.host)
        pusher.push(type(big)("big", "team/big", big.blobs, big.manifests, ["latest"], big.layer_tars))
        basic = fixture_images["basic"]
        pusher.push(type(basic)("basic", "team/basic", basic.blobs, basic.manifests, ["v1"], basic.layer_tars))
        wl = write_watchlist(tmp_path, server.host, [f'source = "{server.host}/team/big"\ntags = ["latest"]\ndest = "big"',
                                                     f'source = "{server.host}/team/basic"\ntags = ["v1"]\ndest = "basic"'])
        report = run(wl)
        status = {o.tag_path: o for o in report.outcomes}
        assert status["big:latest"].status == "failed" and "No space left on device" in status["big:latest"].reason
        assert status["basic:v1"].status == "published"
        assert (root / "basic:v1" / "etc" / "motd").read_text() == "upper motd\n"
        assert not os.path.lexists(root / "big:latest")
        assert list((root / ".staging").iterdir()) == []
    finally:
        server.stop()
        subprocess.run(["umount", str(root)], check=True)


# -- the process dies ------------------------------------------------------------


CRASHES = [("local", "download"), ("local", "apply"), ("local", "flush"), ("local", "set-tag"), ("local", "commit"),
           ("cvmfs", "download"), ("cvmfs", "apply"), ("cvmfs", "set-tag"), ("cvmfs", "commit"),
           ("cvmfs", "publish")]


@pytest.mark.parametrize("kind, moment", CRASHES)
def test_kill_9_at_any_moment_then_rerun_converges(kind, moment, tmp_path, monkeypatch, fixture_registry,
                                                   clean_trees):
    # A kill in the middle of `cvmfs_server publish` needs the double; every other moment is the real thing.
    backend = Backend(kind, tmp_path, monkeypatch, double=moment == "publish")
    host = fixture_registry.host
    wl = backend.watchlist(host, image_entries(host))
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR), "CRASH_AT": "none" if moment == "publish" else moment}
    if moment == "publish":
        env["CVMFS_DOUBLE_DIE_IN_PUBLISH"] = "1"
    crashed = subprocess.run([sys.executable, "-m", "tests.crash_runner", "--once", "--watchlist", str(wl)],
                             env=env, capture_output=True, cwd=tmp_path)
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    assert_nothing_partial(backend.visible, clean_trees)
    if kind == "cvmfs":
        assert not list(backend.visible.glob(".images/*/*")), "nothing was published before the kill"
    report = run(wl)
    assert not report.failed, report.summary()
    assert_converged(backend.visible, clean_trees)
    state_dir = wl.parent / "state-watchlist.toml"
    assert_store_verified(state_dir)
    assert list((state_dir / "blobs" / "tmp").iterdir()) == []
    if kind == "local":
        assert list((backend.visible / ".staging").iterdir()) == []
    else:
        assert not (state_dir / "cvmfs-transaction.json").exists()
        backend.check()  # no transaction left open, nothing written outside one, `cvmfs_server check` clean


# -- the service: retries with backoff, and a soak under random faults ----------


@pytest.fixture
def quiet_logs():
    """Failures are expected here; keep pytest from holding thousands of log records."""
    import logging

    loggers = [logging.getLogger(name) for name in ("reconciler", "httpx", "apscheduler")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def start_service(path: Path, retry: RetryPolicy = FAST, backoff_base: float = 0.05):
    from reconciler.service.scheduler import Service

    watchlist = load_watchlist(path)
    service = Service(watchlist, Reconciler(watchlist, retry=retry, backoff_base=backoff_base), debounce=0.01)
    service.start()
    return service


def stop_service(service) -> None:
    service.stop(timeout=60)
    service.reconciler.close()


def row_of(state, source: str, tag: str):
    """The state row of a source's tag (one entry per source in these tests)."""
    return next((r for r in state.all() if r.source == source and r.tag == tag), None)


def published_digest(service, source: str, tag: str) -> Optional[str]:
    row = row_of(service.reconciler.state, source, tag)
    return row.published_digest if row and row.failures == 0 else None


def test_a_failed_image_is_retried_after_a_backoff_not_at_its_next_poll(tmp_path, proxy, fixture_images, clean_trees):
    from tests.registry_server import wait_until

    bad = layer_digests(fixture_images["basic"])[0]
    proxy.add(path=bad, corrupt=True)
    wl = write_watchlist(tmp_path, proxy.host, image_entries(proxy.host), extra='[defaults]\ninterval = "1h"\n')
    service = start_service(wl)
    try:
        source = f"{proxy.host}/fixtures/basic"
        wait_until(lambda: published_digest(service, source, "v1") == fixture_images["basic"].top.digest,
                   timeout=30, what="basic:v1 published by the retry")
        assert service.cycles_done >= 2  # the poll, then the retry (the next poll is an hour away)
    finally:
        stop_service(service)
    assert len([r for r in proxy.requests if bad in r["path"] and r["method"] == "GET"]) == 2
    assert_converged(tmp_path / "publish", clean_trees)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _traced_memory() -> int:
    """Python memory allocated since tracemalloc started, less the interpreter's
    table of interned strings: pathlib before 3.12 interns every path component
    (sys.intern), so a new blob digest can grow that table by megabytes at once
    (2.5 MiB on 3.9, at a point that depends on the whole test session)."""
    import inspect
    import pathlib
    import tracemalloc

    lines = [n for n, text in enumerate(inspect.getsourcelines(pathlib)[0], 1) if "sys.intern(" in text]
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pathlib.__file__, lineno=n) for n in lines])
    return sum(stat.size for stat in snapshot.statistics("filename"))


SOAK_FAULTS: List[Optional[dict]] = [
    dict(path="/blobs/", status=503),
    dict(path="/blobs/", reset_after=100),
    dict(path="/blobs/", short_after=100),
    dict(path="/blobs/", corrupt=True),
    dict(path="/manifests/", method="HEAD", status=429, headers={"Retry-After": "0"}),
    dict(path="/manifests/", method="GET", status=500, times=5),
    dict(path="/manifests/", method="HEAD", delay=0.6),
    dict(path="/tags/list", status=502, times=5),
    None,
]


def test_soak_the_service_under_random_faults(tmp_path, fixture_images, quiet_logs):
    """Many cycles, a fresh image pushed before most of them and a random fault
    injected into each; at the end it converges, and neither open files nor
    Python memory grew along the way."""
    import gc
    import random
    import tracemalloc

    from fixtures.build import build_image
    from fixtures.push import FixturePusher
    from tests.registry_server import start_registry, wait_until

    registry = start_registry(tmp_path / "registry")
    proxy = FaultProxy(registry.url)
    pusher = FixturePusher(registry.host)
    basic = fixture_images["basic"]
    pusher.push(type(basic)("basic", "team/basic", basic.blobs, basic.manifests, ["v1"], basic.layer_tars))

    def push_fresh(n: int) -> str:
        image = build_image({"name": "soak", "config": {"Env": [f"CYCLE={n}"]}, "layers": [
            {"compression": "gzip", "entries": [{"type": "file", "path": "data/blob", "size": 100_000,
                                                  "fill": chr(97 + n % 26)}]},
            {"compression": "gzip", "entries": [{"type": "file", "path": "cycle", "content": f"{n}\n"}]}]})
        pusher.push(type(image)("soak", "team/soak", image.blobs, image.manifests, ["latest"], image.layer_tars))
        return image.top.digest

    latest, latest_n = push_fresh(0), 0
    wl = write_watchlist(tmp_path, proxy.host, [
        f'source = "{proxy.host}/team/soak"\ntags = ["latest"]\ndest = "soak"',
        f'source = "{proxy.host}/team/basic"\ntag_pattern = "^v"\ndest = "basic"'],
        publish='[publish]\nroot = "publish"\ngc_grace = "0s"\n', extra='[defaults]\ninterval = "1h"\n')
    service = start_service(wl, RetryPolicy(attempts=2, base_delay=0.01, timeout=0.4))
    rng = random.Random(20261124)
    cycles, warmup, fds, memory = 40, 10, {}, {}
    try:
        for i in range(1, cycles + 1):
            wait_until(lambda: not service.cycle_running, timeout=60, what="the cycle to end")
            proxy.faults[:] = [f for f in proxy.faults if f.hits < f.times]
            proxy.requests.clear()
            if rng.random() < 0.7:
                latest, latest_n = push_fresh(i), i
            fault = rng.choice(SOAK_FAULTS)
            if fault:
                proxy.add(**fault)
            done = service.cycles_done
            service.request([0, 1], "soak")
            wait_until(lambda: service.cycles_done > done, timeout=60, what=f"soak cycle {i}")  # noqa: B023  (waited on at once)
            if i in (warmup, cycles):
                gc.collect()
                fds[i] = _open_fds()
                if i == warmup:
                    tracemalloc.start()
                memory[i] = _traced_memory()
        proxy.faults.clear()
        wait_until(lambda: not service.cycle_running, timeout=60, what="the last soak cycle")
        service.request([0, 1], "final")
        wait_until(lambda: published_digest(service, f"{proxy.host}/team/soak", "latest") == latest
                   and published_digest(service, f"{proxy.host}/team/basic", "v1") == basic.top.digest,
                   timeout=60, what="convergence after the soak")
    finally:
        tracemalloc.stop()
        stop_service(service)
        proxy.close()
        registry.stop()
    injected_failures = service.metrics.registry.get_sample_value("reconciler_failures_total",
                                                                  {"image": f"{proxy.host}/team/soak"})
    assert injected_failures, "the soak injected no fault that failed a cycle"
    root = tmp_path / "publish"
    assert (root / "soak:latest" / "cycle").read_text() == f"{latest_n}\n"
    assert latest.split(":")[1] in os.readlink(root / "soak:latest")
    assert (root / "basic:v1" / "etc" / "motd").read_text() == "upper motd\n"
    assert list((root / ".staging").iterdir()) == []
    assert len([p for p in root.glob(".images/*/*") if p.is_dir() and "." not in p.name]) <= 3  # superseded images were collected
    assert_store_verified(tmp_path / "state")
    assert fds[cycles] <= fds[warmup] + 8, fds
    assert memory[cycles] - memory[warmup] < 2 * 1024 * 1024, memory
