"""The publisher contract, run against both backends: the local directory and
CVMFS. CVMFS is a real stratum 0 (tests/cvmfs_real.py); the `cvmfs_server`
test double in tests/cvmfs_double stays only for what the real command cannot
be made to do here: several publisher nodes, a catalog limit, a crash in the
middle of `publish`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from reconciler.cycle.build import BuildStage
from reconciler.errors import LayerError
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.watchlist import load_watchlist
from tests import cvmfs_real

DOUBLE_DIR = Path(__file__).resolve().parent / "cvmfs_double"
REPO = "containers.test.org"  # the double's repository


class Backend:
    """One backend under test: writes watchlists for it and reads what is published.

    kind "local" or "cvmfs"; a CVMFS backend is the real stratum 0 unless
    `double`; `gateway` publishes the real one through a cvmfs_gateway."""

    def __init__(self, kind: str, tmp_path: Path, monkeypatch, *, double: bool = False,
                 gateway: bool = False) -> None:
        self.kind = kind
        self.tmp = tmp_path
        self.real = kind == "cvmfs" and not double
        self.double = tmp_path / "cvmfs-server"
        self.call_log = tmp_path / "cvmfs-calls.jsonl"
        self.repo = REPO
        if self.real:
            cvmfs_real.require()
            self.repo = cvmfs_real.GW_REPO if gateway else cvmfs_real.REPO
            cvmfs_real.fresh_repository(self.repo, gateway)
            monkeypatch.setenv("PATH", f"{cvmfs_real.SHIM_DIR}{os.pathsep}{os.environ['PATH']}")
            monkeypatch.setenv("CVMFS_CALL_LOG", str(self.call_log))
        elif kind == "cvmfs":
            monkeypatch.setenv("PATH", f"{DOUBLE_DIR}{os.pathsep}{os.environ['PATH']}")
            monkeypatch.setenv("CVMFS_DOUBLE_ROOT", str(self.double))
            subprocess.run(["cvmfs_server", "mkfs", REPO], check=True)

    def mount(self, node: str = "node0") -> Path:
        """Where the repository is written in a transaction (the union mount)."""
        if self.real:
            return Path("/cvmfs") / self.repo
        return self.double / "nodes" / node / "cvmfs" / REPO

    @property
    def visible(self) -> Path:
        """What readers see: the published revision (CVMFS) or the local root."""
        if self.kind == "local":
            return self.tmp / "publish"
        if self.real:  # the published revision itself, as clients get it (not the union mount)
            return Path("/var/spool/cvmfs") / self.repo / "rdonly"
        return self.double / "repos" / REPO / "published"

    def publish_section(self, lease: str = "", node: str = "node0") -> str:
        if self.kind == "local":
            return '[publish]\nroot = "publish"\n'
        text = f'[publish]\nbackend = "cvmfs"\nrepository = "{self.repo}"\nroot = "{self.mount(node)}"\n'
        return text + (f'lease_path = "{lease}"\n' if lease else "")

    def watchlist(self, host: str, images: List[str], name: str = "watchlist.toml", **kw) -> Path:
        text = self.publish_section(**kw) + f'[state]\ndir = "state-{name}"\n[registries."{host}"]\ninsecure = true\n'
        text += "".join(f"[[image]]\n{body}\n" for body in images)
        path = self.tmp / name
        path.write_text(text)
        return path

    def calls(self) -> List[List[str]]:
        """The argv of every `cvmfs_server` call so far (but the set-up's own)."""
        if self.real:
            return cvmfs_real.read_calls(self.call_log)
        log = self.double / "calls.jsonl"
        if not log.exists():
            return []
        calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
        return [c for c in calls if c[0] != "mkfs"]  # the test set-up's own call

    def publishes(self) -> int:
        """How many revisions our runs published."""
        return sum(1 for c in self.calls() if c[0] == "publish")

    def violations(self) -> List[dict]:
        if self.real:
            return []
        state = self.double / "repos" / REPO / "state.json"
        return json.loads(state.read_text()).get("violations", []) if state.exists() else []

    def check(self) -> None:
        """After a scenario: nothing written outside a transaction (the double),
        no transaction open and `cvmfs_server check` clean (the real one)."""
        assert self.violations() == [], "the repository was written outside a transaction"
        if self.real:
            cvmfs_real.assert_healthy(self.repo)


@pytest.fixture(params=["local", "cvmfs"])
def backend(request, tmp_path, monkeypatch):
    b = Backend(request.param, tmp_path, monkeypatch)
    yield b
    b.check()


def run(path: Path, **kw):
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01), **kw)
    try:
        return reconciler.run_once()
    finally:
        reconciler.close()


def img(host: str, name: str, tags: str, dest: str) -> str:
    return f'source = "{host}/fixtures/{name}"\ntags = {tags}\ndest = "{dest}"'


_OUR_ADDITIONS = (b".singularity.d", b"cvmfs", b"srv", b"dev", b"proc", b"sys", b"home", b"root", b"tmp", b"var/tmp",
                  b".run", b".exec", b".shell", b".test", b"environment", b"singularity", b".cvmfscatalog")


_OUR_PARENTS = (b"etc", b"var")


def assert_matches_full_apply(tree: Path, built, scratch: Path) -> None:
    """`tree` holds exactly what applying every layer of `built` in order gives
    (besides what we add: .singularity.d, bind points, the catalog marker)."""
    from tests.treecompare import apply_image, as_cvmfs_publishes, describe_tree, on_real_cvmfs

    apply_image(built, scratch)
    ours = {p: e for p, e in describe_tree(tree)[0].items() if not p.startswith(_OUR_ADDITIONS)}
    theirs, _ = describe_tree(scratch)
    if on_real_cvmfs(tree):
        ours, theirs = as_cvmfs_publishes(ours), as_cvmfs_publishes(theirs)
    for path in sorted(set(ours) | set(theirs)):
        mine, full = ours.get(path), theirs.get(path)
        if full is None and path in _OUR_PARENTS:
            continue  # a directory the Apptainer step created because the image has none
        if mine and full and mine[0] == 0o040000:
            mine, full = mine[:7], full[:7]  # directory mtimes of implied dirs differ by design
        assert mine == full, path


def test_publish_then_unchanged(backend, fixture_registry):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1", "latest"]', "basic")])
    report = run(wl)
    assert {o.status for o in report.outcomes} == {"published"}
    seen = backend.visible
    assert (seen / "basic:v1" / "etc" / "motd").read_text() == "upper motd\n"
    assert os.readlink(seen / "basic:v1") == os.readlink(seen / "basic:latest")  # two tags, one directory
    assert "GREETING" in (seen / "basic:v1" / ".singularity.d" / "env" / "10-docker2singularity.sh").read_text()
    calls_before = len(backend.calls())
    again = run(wl)
    assert again.transactions == 0 and {o.status for o in again.outcomes} == {"unchanged"}
    if backend.kind == "cvmfs":
        assert backend.calls()[calls_before:] == []  # no transaction, not even a `cvmfs_server list`
        image_dir = Path(os.path.realpath(seen / "basic:v1"))
        assert (image_dir / ".cvmfscatalog").exists()


def test_three_changed_images_make_one_transaction(backend, fixture_registry):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "a"), img(host, "edges", '["latest"]', "b"),
                                  img(host, "special", '["latest"]', "c")])
    report = run(wl)
    assert report.transactions == 1 and not report.failed
    if backend.kind == "cvmfs":
        verbs = [c[0] for c in backend.calls()]
        assert verbs == ["transaction", "publish"]  # no marker of ours: nothing to recover, no `list`
        publish = backend.calls()[-1]
        assert publish[:2] == ["publish", "-m"] and publish[-1] == backend.repo
        assert all(name in publish[2] for name in ("fixtures/basic:v1", "fixtures/edges:latest", "fixtures/special:latest"))
        assert backend.publishes() == 1


def test_tag_moved_keeps_the_old_image_until_gc(backend, fixture_registry):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "app")])
    run(wl)
    old = os.readlink(backend.visible / "app:v1")
    wl = backend.watchlist(host, [f'source = "{host}/fixtures/edges"\ntags = ["latest"]\ndest = "app"'])
    run(wl)  # "app:v1" is no longer watched; "app:latest" is new
    assert not (backend.visible / "app:v1").exists()
    assert (backend.visible / "app:latest" / "after-empty").exists()
    assert (backend.visible / old).is_dir()


def test_exception_mid_image_leaves_nothing_visible(backend, fixture_registry, monkeypatch):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "good"), img(host, "edges", '["latest"]', "bad")])
    real = BuildStage.apply_layers

    def failing(self, image, build, **kw):
        if "edges" in str(image.reference):
            (build.path / "partial-file").write_text("half an image")
            raise LayerError("injected failure in the middle of an image")
        return real(self, image, build, **kw)

    monkeypatch.setattr(BuildStage, "apply_layers", failing)
    report = run(wl)
    statuses = {o.tag_path: o.status for o in report.outcomes}
    assert statuses == {"good:v1": "published", "bad:latest": "failed"}
    assert not (backend.visible / "bad:latest").exists()
    assert not list(backend.visible.rglob("partial-file"))
    assert (backend.visible / "good:v1" / "etc" / "motd").exists()


def test_failure_of_the_whole_transaction_aborts_it(backend, fixture_registry, monkeypatch):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "app")])
    from reconciler.publish.base import PublishTransaction

    def interrupted_set_tag(self, tag_path, digest):
        raise KeyboardInterrupt()  # Ctrl-C between apply and publish: not one image's failure

    monkeypatch.setattr(PublishTransaction, "set_tag", interrupted_set_tag)
    with pytest.raises(KeyboardInterrupt):
        run(wl)
    assert not (backend.visible / "app:v1").exists()
    if backend.kind == "cvmfs":
        assert backend.calls()[-1] == ["abort", "-f", backend.repo]
        assert not list(backend.visible.glob(".images/*/*"))


def test_an_unexpected_error_in_one_image_fails_that_image_only(backend, fixture_registry, monkeypatch):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "good"), img(host, "edges", '["latest"]', "bad")])
    from reconciler.publish.base import PublishTransaction

    real = PublishTransaction.set_tag

    def broken_set_tag(self, tag_path, digest):
        if tag_path == "bad:latest":
            raise RuntimeError("injected bug while setting a tag")
        return real(self, tag_path, digest)

    monkeypatch.setattr(PublishTransaction, "set_tag", broken_set_tag)
    report = run(wl)
    status = {o.tag_path: o for o in report.outcomes}
    assert status["good:v1"].status == "published"
    assert status["bad:latest"].status == "failed"
    assert status["bad:latest"].reason == "unexpected RuntimeError: injected bug while setting a tag"
    assert (backend.visible / "good:v1" / "etc" / "motd").exists() and not (backend.visible / "bad:latest").exists()
    monkeypatch.setattr(PublishTransaction, "set_tag", real)
    assert not run(wl).failed  # recorded as failed, and healed by the next run
    assert (backend.visible / "bad:latest" / "after-empty").exists()


def test_killed_run_never_shows_a_partial_image_and_the_next_run_converges(backend, fixture_registry):
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "app"), img(host, "edges", '["latest"]', "edges")])
    env = {**os.environ, "CRASH_AFTER_LAYERS": "3", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    crashed = subprocess.run([sys.executable, "-m", "tests.crash_runner", "--once", "--watchlist", str(wl)],
                             env=env, capture_output=True)
    assert crashed.returncode == -9
    assert not (backend.visible / "app:v1").exists() or (backend.visible / "app:v1" / "etc" / "motd").exists()
    assert not (backend.visible / "edges:latest").exists()
    if backend.kind == "cvmfs":
        assert not list(backend.visible.glob(".images/*/*"))  # nothing was published
    report = run(wl)
    assert not report.failed
    assert (backend.visible / "edges:latest" / "after-empty").exists()
    assert (backend.visible / "app:v1" / "etc" / "motd").read_text() == "upper motd\n"
    if backend.kind == "local":
        assert list((backend.visible / ".staging").iterdir()) == []
    else:
        verbs = [c[0] for c in backend.calls()]
        assert verbs[-4:] == ["list", "abort", "transaction", "publish"]  # our stale transaction aborted first


def test_cvmfs_foreign_transaction_is_reported_not_touched(tmp_path, monkeypatch, fixture_registry):
    backend = Backend("cvmfs", tmp_path, monkeypatch)
    subprocess.run(["cvmfs_server", "transaction", backend.repo], check=True, capture_output=True)  # someone else's
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "app")])
    try:
        report = run(wl)
        assert report.failed
        (outcome,) = report.outcomes
        assert "already in a transaction" in outcome.reason
        assert "abort" not in [c[0] for c in backend.calls()[1:]]
    finally:
        subprocess.run(["cvmfs_server", "abort", "-f", backend.repo], check=True, capture_output=True)
    backend.check()


def _entries(tree: Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(tree))


def _push_wide_image(server, name: str, files: int) -> None:
    """An image of `files` files in a lower layer and a small top layer."""
    from fixtures.build import build_image
    from fixtures.push import FixturePusher

    image = build_image({"name": name, "layers": [
        {"compression": "gzip", "entries": [{"type": "file", "path": f"d{i // 50}/f{i}", "content": name}
                                            for i in range(files)]},
        {"compression": "gzip", "entries": [{"type": "file", "path": "top", "content": name}]}]})
    FixturePusher(server.host).push(type(image)(name, f"team/{name}", image.blobs, image.manifests, ["v1"],
                                                image.layer_tars))


def test_cvmfs_nested_catalogs_keep_catalogs_small(tmp_path, monkeypatch):
    from tests.registry_server import start_registry

    backend = Backend("cvmfs", tmp_path, monkeypatch, double=True)  # a catalog limit on demand
    server = start_registry(tmp_path / "registry")
    try:
        for name in ("a", "b"):
            _push_wide_image(server, name, 300)
        host = server.host
        wl = backend.watchlist(host, [f'source = "{host}/team/{n}"\ntags = ["v1"]\ndest = "{n}"' for n in "ab"])
        monkeypatch.setenv("CVMFS_DOUBLE_CATALOG_LIMIT", "300")  # below one image alone: refused
        report = run(wl)
        assert report.failed and "has more than 300 entries" in report.outcomes[0].reason
        monkeypatch.setenv("CVMFS_DOUBLE_CATALOG_LIMIT", "400")  # each image fits, both in one catalog would not
        assert not run(wl).failed
    finally:
        server.stop()
    sizes = [_entries(Path(os.path.realpath(backend.visible / t))) for t in ("a:v1", "b:v1")]
    assert max(sizes) < 400 < sum(sizes)
    # the image buckets are a catalog of their own, and no layer chain is kept beside the images
    assert (backend.visible / ".images" / ".cvmfscatalog").exists()
    assert not (backend.visible / ".chains").exists()


def test_cvmfs_update_opens_a_template_transaction_from_the_published_chain(tmp_path, monkeypatch, fixture_registry,
                                                                            fixture_images):
    from tests.treecompare import describe_tree

    backend = Backend("cvmfs", tmp_path, monkeypatch)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "chain-v1", '["latest"]', "v1")])
    assert not run(wl).failed
    v1_before = describe_tree(Path(os.path.realpath(backend.visible / "v1:latest")))
    wl = backend.watchlist(host, [img(host, "chain-v1", '["latest"]', "v1"), img(host, "chain-v2", '["latest"]', "v2")])
    import reconciler.cycle.build as build_stage

    applied = []
    real_apply = build_stage.apply_layer
    monkeypatch.setattr(build_stage, "apply_layer", lambda *a, **kw: applied.append(1) or real_apply(*a, **kw))
    assert not run(wl).failed
    assert len(applied) == 1  # only v2's top layer: the template brought the other two
    opened = [c for c in backend.calls() if c[0] == "transaction"]
    v2_digest = fixture_images["chain-v2"].top.digest.split(":")[1]
    v1_digest = fixture_images["chain-v1"].top.digest.split(":")[1]
    assert opened[-1][1] == "-T"
    assert opened[-1][2] == f"/.images/{v1_digest[:2]}/{v1_digest}=/.images/{v2_digest[:2]}/{v2_digest}"
    # v2 is exactly what applying all of its layers gives
    assert_matches_full_apply(Path(os.path.realpath(backend.visible / "v2:latest")), fixture_images["chain-v2"],
                              tmp_path / "scratch")
    assert describe_tree(Path(os.path.realpath(backend.visible / "v1:latest"))) == v1_before
    backend.check()


def test_cvmfs_template_is_not_used_through_a_gateway_lease(tmp_path, monkeypatch, fixture_registry):
    backend = Backend("cvmfs", tmp_path, monkeypatch, gateway=True)
    host = fixture_registry.host
    images = [img(host, "chain-v1", '["latest"]', "v1")]
    assert not run(backend.watchlist(host, images, lease="ligo")).failed
    images.append(img(host, "chain-v2", '["latest"]', "v2"))
    assert not run(backend.watchlist(host, images, lease="ligo")).failed
    assert not any("-T" in c for c in backend.calls())
    assert (backend.visible / "ligo" / "v2:latest" / "etc" / "config").read_text() == "config rewritten in v2\n"
    backend.check()


def test_cvmfs_lease_paths_let_two_publishers_share_a_repository(tmp_path, monkeypatch, fixture_registry):
    backend = Backend("cvmfs", tmp_path, monkeypatch, double=True)  # two publisher nodes
    host = fixture_registry.host
    ligo = backend.watchlist(host, [img(host, "basic", '["v1"]', "app")], name="ligo.toml", lease="ligo")
    monkeypatch.setenv("CVMFS_DOUBLE_NODE", "node1")
    osg = backend.watchlist(host, [img(host, "edges", '["latest"]', "app")], name="osg.toml", lease="osg", node="node1")
    # node1 holds an open transaction on /osg: ligo on node0 is not blocked by it
    subprocess.run(["cvmfs_server", "transaction", f"{REPO}/osg"], check=True, capture_output=True)
    subprocess.run(["cvmfs_server", "abort", "-f", f"{REPO}/osg"], check=True, capture_output=True)
    assert not run(osg).failed
    monkeypatch.setenv("CVMFS_DOUBLE_NODE", "node0")
    assert not run(ligo).failed
    published = backend.visible
    assert (published / "ligo" / "app:v1" / "etc" / "motd").exists()
    assert (published / "osg" / "app:latest" / "after-empty").exists()
    assert [c[-1] for c in backend.calls() if c[0] == "publish"] == [f"{REPO}/osg", f"{REPO}/ligo"]


def test_cvmfs_overlapping_lease_is_busy(tmp_path, monkeypatch, fixture_registry):
    backend = Backend("cvmfs", tmp_path, monkeypatch, double=True)  # two publisher nodes
    monkeypatch.setenv("CVMFS_DOUBLE_NODE", "node1")
    subprocess.run(["cvmfs_server", "transaction", f"{REPO}/ligo"], check=True, capture_output=True)
    monkeypatch.setenv("CVMFS_DOUBLE_NODE", "node0")
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "basic", '["v1"]', "app")], lease="ligo")
    report = run(wl)
    (outcome,) = report.outcomes
    assert outcome.status == "failed" and "lease path is busy" in outcome.reason


def test_gc_removes_unreferenced_images_after_the_grace_period(backend, fixture_registry):
    host = fixture_registry.host
    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    first = backend.watchlist(host, [img(host, "basic", '["v1"]', "a"), img(host, "special", '["latest"]', "b")])
    run(first, clock=clock)
    old = {Path(os.path.realpath(backend.visible / t)).name for t in ("a:v1", "b:latest")}
    # a and b are dropped from the watchlist; c is new
    backend.watchlist(host, [img(host, "edges", '["latest"]', "c")])
    first.write_text(first.read_text().replace("[publish]\n", "[publish]\ngc_max_per_cycle = 1\n"))
    now[0] += 60
    run(first, clock=clock)  # a and b lose their tags: unreferenced from now on
    def on_disk():
        return {p.name for p in (backend.visible / ".images").glob("*/*")}
    assert old <= on_disk()
    now[0] += 2 * 86400 - 120  # within the grace period
    assert run(first, clock=clock).collected == []
    now[0] += 3600  # past it: one image per cycle (gc_max_per_cycle = 1)
    report = run(first, clock=clock)
    assert len(report.collected) == 1 and len(old & on_disk()) == 1
    report = run(first, clock=clock)
    assert len(report.collected) == 1 and not (old & on_disk())
    assert not {n[:-len(".undo")] for n in on_disk() if n.endswith(".undo")} & old  # their undo logs went too
    assert (backend.visible / "c:latest" / "after-empty").exists()  # referenced images stay


def test_gc_spares_images_of_an_entry_whose_listing_failed(tmp_path, monkeypatch, fixture_images):
    # The rule lives in the state, not in a backend: the local one shows it.
    from fixtures.push import FixturePusher
    from tests.registry_server import start_registry

    backend = Backend("local", tmp_path, monkeypatch)
    server = start_registry(tmp_path / "own-registry")
    now = [1_000_000.0]
    try:
        image = fixture_images["basic"]
        FixturePusher(server.host).push(type(image)(image.name, "team/app", image.blobs, image.manifests, ["1.0"],
                                                    image.layer_tars))
        wl = backend.watchlist(server.host, [f'source = "{server.host}/team/app"\ntag_pattern = "^1"\ndest = "app"'])
        run(wl, clock=lambda: now[0])
    finally:
        server.stop()
    os.unlink(backend.visible / "app:1.0")  # the image is unreferenced from now on …
    run(wl, clock=lambda: now[0])  # … and the registry is gone: the listing fails
    now[0] += 10 * 86400
    report = run(wl, clock=lambda: now[0])
    assert report.entry_failures and report.collected == []
    assert list((backend.visible / ".images").glob("*/*"))


def test_an_update_starts_from_the_previous_image_and_matches_a_full_apply(tmp_path, monkeypatch, fixture_registry,
                                                                           fixture_images):
    import reconciler.cycle.build as build_stage
    from tests.treecompare import describe_tree

    backend = Backend("local", tmp_path, monkeypatch)
    host = fixture_registry.host
    wl = backend.watchlist(host, [img(host, "chain-v1", '["latest"]', "v1")])
    run(wl)
    v1 = Path(os.path.realpath(backend.visible / "v1:latest"))
    v1_before = describe_tree(v1)
    assert not (backend.visible / ".chains").exists()  # a cold image is kept once
    assert (v1.parent / (v1.name + ".undo")).is_dir()  # with the undo log of its top layer
    wl = backend.watchlist(host, [img(host, "chain-v1", '["latest"]', "v1"), img(host, "chain-v2", '["latest"]', "v2")])
    applied = []
    real_apply = build_stage.apply_layer
    monkeypatch.setattr(build_stage, "apply_layer", lambda *a, **kw: applied.append(1) or real_apply(*a, **kw))
    run(wl)
    assert len(applied) == 1  # only v2's top layer
    v2 = Path(os.path.realpath(backend.visible / "v2:latest"))
    # v2 shares inodes with v1 ...
    assert os.stat(v2 / "usr/bin/tool").st_ino == os.stat(v1 / "usr/bin/tool").st_ino
    # ... yet is exactly what applying all of its layers gives
    assert_matches_full_apply(v2, fixture_images["chain-v2"], tmp_path / "scratch")
    assert (v2 / "etc/config").read_text() == "config rewritten in v2\n"
    assert (v2 / "etc/config.link").read_text() == "base config\n"
    # and v1, which shares those inodes, did not change at all
    assert describe_tree(v1) == v1_before
