"""The layer applier against `umoci unpack` (the oracle): random small
stacks of layers of files, directories, symlinks (relative, upwards and
absolute), hardlinks, whiteouts and opaque markers, over a few names so that
entries collide. umoci takes about 20 ms a stack here: a few hundred fit
in the budget.

Where umoci unpacks, our tree must be the same; where umoci refuses a layer
we may refuse too (LayerError, HostileLayerError). Either way only our own
errors may come out of apply_layer.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import List, Optional

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from fixtures.build import BuiltImage, build_image
from reconciler.applier import apply_layer
from reconciler.applier.undo import UndoRecorder
from reconciler.errors import HostileLayerError, LayerError
from tests.fuzz.budget import budget
from tests.treecompare import UMOCI, describe_tree, umoci_unpack

needs_umoci = pytest.mark.skipif(UMOCI is None or os.geteuid() != 0,
                                 reason="the umoci comparison needs umoci, and root (ownership)")

NAMES = ["a", "b", "c"]
plain_path = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
# Now and then spelt as sloppy tars write names: absolute, dotted (one path for both appliers).
path = st.one_of(
    *[plain_path] * 12,
    plain_path.map(lambda p: "./" + p), plain_path.map(lambda p: "/" + p),
    st.builds(lambda p, q: f"{p}/./{q}", plain_path, plain_path),
)
# Names that climb out: umoci clamps them at the root, we refuse the layer (by design).
climbing_path = st.one_of(
    plain_path.map(lambda p: "../" + p), st.builds(lambda p, q: f"{p}/../{q}", plain_path, plain_path),
    st.sampled_from(["..", "a/../..", "/../a"]),
)
symlink_target = st.one_of(
    path, path.map(lambda p: "/" + p), path.map(lambda p: "../" + p), path.map(lambda p: "../../" + p),
    st.sampled_from([".", "..", "/", "../../..", "a/..", "/a/../b", "nowhere"]),
)
mode = st.sampled_from([0o755, 0o700, 0o644, 0o4755, 0o1777])


@st.composite
def entries(draw, names=path) -> List[dict]:
    """One entry (two for an opaque directory) of a layer."""
    kind = draw(st.sampled_from(["dir", "file", "file", "symlink", "symlink", "hardlink", "whiteout", "opaque"]))
    p = draw(names)
    if kind == "dir":
        return [{"type": "dir", "path": p, "mode": draw(mode) | 0o700}]
    if kind == "file":
        return [{"type": "file", "path": p, "content": draw(st.sampled_from(["", "x", "hello\n"])),
                 "mode": draw(mode) & 0o7777}]
    if kind == "symlink":
        return [{"type": "symlink", "path": p, "target": draw(symlink_target)}]
    if kind == "hardlink":
        return [{"type": "hardlink", "path": p, "target": draw(path)}]
    if kind == "whiteout":
        return [{"type": "whiteout", "path": p}]
    if draw(st.booleans()):
        return [{"type": "opaque", "path": ""}]
    # Image builders write the directory before its opaque marker. Alone, the
    # marker's directory is created by us (as by Docker and containerd, which
    # make every entry's parents) but not by umoci: not a difference worth a test.
    return [{"type": "dir", "path": p, "mode": draw(mode) | 0o700}, {"type": "opaque", "path": p}]


@st.composite
def stacks(draw, names=path) -> List[List[dict]]:
    """2 to 4 layers; hardlinks mostly name a file written before them, so
    that more stacks get past umoci to the comparison."""
    files: List[str] = []
    result = []
    for _ in range(draw(st.integers(2, 4))):
        layer: List[dict] = []
        for _ in range(draw(st.integers(1, 5))):
            for e in draw(entries(names)):
                if e["type"] == "hardlink" and files and draw(st.integers(0, 3)):
                    e["target"] = draw(st.sampled_from(files))
                if e["type"] == "file":
                    files.append(e["path"])
                layer.append(e)
        result.append(layer)
    return result


layers = stacks()


def image_of(stack: List[List[dict]]) -> BuiltImage:
    return build_image({"name": "fuzz", "layers": [{"compression": "gzip", "entries": e} for e in stack]})


def apply_ours(image: BuiltImage, root: Path, undo: Optional[Path] = None) -> Optional[LayerError]:
    """Apply every layer (the last one recording an undo log in `undo`, as an
    update does); the LayerError that stopped it, or None."""
    manifest = json.loads(image.top.data)
    blobs = {b.digest: b for b in image.blobs}
    config = json.loads(blobs[manifest["config"]["digest"]].data)
    root.mkdir()
    pairs = list(zip(manifest["layers"], config["rootfs"]["diff_ids"]))
    for number, (layer, diff_id) in enumerate(pairs, start=1):
        blob = io.BytesIO(blobs[layer["digest"]].data)
        try:
            if undo is not None and number == len(pairs):
                with UndoRecorder(undo) as recorder:
                    apply_layer(blob, layer["mediaType"], root, expected_diff_id=diff_id, observer=recorder)
            else:
                apply_layer(blob, layer["mediaType"], root, expected_diff_id=diff_id)
        except LayerError as exc:  # HostileLayerError is one
            return exc
    return None


def apply_umoci(image: BuiltImage, workdir: Path) -> Optional[Path]:
    """umoci's rootfs, or None when umoci refuses the image."""
    try:
        return umoci_unpack(image, workdir)
    except RuntimeError:
        return None


def compare(ours: Path, theirs: Path) -> None:
    ours_entries, ours_links = describe_tree(ours)
    theirs_entries, theirs_links = describe_tree(theirs)
    assert sorted(ours_entries) == sorted(theirs_entries)
    for p in sorted(ours_entries):
        a, b = ours_entries[p], theirs_entries[p]
        if a[0] == 0o040000:  # directories: the mtimes of implied directories differ by design
            a, b = a[:7], b[:7]
        assert a == b, p
    assert ours_links == theirs_links


@needs_umoci
@given(layers)
@budget(300)
@example([[{"type": "dir", "path": "d", "mode": 0o755}, {"type": "file", "path": "d/f", "content": "x"}],
          [{"type": "symlink", "path": "s", "target": "d"}],
          [{"type": "hardlink", "path": "d", "target": "s/f"}]])  # issue 19: a hardlink replacing its own parent
@example([[{"type": "file", "path": "a", "content": "x"}, {"type": "symlink", "path": "b", "target": "../../a"}],
          [{"type": "file", "path": "b/c", "content": "y"}]])  # a file through a symlink to a file
@example([[{"type": "dir", "path": "a", "mode": 0o755}, {"type": "file", "path": "a/b", "content": "x"}],
          [{"type": "dir", "path": "a", "mode": 0o755}, {"type": "opaque", "path": "a"},
           {"type": "file", "path": "a/c", "content": "y"}],
          [{"type": "whiteout", "path": "a/c"}, {"type": "hardlink", "path": "c", "target": "a/b"}]])
def test_layer_stacks_match_umoci(stack: List[List[dict]]) -> None:
    image = image_of(stack)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        (work / "umoci").mkdir()
        theirs = apply_umoci(image, work / "umoci")
        error = apply_ours(image, work / "ours")
        event(f"umoci {'refused' if theirs is None else 'unpacked'}, we {'refused' if error else 'applied'}")
        if theirs is None:
            return  # umoci refused: refusing too (a LayerError) or applying are both answers
        assert error is None, f"umoci unpacks this stack, we refused it: {error}"
        compare(work / "ours", theirs)


@given(stacks(st.one_of(climbing_path, climbing_path, path)).filter(
    lambda stack: any(".." in e["path"].split("/") for layer in stack for e in layer)))
@budget(100)
@example([[{"type": "dir", "path": "a", "mode": 0o755}], [{"type": "dir", "path": "../a/a/a", "mode": 0o755}]])
def test_names_that_climb_out_are_refused(stack: List[List[dict]]) -> None:
    """umoci clamps `..` at the root (it unpacked the example above); we refuse
    such a layer as hostile, by design, or stop at an earlier LayerError."""
    image = image_of(stack)
    with tempfile.TemporaryDirectory() as directory:
        error = apply_ours(image, Path(directory) / "ours")
    assert isinstance(error, LayerError), "a name climbing out with '..' was applied"
    event(type(error).__name__)


HARDLINK_REPLACING_ITS_PARENT = [
    [{"type": "dir", "path": "d", "mode": 0o755}, {"type": "file", "path": "d/f", "content": "x"}],
    [{"type": "symlink", "path": "s", "target": "d"}],
    [{"type": "hardlink", "path": "d", "target": "s/f"}],
]


@given(layers)
@budget(200)
@example(HARDLINK_REPLACING_ITS_PARENT)  # issue 19: a raw FileNotFoundError below, applied on top
def test_the_top_layer_with_an_undo_log_is_applied_like_any_other(stack: List[List[dict]]) -> None:
    """Recording an undo log (an update's top layer) changes nothing in the
    outcome: the same tree, or a refusal of the same kind."""
    image = image_of(stack)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        plain = apply_ours(image, work / "plain")
        logged = apply_ours(image, work / "logged", undo=work / "undo")
        assert type(plain) is type(logged), (plain, logged)
        if plain is None:
            assert describe_tree(work / "plain") == describe_tree(work / "logged")


def test_a_hardlink_replacing_its_parent_through_a_symlink_is_hostile_in_any_position(tmp_path: Path) -> None:
    image = image_of(HARDLINK_REPLACING_ITS_PARENT)
    for undo in (None, tmp_path / "undo"):
        root = tmp_path / ("logged" if undo else "plain")
        error = apply_ours(image, root, undo)
        assert isinstance(error, HostileLayerError) and "/d" in str(error), error
