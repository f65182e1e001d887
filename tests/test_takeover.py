"""Taking over a repository in place (#20): one published by cvmfs-singularity-sync
(OSG) or by DUCC, made by those tools' rules (tests/old_layouts.py) on the local
backend and on the real CernVM-FS, its images pushed to the loopback registry
under the names its list gives.

What must hold: every tag path resolves to a complete image in every published
revision (on CernVM-FS each revision is recorded as it is published, by
tests/cvmfs_revisions); the old tool's links are replaced only by our complete
image, its unwatched links kept or collected as `[publish] foreign_tags` says;
its image directories go only once no link refers to them, after `gc_grace`,
at most `gc_max_per_cycle` a cycle; nothing else of it is touched."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from reconciler.publish import LocalPublisher
from reconciler.publish.base import remove_legacy_chains
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.watchlist import load_watchlist
from tests import cvmfs_real, revisions
from tests.old_layouts import OldTag, ducc_private_paths, make_ducc, make_osg, tag_view
from tests.test_publishers import Backend

ROOT_DIR = Path(__file__).resolve().parent.parent
REVISION_SHIM = Path(__file__).resolve().parent / "cvmfs_revisions"

OSG_WATCHED = "opensciencegrid/osgvo-el7:latest"
OSG_UNLISTED = "opensciencegrid/osgvo-el7:old"
DUCC_WATCHED = "registry.hub.docker.com/library/centos:centos7"
DUCC_UNLISTED = "registry.hub.docker.com/library/centos:old"
NEW_MOTD = "upper motd\n"  # the basic fixture's, as we build it


def _fake(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


@pytest.fixture(scope="module")
def listed(fixture_registry, fixture_images):
    """The basic fixture pushed under the names the old lists give; its layers and config."""
    from fixtures.push import FixturePusher

    basic = fixture_images["basic"]
    pusher = FixturePusher(fixture_registry.host)
    for repository, tag in (("opensciencegrid/osgvo-el7", "latest"), ("library/centos", "centos7")):
        pusher.push(type(basic)("basic", repository, basic.blobs, basic.manifests, [tag], basic.layer_tars))
    manifest = json.loads(basic.top.data)
    layers = tuple(layer["digest"] for layer in manifest["layers"])
    return fixture_registry.host, layers, manifest["config"]["digest"], sum(x["size"] for x in manifest["layers"])


class Site:
    """A backend holding an old repository, and the checks of its tag paths."""

    def __init__(self, kind: str, tmp_path: Path, monkeypatch) -> None:
        self.backend = Backend(kind, tmp_path, monkeypatch)
        self.kind = kind
        self.log = tmp_path / "revisions.jsonl"
        if kind == "cvmfs":
            monkeypatch.setenv("PATH", f"{REVISION_SHIM}{os.pathsep}{os.environ['PATH']}")
            monkeypatch.setenv("CVMFS_REVISION_LOG", str(self.log))
            monkeypatch.setenv("CVMFS_REVISION_PYTHON", sys.executable)
        self.root = self.backend.visible if kind == "local" else self.backend.mount()
        self.mount = str(self.root)

    def write_old(self, make: Callable[[Path, str], None]) -> None:
        """Write the old tool's shape, as one published revision (CernVM-FS)."""
        if self.kind == "local":
            self.root.mkdir(parents=True)
            make(self.root, self.mount)
            return
        cvmfs_real._run("transaction", self.backend.repo)
        make(self.root, self.mount)
        cvmfs_real._run("publish", self.backend.repo)
        with self.log.open("a") as out:
            out.write(json.dumps(revisions.snapshot(self.backend.repo)) + "\n")

    @property
    def visible(self) -> Path:
        return self.backend.visible

    def view(self):
        return tag_view(self.visible, self.mount)

    def watchlist(self, host: str, entries: List[str], **publish: str) -> Path:
        path = self.backend.watchlist(host, entries)
        extra = "".join(f"{key} = {value}\n" for key, value in publish.items())
        path.write_text(path.read_text().replace("[publish]\n", "[publish]\n" + extra, 1))
        return path

    def set(self, path: Path, key: str, value: str) -> None:
        lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{key} =")]
        path.write_text("\n".join(lines).replace("[publish]", f"[publish]\n{key} = {value}", 1) + "\n")

    def revisions(self) -> Dict[int, dict]:
        """Every published revision's tag links (CernVM-FS), or the tree as it is (local)."""
        if self.kind == "local":
            return {0: self.view()}
        recorded = revisions.read_log(self.log)
        assert recorded and revisions.consecutive(list(recorded)), f"revisions not all recorded: {sorted(recorded)}"
        assert max(recorded) == revisions.revision(self.backend.repo)
        return recorded

    def assert_always_valid(self, watched: List[str]) -> None:
        """In every revision: every link resolves to a complete image, every watched tag is there."""
        for number, links in self.revisions().items():
            broken = {path: link for path, link in links.items() if not link.complete}
            assert not broken, f"revision {number}: links to no complete image: {broken}"
            missing = [path for path in watched if path not in links]
            assert not missing, f"revision {number}: tag paths gone: {missing}"


def run(path: Path, **kw):
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01), **kw)
    try:
        return reconciler.run_once()
    finally:
        reconciler.close()


def entries(host: str, osg: bool, ducc: bool) -> List[str]:
    out = []
    if osg:
        out.append(f'source = "{host}/opensciencegrid/osgvo-el7"\ntags = ["latest"]\n'
                   'dest = "opensciencegrid/osgvo-el7"')
    if ducc:
        out.append(f'source = "{host}/library/centos"\ntags = ["centos7"]\n'
                   'dest = "registry.hub.docker.com/library/centos"')
    return out


def old_tags(layers, config, osg: bool, ducc: bool) -> Callable[[Path, str], None]:
    """The old repository: per layout a watched tag (the image we publish) and an unlisted one."""
    def make(root: Path, mount: str) -> None:
        if osg:
            make_osg(root, mount, [OldTag(OSG_WATCHED, layers, config),
                                   OldTag(OSG_UNLISTED, (_fake("osg-old"),), _fake("osg-old-config"))],
                     orphans=[(_fake("orphan"),)])
        if ducc:
            make_ducc(root, [OldTag(DUCC_WATCHED, layers, config),
                             OldTag(DUCC_UNLISTED, (_fake("ducc-old"),), _fake("ducc-old-config"))])
    return make


def foreign_dirs(root: Path) -> List[str]:
    return LocalPublisher(root).foreign_images()


@pytest.mark.parametrize("kind", ["local", "cvmfs"])
@pytest.mark.parametrize("layout_name", ["osg", "ducc"])
def test_takeover_plans_then_converges_keeping_every_tag_valid(kind, layout_name, tmp_path, monkeypatch, listed):
    host, layers, config, layer_bytes = listed
    osg = layout_name == "osg"
    watched, unlisted = (OSG_WATCHED, OSG_UNLISTED) if osg else (DUCC_WATCHED, DUCC_UNLISTED)
    site = Site(kind, tmp_path, monkeypatch)
    site.write_old(old_tags(layers, config, osg, not osg))
    before = site.view()
    old_dirs = set(foreign_dirs(site.visible))
    assert before[watched].complete and before[unlisted].complete and not before[watched].ours
    private = ducc_private_paths(site.visible)
    missing_links = (site.visible / ".missing_links.json").read_text() if osg else ""
    wl = site.watchlist(host, entries(host, osg, not osg), gc_grace='"1h"', gc_max_per_cycle="1")
    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731

    # The plan, changing nothing.
    reconciler = Reconciler(load_watchlist(wl), read_only=True)
    try:
        plan = reconciler.run_once()
    finally:
        reconciler.close()
    summary = plan.summary()
    assert f"replace   {watched}" in summary and f"keep      {unlisted}" in summary, summary
    assert "1 tags of an earlier tool replaced, 1 kept, 0 collected" in summary, summary
    assert "0 of its image directories removed" in summary, summary
    assert f"1 images to build, {layer_bytes} bytes to download" in summary, summary
    assert site.view() == before

    # Ours replaces the watched tag; the unlisted one stays; the old image waits for its grace period.
    report = run(wl, clock=clock)
    assert not report.failed, report.summary()
    after = site.view()
    assert after[watched].ours and after[watched].complete and after[watched].motd == NEW_MOTD
    assert after[unlisted] == before[unlisted]
    assert set(foreign_dirs(site.visible)) == old_dirs

    # Past the grace period: one old image directory a cycle, never one a link still refers to.
    now[0] += 7200
    reconciler = Reconciler(load_watchlist(wl), read_only=True, clock=clock)
    try:
        summary = reconciler.run_once().summary()
    finally:
        reconciler.close()
    assert "0 collected ([publish] foreign_tags = \"keep\"), 1 of its image directories removed" in summary, summary
    assert f"remove    {before[watched].target}" in summary or (osg and "remove    .images/" in summary), summary
    collected = []
    for _ in range(3 if osg else 2):
        cycle = run(wl, clock=clock).collected
        assert len(cycle) <= 1  # gc_max_per_cycle
        collected += cycle
    unlisted_dir = after[unlisted].target
    assert sorted(collected) == sorted(old_dirs - {unlisted_dir}) and len(collected) == (2 if osg else 1)
    assert foreign_dirs(site.visible) == [unlisted_dir]

    # Told to collect the old tool's unwatched tags: the link goes, then (after the grace period) its image.
    site.set(wl, "foreign_tags", '"collect"')
    report = run(wl, clock=clock)
    assert unlisted not in site.view() and foreign_dirs(site.visible) == [unlisted_dir]
    now[0] += 7200
    assert run(wl, clock=clock).collected == [unlisted_dir]
    assert foreign_dirs(site.visible) == []
    assert list(site.view()) == [watched] and site.view()[watched].motd == NEW_MOTD

    # Nothing else of the old tool's was touched; every revision served every tag.
    assert ducc_private_paths(site.visible) == private
    if osg:
        assert (site.visible / ".missing_links.json").read_text() == missing_links
    else:
        assert (site.visible / ".chains" / ".cvmfscatalog").exists()
    site.assert_always_valid([watched])
    site.backend.check()


PHASES = ["download", "apply", "set-tag", "remove-tag", "commit", "collect"]


@pytest.mark.parametrize("kind", ["local", "cvmfs"])
@pytest.mark.parametrize("phase", PHASES)
def test_takeover_killed_in_any_phase_keeps_every_tag_valid_in_every_revision(kind, phase, tmp_path, monkeypatch,
                                                                             listed):
    """Both old layouts in one repository (cheaper than two), collecting
    everything at once (gc_grace 0s): the run killed at `phase`, then runs
    until converged."""
    host, layers, config, _ = listed
    site = Site(kind, tmp_path, monkeypatch)
    site.write_old(old_tags(layers, config, True, True))
    private = ducc_private_paths(site.visible)
    wl = site.watchlist(host, entries(host, True, True), gc_grace='"0s"', foreign_tags='"collect"')
    if phase == "collect":  # the old images go in the second cycle, once unreferenced
        assert not run(wl).failed
    # Where in the phase it dies is drawn at random (each phase has this many calls
    # or layers in the killed cycle); TAKEOVER_KILL_SEED replays a failure.
    seed = int(os.environ.get("TAKEOVER_KILL_SEED") or random.randrange(1 << 30))
    where = random.Random(seed).randrange({"set-tag": 2, "remove-tag": 2, "collect": 5, "apply": 2}.get(phase, 1))
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR), "CRASH_AT": phase, "CRASH_AFTER_CALLS": str(where),
           "CRASH_AFTER_LAYERS": str(where)}
    crashed = subprocess.run([sys.executable, "-m", "tests.crash_runner", "--once", "--watchlist", str(wl)],
                             env=env, capture_output=True, cwd=tmp_path)
    print(f"killed in {phase} after {where} (TAKEOVER_KILL_SEED={seed})")  # shown with a failure
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    site.assert_always_valid([OSG_WATCHED, DUCC_WATCHED])
    for _ in range(3):  # until converged: the links go in one cycle, the images they served in the next
        report = run(wl)
        assert not report.failed, report.summary()
        site.assert_always_valid([OSG_WATCHED, DUCC_WATCHED])
        if not foreign_dirs(site.visible):
            break
    view = site.view()
    assert sorted(view) == sorted([OSG_WATCHED, DUCC_WATCHED])
    assert all(link.ours and link.motd == NEW_MOTD for link in view.values())
    assert foreign_dirs(site.visible) == []
    assert ducc_private_paths(site.visible) == private
    site.backend.check()


def test_a_ducc_chains_directory_is_never_taken_for_our_legacy_one(tmp_path):
    root = tmp_path / "repo"
    make_ducc(root, [OldTag(DUCC_WATCHED, (_fake("layer"),), _fake("config"))])
    private = ducc_private_paths(root)
    assert not remove_legacy_chains(root)
    assert ducc_private_paths(root) == private
    # Even alone (no .flat beside it), DUCC's two-level layout is not ours.
    for top in (".flat", ".layers", ".metadata"):
        subprocess.run(["rm", "-rf", str(root / top)], check=True)
    assert not remove_legacy_chains(root) and (root / ".chains").is_dir()
    # Ours (0.1, early 0.2): .chains/<64 hex>/ snapshots, removed.
    ours = tmp_path / "ours"
    (ours / ".chains" / ("ab" * 32) / "etc").mkdir(parents=True)
    assert remove_legacy_chains(ours) and not (ours / ".chains").exists()


def test_unwatched_old_tags_are_collected_only_when_told_and_never_on_a_partial_view(tmp_path):
    from reconciler.cycle.takeover import plan_takeover

    def watchlist(policy: str):
        path = tmp_path / "watchlist.toml"
        path.write_text(f'[publish]\nforeign_tags = "{policy}"\n' + "".join(
            f'[[image]]\nsource = "registry.example.org/{d}"\ntags = ["1"]\ndest = "{d}"\n' for d in ("a/x", "b/y")))
        return load_watchlist(path)

    links = {"a/x:old": ".flat/aa/" + "a" * 64, "b/y:old": ".flat/bb/" + "b" * 64, "c/z:old": ".flat/cc/" + "c" * 64}
    no_blobs = type("NoBlobs", (), {"has": lambda self, digest: False})()
    wl = watchlist("collect")
    # a/x could not be listed: its old tags stay; c/z is no entry's.
    plan = plan_takeover(wl, wl.images, True, [], {"a/x"}, links, no_blobs)
    assert plan.collected == ["b/y:old", "c/z:old"] and plan.kept == ["a/x:old"]
    # A cycle of b/y alone judges neither a/x's tags nor anything but its own and no entry's.
    plan = plan_takeover(wl, [e for e in wl.images if e.dest == "b/y"], False, [], set(), links, no_blobs)
    assert plan.collected == ["b/y:old", "c/z:old"] and plan.kept == ["a/x:old"]
    wl = watchlist("keep")
    plan = plan_takeover(wl, wl.images, True, [], set(), links, no_blobs)
    assert plan.collected == [] and plan.kept == sorted(links)
    # A watched old tag whose image failed in this plan waits, its old link kept.
    from reconciler.cycle.outcome import ImageOutcome

    entry = next(e for e in wl.images if e.dest == "a/x")
    failed = ImageOutcome(entry, "old", entry.platforms[0], "a/x:old")
    failed.failed("the registry refused (injected)")
    plan = plan_takeover(wl, wl.images, True, [failed], set(), links, no_blobs)
    assert plan.waiting == ["a/x:old"] and "a/x:old" not in plan.kept + plan.replaced + plan.collected
    assert "1 waiting for ours" in plan.lines()[0]
    with pytest.raises(Exception, match="foreign_tags"):
        watchlist("drop")


@pytest.mark.parametrize("kind", ["local", "cvmfs"])
def test_an_old_link_stays_while_our_image_fails_and_other_links_are_never_touched(kind, tmp_path, monkeypatch,
                                                                                   listed):
    from reconciler.cycle.build import BuildStage
    from reconciler.errors import LayerError

    host, layers, config, _ = listed
    site = Site(kind, tmp_path, monkeypatch)

    def make(root: Path, mount: str) -> None:
        old_tags(layers, config, True, False)(root, mount)
        # Links the old tool did not make into its images: an alias and a link out of the tree.
        os.symlink("osgvo-el7:latest", root / "opensciencegrid" / "alias")
        os.symlink("/usr/share", root / "opensciencegrid" / "elsewhere")

    site.write_old(make)
    before = site.view()
    wl = site.watchlist(host, entries(host, True, False), gc_grace='"0s"', foreign_tags='"collect"')

    def broken(self, image, build, **kw):
        raise LayerError("layer 1 of 2: corrupt (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(BuildStage, "apply_layers", broken)
        report = run(wl)
    assert report.failed and "corrupt (injected)" in report.summary()
    after = site.view()
    assert after[OSG_WATCHED] == before[OSG_WATCHED]  # the old link, its old image: still served
    assert OSG_UNLISTED not in after  # collected (not watched), in the same transaction
    run(wl)
    report = run(wl)
    assert not report.failed, report.summary()
    view = site.view()
    assert view[OSG_WATCHED].ours and view[OSG_WATCHED].motd == NEW_MOTD
    for name in ("alias", "elsewhere"):  # never ours to change, whatever foreign_tags says
        assert os.readlink(site.visible / "opensciencegrid" / name) == \
            ("osgvo-el7:latest" if name == "alias" else "/usr/share")
    assert foreign_dirs(site.visible) == []
    site.backend.check()


@pytest.mark.parametrize("kind, form", [("local", "osg"), ("local", "ducc"), ("cvmfs", "osg")])
def test_the_list_the_site_has_takes_over_the_repository_it_has(kind, form, tmp_path, monkeypatch, listed):
    """The old tool's own list ([[list]], its default dest) against the tree it
    published: the listed tag replaced at exactly its old path, the old
    tool's other tag kept (foreign_tags defaults to keep)."""
    host, layers, config, _ = listed
    osg = form == "osg"
    watched, unlisted = (OSG_WATCHED, OSG_UNLISTED) if osg else (DUCC_WATCHED, DUCC_UNLISTED)
    site = Site(kind, tmp_path, monkeypatch)
    site.write_old(old_tags(layers, config, osg, not osg))
    before = site.view()
    if osg:
        listing = tmp_path / "docker_images.txt"
        listing.write_text("# the site's list, as it is\nopensciencegrid/osgvo-el7:latest\n")
    else:
        listing = tmp_path / "recipe.yaml"
        listing.write_text("version: 1\nuser: cvmfsunpacker\ncvmfs_repo: 'unpacked.example.org'\ninput:\n"
                           "  - 'https://registry.hub.docker.com/library/centos:centos7'\n")
    then = 1_600_000_000  # written well before the cycle reads it
    os.utime(listing, (then, then))
    wl = tmp_path / "watchlist.toml"
    wl.write_text(site.backend.publish_section() + '[state]\ndir = "state"\n'
                  f'[registries."docker.io"]\naddress = "{host}"\ninsecure = true\n'
                  f'[[list]]\npath = "{listing.name}"\nformat = "{form}"\n')
    report = run(wl)
    assert not report.failed, report.summary()
    after = site.view()
    assert after[watched].ours and after[watched].motd == NEW_MOTD
    assert after[unlisted] == before[unlisted]
    site.assert_always_valid([watched])
    site.backend.check()
