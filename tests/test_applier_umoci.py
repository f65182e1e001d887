"""Our merged root filesystem against `umoci unpack` (the oracle) for every non-hostile fixture."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from fixtures.build import BuiltImage, build_all
from reconciler.applier import apply_layer
from tests.treecompare import UMOCI, describe_tree, umoci_unpack

IMAGES = build_all()
# umoci 0.4 reads neither zstd nor Docker media types: compare those with the
# OCI gzip image of the same entries.
ORACLE = {"basic-zstd": "basic", "basic-docker": "basic"}
SINGLE_PLATFORM = sorted(n for n, i in IMAGES.items() if len(i.layer_tars) == 1 and not n.startswith("broken"))

pytestmark = [
    pytest.mark.skipif(UMOCI is None, reason="umoci is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci comparison needs root (ownership, devices)"),
]


def apply_image(image: BuiltImage, root: Path) -> None:
    manifest = json.loads(image.top.data)
    blobs = {b.digest: b for b in image.blobs}
    config = json.loads(blobs[manifest["config"]["digest"]].data)
    root.mkdir()
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        apply_layer(io.BytesIO(blobs[layer["digest"]].data), layer["mediaType"], root, expected_diff_id=diff_id)


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
