"""The undo log of a top layer: replayed on a clone of an image, it gives back
exactly the tree of the layers below (every type change, whiteout, opaque
directory, hard link, metadata change and the Apptainer files included), and
an update built on it equals a cold build of the new image."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from fixtures.build import build_all, build_tar
from reconciler.applier import apply_layer
from reconciler.applier.undo import UndoError, UndoRecorder, undo_changes
from reconciler.apptainer import make_apptainer_ready
from reconciler.treecopy import clone_tree
from tests.treecompare import describe_tree

TAR = "application/vnd.oci.image.layer.v1.tar"


def F(path: str, content: str = "upper\n", **kw) -> dict:
    return {"type": "file", "path": path, "content": content, **kw}


def D(path: str, **kw) -> dict:
    return {"type": "dir", "path": path, **kw}


def L(path: str, target: str) -> dict:
    return {"type": "symlink", "path": path, "target": target}


def H(path: str, target: str) -> dict:
    return {"type": "hardlink", "path": path, "target": target}


def W(path: str) -> dict:
    return {"type": "whiteout", "path": path}


def O(path: str) -> dict:  # noqa: E743
    return {"type": "opaque", "path": path}


# Lower layers: the `edges` fixture (type changes, hard links, symlinked
# directories, opaque directories, odd names) plus one of our own.
LOWER_EXTRA = [D("top/keep", mode=0o750, mtime=1_600_000_000), F("top/keep/f", "keep\n"),
               D("top/meta", mode=0o700, uid=5, gid=6, xattrs={"user.note": "lower"}), F("top/meta/child", "c\n"),
               F("top/file", "lower\n", mode=0o4755), L("top/link", "file"), H("top/hard", "top/file"),
               D("top/tree/a/b"), F("top/tree/a/b/deep", "deep\n"), {"type": "fifo", "path": "top/fifo"},
               F("top/x", "lower x\n", xattrs={"user.k": "v"})]

TOPS: Dict[str, List[dict]] = {
    "empty": [],
    "modify-files": [F("top/file", "changed\n"), F("top/x", "new x\n"), F("dup", "third\n")],
    "new-nested": [F("brand/new/dirs/file"), D("top/keep/newdir"), F("top/keep/newdir/g")],
    "whiteouts": [W("top/file"), W("top/tree"), W("gone"), W("top/link")],
    "opaque": [O("top/tree"), F("top/tree/only"), O("meta")],
    "type-changes": [F("top/tree", "now a file\n"), D("top/file"), F("top/file/inside"), L("top/keep", "/etc"),
                     D("top/link")],
    "metadata": [D("top/meta", mode=0o755, uid=1, gid=1, xattrs={"user.note": "upper"}),
                 D("top/keep", mode=0o700, mtime=1_700_000_000), D(".", mode=0o700)],
    "hardlinks": [H("top/newhard", "top/file"), H("data/b", "top/x"), F("top/file", "replaced\n")],
    "replace-then-remove": [F("top/x", "once\n"), W("top/x"), D("top/tree/a/b/c"), W("top/tree/a")],
    "everything": [O(""), F("alone")],
    "apptainer-names": [F(".singularity.d/runscript", "#!/bin/sh\necho mine\n", mode=0o755), D("proc"),
                        L("environment", "/dev/null")],
}


def _apply(root: Path, tars: List[bytes], observer=None, observe_last: bool = False) -> None:
    for i, tar in enumerate(tars):
        last = i == len(tars) - 1
        apply_layer(io.BytesIO(tar), TAR, root, observer=observer if (observe_last and last) else None)


def _lower_tars() -> List[bytes]:
    edges = build_all()["edges"]
    return list(edges.layer_tars[0]) + [build_tar(LOWER_EXTRA)]


def snapshot(root: Path) -> Tuple[dict, set, Dict[bytes, Tuple[int, int]]]:
    """Entries, hard link groups and every directory's (mode, mtime)."""
    entries, links = describe_tree(root)
    dirs = {}
    base = os.fsencode(root)
    for dirpath, dirnames, _ in os.walk(base):
        for name in dirnames + [b""]:
            full = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                dirs[os.path.relpath(full, base)] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return entries, links, dirs


@pytest.fixture(scope="module")
def lower() -> Tuple[List[bytes], None]:
    """The lower layers."""
    return _lower_tars(), None


def build_with_undo(tmp: Path, lower_tars: List[bytes], top: List[dict], env=("A=1",)):
    """An image (lower layers + `top` + the Apptainer files), the undo log of
    everything after the lower layers, and a snapshot of the lower tree (the
    same one: implied directories carry the time they were made)."""
    image, undo = tmp / "image", tmp / "image.undo"
    image.mkdir()
    _apply(image, lower_tars)
    below = snapshot(image)
    with UndoRecorder(undo) as recorder:
        apply_layer(io.BytesIO(build_tar(top)), TAR, image, observer=recorder)
        make_apptainer_ready(image, env=list(env), cmd=["/bin/sh"], observer=recorder)
    return image, undo, below


@pytest.mark.skipif(os.geteuid() != 0, reason="exact trees (ownership, devices) need root")
@pytest.mark.parametrize("name", sorted(TOPS))
def test_undo_gives_back_the_lower_tree_exactly(name, tmp_path, lower):
    lower_tars, _ = lower
    image, undo, below = build_with_undo(tmp_path, lower_tars, TOPS[name])
    image_before = snapshot(image)
    for attempt in ("first", "again"):  # the log is only read: it replays on any clone
        clone = tmp_path / f"clone-{attempt}"
        clone_tree(image, clone)
        undo_changes(clone, undo)
        got = snapshot(clone)
        assert got[0] == below[0]
        assert got[1] == below[1]
        assert got[2] == below[2]
    assert snapshot(image) == image_before, "the image itself changed"


@pytest.mark.skipif(os.geteuid() != 0, reason="exact trees (ownership, devices) need root")
@pytest.mark.parametrize("old, new", [("modify-files", "whiteouts"), ("opaque", "type-changes"),
                                      ("type-changes", "opaque"), ("everything", "hardlinks"),
                                      ("metadata", "metadata"), ("empty", "replace-then-remove")])
def test_an_update_through_undo_equals_a_cold_build(old, new, tmp_path, lower):
    lower_tars, _ = lower
    image, undo, _ = build_with_undo(tmp_path, lower_tars, TOPS[old], env=("A=1",))
    update = tmp_path / "update"
    clone_tree(image, update)
    undo_changes(update, undo)
    apply_layer(io.BytesIO(build_tar(TOPS[new])), TAR, update)
    make_apptainer_ready(update, env=["B=2"], cmd=["/bin/true"])
    cold = tmp_path / "cold"
    cold.mkdir()
    _apply(cold, lower_tars + [build_tar(TOPS[new])])
    make_apptainer_ready(cold, env=["B=2"], cmd=["/bin/true"])
    ours, theirs = snapshot(update), snapshot(cold)
    assert _generated_times_blanked(ours[0]) == _generated_times_blanked(theirs[0])
    assert ours[1] == theirs[1]
    # Directory times: equal but where a step set "now" (implied directories, Apptainer's)
    now_set = {p for p in theirs[2] if abs(theirs[2][p][1] - ours[2].get(p, (0, 0))[1]) > 0}
    assert {p: m for p, (m, _) in ours[2].items()} == {p: m for p, (m, _) in theirs[2].items()}
    assert all(theirs[2][p][1] > 1_750_000_000 * 10**9 for p in now_set), sorted(now_set)


def _generated_times_blanked(entries: dict) -> dict:
    """The files the Apptainer step writes carry the time they were written."""
    return {p: (e[:7] + (None,) + e[8:]) if p.startswith(b".singularity.d") else e for p, e in entries.items()}


def test_a_tree_that_does_not_match_its_log_is_refused(tmp_path, lower):
    import shutil

    lower_tars, _ = lower
    image, undo, _ = build_with_undo(tmp_path, lower_tars, TOPS["modify-files"])
    clone = tmp_path / "clone"
    clone_tree(image, clone)
    shutil.rmtree(clone / "top")
    os.symlink("/tmp", clone / "top")  # a symlink where the log walks (to top/file)
    with pytest.raises(UndoError, match="does not match the undo log"):
        undo_changes(clone, undo)


# Found by fuzzing the replay against cold builds (a review of the undo log):
REVIEW_TOPS = {
    # a directory emptied through an opaque marker below it keeps its own time
    "opaque-below": [F("top/tree/a/new"), W("top/tree")],
    "opaque-root-below": [F("top/tree/a/b/new"), O("")],
    # a directory the layer made, then replaced by a file, a link or a hardlink
    "own-dir-replaced": [D("n"), F("n/f"), F("n")],
    "own-dir-symlinked": [D("b"), L("c", "b"), F("c/c"), L("b", "top")],
    "own-dir-hardlinked": [D("h"), F("h/x"), H("h", "top/x")],
}


@pytest.mark.skipif(os.geteuid() != 0, reason="exact trees (ownership, devices) need root")
@pytest.mark.parametrize("name", sorted(REVIEW_TOPS))
def test_undo_of_what_the_review_found(name, tmp_path, lower):
    lower_tars, _ = lower
    image, undo, below = build_with_undo(tmp_path, lower_tars, REVIEW_TOPS[name])
    clone = tmp_path / "clone"
    clone_tree(image, clone)
    undo_changes(clone, undo)
    assert snapshot(clone) == below


def test_a_hardlink_over_its_own_parent_is_refused_either_way(tmp_path):
    """Cold, it would remove its own target first; under an undo log the target
    would survive in the log: both refuse it the same way."""
    from reconciler.errors import LayerError

    for recorded in (False, True):
        root = tmp_path / f"root-{recorded}"
        root.mkdir()
        apply_layer(io.BytesIO(build_tar([D("d"), F("d/f")])), TAR, root)
        with UndoRecorder(tmp_path / f"undo-{recorded}") as recorder:
            with pytest.raises(LayerError, match="points inside itself"):
                apply_layer(io.BytesIO(build_tar([H("d", "d/f")])), TAR, root,
                            observer=recorder if recorded else None)


@pytest.mark.skipif(os.geteuid() != 0, reason="exact trees (ownership, devices) need root")
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_the_journal_read_backwards_in_small_chunks_gives_the_same_tree(chunk, tmp_path, lower, monkeypatch):
    """Records split across chunk boundaries anywhere (a chunk of 1 byte
    included) replay exactly as a journal read at once."""
    import reconciler.applier.undo as undo_module

    monkeypatch.setattr(undo_module, "_JOURNAL_CHUNK", chunk)
    lower_tars, _ = lower
    image, undo, below = build_with_undo(tmp_path, lower_tars, TOPS["type-changes"] + TOPS["metadata"])
    clone = tmp_path / "clone"
    clone_tree(image, clone)
    undo_changes(clone, undo)
    assert snapshot(clone) == below


def test_a_truncated_journal_is_refused(tmp_path, lower):
    lower_tars, _ = lower
    image, undo, _ = build_with_undo(tmp_path, lower_tars, TOPS["modify-files"])
    journal = undo / "journal"
    data = journal.read_bytes()
    journal.write_bytes(data[:len(data) // 2])  # a record cut in the middle
    clone = tmp_path / "clone"
    clone_tree(image, clone)
    with pytest.raises(UndoError, match="is corrupt"):
        undo_changes(clone, undo)


def test_replay_memory_does_not_grow_with_the_journal(tmp_path):
    """The journal is streamed: replaying 20,000 records allocates no more
    than a small fixed amount (a journal loaded whole costs megabytes)."""
    import tracemalloc

    root = tmp_path / "tree"
    root.mkdir()
    files = 20_000
    apply_layer(io.BytesIO(build_tar([D("d")])), TAR, root)
    with UndoRecorder(tmp_path / "undo") as recorder:
        apply_layer(io.BytesIO(build_tar([F(f"d/f{i:06d}-" + "x" * 100, "") for i in range(files)])), TAR, root,
                    observer=recorder)
    assert sum(1 for _ in open(tmp_path / "undo" / "journal", "rb")) == files + 1
    clone = tmp_path / "clone"
    clone_tree(root, clone)
    tracemalloc.start()
    try:
        assert undo_changes(clone, tmp_path / "undo") == files + 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert os.listdir(clone / "d") == []
    assert peak < 1 << 20, f"replay peaked at {peak / 2**20:.1f} MiB"
