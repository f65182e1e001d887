"""Tree removal and cloning through file descriptors."""

from __future__ import annotations

import os

from reconciler.publish.base import remove_tree
from reconciler.treecopy import clone_tree


def _deep(root, depth: int) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        os.mkdir(f"d{i % 10}", dir_fd=fd)
        child = os.open(f"d{i % 10}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o444, dir_fd=fd))
    os.chmod(fd, 0o555)  # read-only on the way down
    os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit_is_removed(tmp_path):
    """The applier allows 1024 directories; removal must not stop at Python's 1000 frames."""
    tree = tmp_path / "tree"
    tree.mkdir()
    _deep(tree, 1100)
    remove_tree(tree)
    assert os.listdir(tmp_path) == []


def test_remove_tree_takes_a_symlink_never_its_target(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("keep\n")
    os.symlink("target", tmp_path / "link")
    remove_tree(tmp_path / "link")
    remove_tree(tmp_path / "absent")
    assert sorted(os.listdir(tmp_path)) == ["target"] and (tmp_path / "target" / "keep").exists()


def test_clone_then_remove_leaves_the_source(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("x\n")
    clone_tree(src, tmp_path / "clone")
    remove_tree(tmp_path / "clone")
    assert (src / "a" / "b" / "f").read_text() == "x\n" and not (tmp_path / "clone").exists()


def test_a_tree_deeper_than_the_recursion_limit_is_cloned(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _deep(src, 1100)
    assert clone_tree(src, tmp_path / "clone") == 1101
    leaf = tmp_path / "clone" / os.path.join(*[f"d{i % 10}" for i in range(1100)]) / "leaf"
    assert leaf.exists() and os.stat(leaf.parent).st_mode & 0o777 == 0o555  # metadata copied, deepest too
    remove_tree(tmp_path / "clone")
    remove_tree(src)
