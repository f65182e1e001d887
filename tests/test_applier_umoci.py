"""Our merged root filesystem against `umoci unpack` (the oracle) for every non-hostile fixture."""

from __future__ import annotations

import os
from typing import Dict, List

import pytest

from fixtures.build import build_all
from tests.treecompare import UMOCI, apply_image, describe_tree, umoci_unpack

IMAGES = build_all()
# umoci 0.4 reads neither zstd nor Docker media types: compare those with the
# OCI gzip image of the same entries.
ORACLE = {"basic-zstd": "basic", "basic-docker": "basic"}
SINGLE_PLATFORM = sorted(n for n, i in IMAGES.items() if len(i.layer_tars) == 1 and not n.startswith("broken"))

pytestmark = [
    pytest.mark.skipif(UMOCI is None, reason="umoci is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci comparison needs root (ownership, devices)"),
]


@pytest.fixture(scope="module")
def umoci_trees(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = describe_tree(umoci_unpack(IMAGES[name], tmp_path_factory.mktemp(f"umoci-{name}")))
        return cache[name]
    return get


@pytest.mark.parametrize("name", SINGLE_PLATFORM)
def test_merged_tree_matches_umoci(name, tmp_path, umoci_trees):
    ours_root = tmp_path / "ours"
    apply_image(IMAGES[name], ours_root)
    ours_entries, ours_links = describe_tree(ours_root)
    theirs_entries, theirs_links = umoci_trees(ORACLE.get(name, name))
    assert ours_entries.keys() == theirs_entries.keys()
    for path in sorted(ours_entries):
        kind = ours_entries[path][0]
        ours, theirs = ours_entries[path], theirs_entries[path]
        if kind == 0o040000:  # directories: mtimes of implied dirs differ by design
            ours, theirs = ours[:7], theirs[:7]
        assert ours == theirs, path
    assert ours_links == theirs_links


def _F(path: str) -> dict:
    return {"type": "file", "path": path, "content": f"{path}\n"}


def _D(path: str) -> dict:
    return {"type": "dir", "path": path}


def _L(path: str, target: str) -> dict:
    return {"type": "symlink", "path": path, "target": target}


def _W(path: str) -> dict:
    return {"type": "whiteout", "path": path}


def _bomb(links: int, files: int, pairs: int) -> List[dict]:
    chain = "/".join(["a", ".."] * pairs + ["a"])
    return ([_D("a")] + [_L(f"l{i}", chain) for i in range(links)]
            + [_F(f"l{i % links}/f{i}") for i in range(files)])


# Resolution shapes: resolutions kept from one entry to the next must be
# forgotten when the layer changes anything they went through (layers as lists of entries).
RESOLUTION_SHAPES: Dict[str, List[List[dict]]] = {
    # the symlink-resolution bomb, small: every file goes through a long `a/..` chain
    "bomb": [_bomb(links=10, files=60, pairs=200)],
    # the same link path, removed and made again with another target
    "relinked": [[_D("a/b"), _D("c"), _L("s", "a/b"), _F("s/f1"), _W("s"), _L("s", "c"), _F("s/f2")]],
    # a directory the link went through is replaced by a symlink elsewhere
    "dir-swapped": [[_D("a/b"), _D("c/b"), _L("s", "a/b"), _F("s/f1"), _W("a"), _L("a", "c"), _F("s/f2")]],
    # links to links, and the directory at the end replaced by a symlink
    "chain-end-swapped": [[_D("d/e"), _D("o/e"), _L("s1", "s2"), _L("s2", "/d/e/../e"), _F("s1/f1"),
                           _L("d", "o"), _F("s1/f2"), _F("s2/f3")]],
    # a lower link removed by an opaque directory, made again with another target
    "opaque-relinked": [[_D("x"), _D("a"), _D("b"), _L("x/s", "../a")],
                        [_F("x/s/f1"), {"type": "opaque", "path": "x"}, _L("x/s", "../b"), _F("x/s/f2")]],
    # `..` steps over several levels, through a symlinked directory
    "zigzag": [[_D("p/q/r"), _D("p/q2/r"), _L("p/sq", "q"), _L("z", "p/sq/r/../../q/r/../../sq/r/../r"),
                _F("z/f1"), _F("p/q/r/f2"), _F("z/f3"), _W("p/sq"), _L("p/sq", "/p/q2"), _F("z/f4")]],
    # absolute targets climbing above the root and back
    "absolute-climb": [[_D("x/y"), _L("x/y/up", "/../../x/../x/y"), _F("x/y/up/up/f1"), _L("t", "x/y/up/up/up"),
                        _F("t/f2"), _W("x/y/up"), _D("x/y/up"), _F("t/f3")]],
    # a directory of the last path walked (no link on it) replaced by a link
    "plain-swapped": [[_D("a/b/c"), _D("x/b/c"), _F("a/b/c/f1"), _L("a", "x"), _F("a/b/c/f2"), _F("a/b/f3")]],
    # a walked subtree removed and made again (inode numbers come back for other directories)
    "subtree-remade": [[_D("a/b/c/d"), _L("a/b/c/l", "d"), _F("a/b/c/l/f1"), _F("a"), _D("a"), _D("a/b/c"), _D("a/b/c/l"),
                        _F("a/b/c/l/f2"), _F("a/b/c/d/f3")]],
    # a later layer starts with no resolutions kept
    "next-layer": [[_D("a"), _D("b"), _L("s", "a"), _F("s/f1")], [_W("s"), _L("s", "b"), _F("s/f2")]],
}


@pytest.mark.parametrize("shape", sorted(RESOLUTION_SHAPES))
def test_resolution_shapes_match_umoci(shape, tmp_path):
    """Trees built through kept symlink resolutions equal umoci's, however
    the layer changes the paths those resolutions went through."""
    from fixtures.build import build_image

    image = build_image({"name": f"resolution-{shape}",
                         "layers": [{"entries": entries} for entries in RESOLUTION_SHAPES[shape]]})
    ours_root = tmp_path / "ours"
    apply_image(image, ours_root)
    ours_entries, ours_links = describe_tree(ours_root)
    theirs_entries, theirs_links = describe_tree(umoci_unpack(image, tmp_path / "umoci"))
    assert sorted(ours_entries) == sorted(theirs_entries)
    for path in sorted(ours_entries):
        ours, theirs = ours_entries[path], theirs_entries[path]
        if ours[0] == 0o040000:
            ours, theirs = ours[:7], theirs[:7]
        assert ours == theirs, path
    assert ours_links == theirs_links
