"""Snapshots of applied layer chains, so an update applies only its new layers.

`<root>/.chains/<chain id hex>/` holds the tree of an image's first k layers
(OCI ChainID: the first layer's DiffID, then sha256("<previous chain id>
<next DiffID>")). A build whose layers start with a cached chain clones it
with hardlinks and applies only the rest. Sharing inodes is safe because the
applier never writes into an existing inode (it unlinks and recreates) and
every clone has directories of its own. Snapshots are written under a
temporary name and renamed into place; the least recently used beyond
`keep` are removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .base import remove_tree

log = logging.getLogger(__name__)

CHAINS_DIR = ".chains"


def chain_ids(diff_ids: Sequence[str]) -> List[str]:
    """The OCI ChainID of every prefix of a layer list."""
    out: List[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def clone_tree(src: Path, dst: Path) -> int:
    """Recreate `src` at `dst` (which must not exist): directories anew with the
    same owner, mode, xattrs and times; everything else hardlinked. Returns the
    number of entries. Never follows a symlink."""
    count = 0
    root_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.mkdir(dst, 0o700)
        dst_fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            count = _clone_dir(root_fd, dst_fd)
            _copy_dir_metadata(root_fd, dst_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(root_fd)
    return count


def _copy_dir_metadata(src_fd: int, dst_fd: int) -> None:
    st = os.fstat(src_fd)
    if os.geteuid() == 0:
        os.fchown(dst_fd, st.st_uid, st.st_gid)
    for name in os.listxattr(src_fd):
        os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _clone_dir(src_fd: int, dst_fd: int) -> int:
    count = 0
    with os.scandir(src_fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        count += 1
        if is_dir:
            os.mkdir(name, 0o700, dir_fd=dst_fd)
            sub_src = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
            sub_dst = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dst_fd)
            try:
                count += _clone_dir(sub_src, sub_dst)
                _copy_dir_metadata(sub_src, sub_dst)
            finally:
                os.close(sub_src)
                os.close(sub_dst)
        else:
            os.link(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    return count


class ChainCache:
    """Applied layer chains under `<root>/.chains`."""

    def __init__(self, root: Path, keep: int = 8) -> None:
        self.dir = root / CHAINS_DIR
        self.keep = keep

    def path(self, chain_id: str) -> Path:
        """Where the snapshot of `chain_id` lives (whether or not it exists)."""
        return self.dir / chain_id.split(":", 1)[1]

    def find(self, ids: Sequence[str], longer_than: int = 0) -> Tuple[int, Optional[Path]]:
        """(k, path) of the longest cached chain among `ids` (k layers) if
        longer than `longer_than`, else (0, None). Only reads."""
        for k in range(len(ids), longer_than, -1):
            path = self.path(ids[k - 1])
            if path.is_dir():
                return k, path
        return 0, None

    def longest_prefix(self, ids: Sequence[str]) -> Tuple[int, Optional[Path]]:
        """find(), marking the chain found as recently used."""
        k, path = self.find(ids)
        if path is not None:
            os.utime(path)
        return k, path

    def prepare(self, ids: Sequence[str], target: Path) -> int:
        """Put the longest cached chain among `ids` into the empty directory
        `target`; returns how many layers it holds (0: apply them all)."""
        count, snapshot = self.longest_prefix(ids)
        if snapshot is not None:
            target.rmdir()
            entries = clone_tree(snapshot, target)
            log.debug("cloned %d entries from layer chain snapshot %s", entries, snapshot.name[:12])
        return count

    def store(self, chain_id: str, tree: Path) -> None:
        """Snapshot `tree` as the chain `chain_id` (if not cached yet)."""
        final = self.path(chain_id)
        if final.exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-{secrets.token_hex(6)}"
        try:
            clone_tree(tree, tmp)
            os.rename(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        self.evict()

    def evict(self) -> None:
        """Keep the `keep` most recently used chains."""
        chains = sorted((p for p in self.dir.iterdir() if not p.name.startswith(".")),
                        key=lambda p: p.stat().st_mtime_ns, reverse=True) if self.dir.is_dir() else []
        for old in chains[self.keep:]:
            log.debug("dropping layer chain snapshot %s", old.name[:12])
            remove_tree(old)

    def clean(self) -> None:
        """Remove unfinished snapshots left by a crash."""
        if self.dir.is_dir():
            for leftover in self.dir.glob(".tmp-*"):
                remove_tree(leftover)
