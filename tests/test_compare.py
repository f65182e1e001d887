"""`reconcile compare`: the tree of a tag as an old tool published it against ours,
each difference with its likely reason (#20)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from reconciler.cli import main
from reconciler.compare import compare_trees, read_tree


def _tree(top: Path) -> Path:
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "motd").write_text("hello\n")
    (top / "bin").mkdir()
    (top / "bin" / "tool").write_text("#!/bin/sh\n")
    os.symlink("tool", top / "bin" / "sh")
    os.chmod(top / "etc" / "motd", 0o444)
    os.chmod(top / "bin" / "tool", 0o555)
    return top


def _xattrs_work(path: Path) -> bool:
    try:
        os.setxattr(path, "user.test", b"1")
    except OSError:
        return False
    return True


def test_same_trees_and_a_tag_link(tmp_path, capsys):
    ours = _tree(tmp_path / "ours")
    published = _tree(tmp_path / "published")
    os.symlink("published", tmp_path / "app:v1")
    assert main(["compare", str(tmp_path / "app:v1"), str(ours), "--hash"]) == 0
    assert capsys.readouterr().out.startswith("same: ")
    assert compare_trees(read_tree(published), read_tree(ours)) == []


def test_differences_with_their_reasons(tmp_path, capsys):
    ours = _tree(tmp_path / "ours")
    (ours / ".singularity.d").mkdir()
    (ours / ".singularity.d" / "runscript").write_text("#!/bin/sh\n")
    xattrs = _xattrs_work(ours / "etc" / "motd")
    published = tmp_path / "published"
    shutil.copytree(ours, published, symlinks=True, ignore=shutil.ignore_patterns(".singularity.d"))
    for path in published.rglob("*"):  # copytree copies xattrs: drop them as the old tool did
        for name in os.listxattr(path, follow_symlinks=False):
            os.removexattr(path, name, follow_symlinks=False)
    os.chmod(published / "etc" / "motd", 0o644)  # --fix-perms: owner rw
    os.chmod(published / "bin" / "tool", 0o755)  # and x on what anyone may run
    (published / "etc" / "extra").write_text("x\n")
    (published / "bin" / "sh").unlink()
    os.symlink("busybox", published / "bin" / "sh")
    assert main(["compare", str(published), str(ours)]) == 1
    out = capsys.readouterr().out
    unexplained = 2  # etc/extra, bin/sh's target
    assert "without a known reason" in out and f", {unexplained} without" in out, out
    assert "the old tool widened permissions (singularity build --fix-perms): 2" in out, out
    assert "added by a publisher for Apptainer or CernVM-FS: 2" in out, out  # the directory and its file
    assert "etc/extra: only in the published tree" in out
    assert "bin/sh: link to 'busybox' published, to 'tool' in ours" in out
    if xattrs:
        assert "extended attributes dropped" in out, out


def test_hash_finds_same_size_content(tmp_path, capsys):
    ours = _tree(tmp_path / "ours")
    published = _tree(tmp_path / "published")
    os.chmod(published / "etc" / "motd", 0o644)
    (published / "etc" / "motd").write_text("HELLO\n")
    os.chmod(published / "etc" / "motd", 0o444)
    assert main(["compare", str(published), str(ours)]) == 0  # sizes alike: not looked into without --hash
    assert main(["compare", str(published), str(ours), "--hash"]) == 1
    assert "etc/motd: content differs (same size)" in capsys.readouterr().out


def test_a_missing_tree_is_an_argument_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nothing"), str(tmp_path)]) == 2
    assert "is not a directory" in capsys.readouterr().err
