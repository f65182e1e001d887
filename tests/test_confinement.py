"""Hostile images against the writes that come after the applier: the nested
catalog marker, the undo log of the top layer, `.singularity.d` and the bind points.
Each is planted as a symlink to a directory outside the repository; on both
backends nothing outside changes and the marker the publisher needs is a
regular file of its own (issue #11)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List

import pytest

from fixtures.build import build_image
from fixtures.push import FixturePusher
from tests.test_publishers import Backend, run
from tests.treecompare import describe_tree

OUTER_NAMES = (".cvmfscatalog", ".singularity.d", "singularity", ".run", ".exec", ".shell", ".test", "environment")
BIND_POINTS = ("dev", "proc", "sys", "tmp", "home", "root", "etc", "var", "cvmfs", "srv")
INNER_NAMES = ("env", "actions", "libs", "runscript", "startscript", "labels.json")
# Absolute, and relative with more `..` than any publish root is deep.
CLIMB = "../" * 40


def _links(names, victim: Path, relative: bool) -> List[dict]:
    target = (CLIMB + str(victim).lstrip("/")) if relative else str(victim)
    return [{"type": "symlink", "path": name, "target": f"{target}/{name.strip('.') or 'x'}"} for name in names] + \
        [{"type": "symlink", "path": f"{name}-dir", "target": target} for name in names[:1]]


def _hostile_images(victim: Path, version: str = "v1") -> Dict[str, object]:
    """Two images of two layers each: `outer` plants links at the top level,
    `inner` inside a real .singularity.d. Version v2 shares the first layer and
    changes the top one (it removes a planted link and writes through where one
    was), so it is built from v1 with v1's top layer undone."""
    def spec(name: str, first: List[dict]) -> dict:
        top = [{"type": "file", "path": "top", "content": name}]
        if version == "v2":
            top += [{"type": "whiteout", "path": "singularity"}, {"type": "file", "path": "environment-dir/x"}]
        return {"name": f"hostile-{name}", "tags": [version], "layers": [
            {"compression": "gzip", "entries": first},
            {"compression": "gzip", "entries": top}]}

    outer = _links(OUTER_NAMES, victim, relative=False) + \
        [{"type": "symlink", "path": name, "target": (CLIMB + str(victim).lstrip("/")) if i % 2 else str(victim)}
         for i, name in enumerate(BIND_POINTS)]
    inner = [{"type": "dir", "path": ".singularity.d"}] + \
        _links([f".singularity.d/{n}" for n in INNER_NAMES], victim, relative=True)
    return {"outer": build_image(spec("outer", outer)), "inner": build_image(spec("inner", inner))}


@pytest.fixture
def victim(tmp_path):
    """A directory outside the publish root that every hostile link points at."""
    path = tmp_path / "victim"
    path.mkdir()
    (path / "precious").write_text("precious\n")
    return path


@pytest.mark.parametrize("kind", ["local", "cvmfs"])
def test_hostile_links_never_redirect_a_publisher_write(kind, tmp_path, monkeypatch, fixture_registry, victim):
    backend = Backend(kind, tmp_path, monkeypatch)
    host = fixture_registry.host
    images = _hostile_images(victim)
    pusher = FixturePusher(host)
    for image in images.values():
        pusher.push(image)
    before = describe_tree(victim), os.stat(victim).st_mtime_ns

    def publish(tags: List[str]) -> Dict[str, Path]:
        """Publish `tags` of every image; the tree of each image's last tag."""
        wl = backend.watchlist(host, [f'source = "{host}/{image.repository}"\ntags = {json.dumps(tags)}\n'
                                      f'dest = "{name}"' for name, image in images.items()])
        report = run(wl)
        assert not report.failed, [o.reason for o in report.outcomes]
        assert (describe_tree(victim), os.stat(victim).st_mtime_ns) == before, "a write went outside the root"
        return {name: Path(os.path.realpath(backend.visible / f"{name}:{tags[-1]}")) for name in images}

    for name, tree in publish(["v1"]).items():
        assert (tree / "top").read_text() == name
        if kind == "cvmfs":
            marker = tree / ".cvmfscatalog"
            assert marker.is_file() and not marker.is_symlink() and marker.stat().st_size == 0
    # v2 of both: built from v1 through v1's undo log, with the planted links in the clone.
    for image in _hostile_images(victim, "v2").values():
        pusher.push(image)
    for name, tree in publish(["v1", "v2"]).items():
        assert (tree / "top").read_text() == name and (tree / "environment-dir" / "x").is_file()
        if name == "outer":  # the whited-out link is the Apptainer step's own again
            assert os.readlink(tree / "singularity") == ".singularity.d/runscript"
    # What the image planted stays the image's: the links are still links.
    outer = backend.visible / "outer:v1"
    assert (outer / ".singularity.d").is_symlink() and (outer / "etc").is_symlink()
    inner = backend.visible / "inner:v1"
    assert all((inner / ".singularity.d" / n).is_symlink() for n in INNER_NAMES)


@pytest.mark.parametrize("kind", ["local", "cvmfs"])
def test_variant_symlinks_are_refused_on_cvmfs_and_kept_elsewhere(kind, tmp_path, monkeypatch, fixture_registry):
    """CernVM-FS clients expand `$(VAR)` in a symlink's target each their own
    way (a variant symlink): there the image fails, saying which link and why;
    a local directory keeps the link as the image has it. Another image of
    the same run publishes on both."""
    backend = Backend(kind, tmp_path, monkeypatch)
    host = fixture_registry.host
    variant = build_image({"name": "variant-link", "tags": ["v1"], "layers": [{"compression": "gzip", "entries": [
        {"type": "dir", "path": "opt"},
        {"type": "symlink", "path": "opt/lib", "target": "/cvmfs/sw.example.org/$(CVMFS_ARCH)/lib"}]}]})
    plain = build_image({"name": "plain-link", "tags": ["v1"], "layers": [{"compression": "gzip", "entries": [
        {"type": "symlink", "path": "lib", "target": "/usr/lib"}]}]})
    pusher = FixturePusher(host)
    for image in (variant, plain):
        pusher.push(image)
    wl = backend.watchlist(host, [f'source = "{host}/{image.repository}"\ntags = ["v1"]\ndest = "{image.name}"'
                                  for image in (variant, plain)])
    report = run(wl)
    assert os.readlink(backend.visible / "plain-link:v1" / "lib") == "/usr/lib"
    failed = {o.name: o.reason for o in report.outcomes if o.reason}
    if kind == "local":
        assert not failed
        assert os.readlink(backend.visible / "variant-link:v1" / "opt" / "lib") == \
            "/cvmfs/sw.example.org/$(CVMFS_ARCH)/lib"
    else:
        assert len(failed) == 1 and "variant-link:v1" in next(iter(failed)), failed
        (reason,) = failed.values()
        assert "symlink /opt/lib -> '/cvmfs/sw.example.org/$(CVMFS_ARCH)/lib'" in reason
        assert "CernVM-FS would expand per client as a variant symlink" in reason
        assert not (backend.visible / "variant-link:v1").exists()


@pytest.mark.parametrize("kind", ["local", "cvmfs"])
def test_graft_markers_are_refused_on_cvmfs_and_kept_elsewhere(kind, tmp_path, monkeypatch, fixture_registry):
    """CernVM-FS's publish reads `.cvmfsgraft-<f>` as the hash and size of
    <f>'s content (a graft): published from an image, the file beside it would
    hold whatever content the marker names. There the image fails, saying
    which name and why; a local directory keeps the file."""
    backend = Backend(kind, tmp_path, monkeypatch)
    host = fixture_registry.host
    grafted = build_image({"name": "grafted", "tags": ["v1"], "layers": [{"compression": "gzip", "entries": [
        {"type": "dir", "path": "etc"},
        {"type": "file", "path": "etc/motd", "content": ""},
        {"type": "file", "path": "etc/.cvmfsgraft-motd", "content": "size=5\nchecksum=" + "0" * 40 + "\n"}]}]})
    FixturePusher(host).push(grafted)
    wl = backend.watchlist(host, [f'source = "{host}/{grafted.repository}"\ntags = ["v1"]\ndest = "grafted"'])
    report = run(wl)
    failed = {o.name: o.reason for o in report.outcomes if o.reason}
    if kind == "local":
        assert not failed
        assert (backend.visible / "grafted:v1" / "etc" / ".cvmfsgraft-motd").is_file()
    else:
        (reason,) = failed.values()
        assert "/etc/.cvmfsgraft-motd, a name CernVM-FS's publish reads as a graft marker" in reason
        assert not (backend.visible / "grafted:v1").exists()
