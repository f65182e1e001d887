"""Cloning and removing trees through file descriptors, never following a symlink.

A clone recreates directories (same owner, mode, xattrs and times) and
hardlinks everything else. Sharing inodes between an image and its clone is
safe because the layer applier never writes into an existing inode: it
unlinks and recreates. (On a CernVM-FS union mount a hardlink to a published
file copies it up first; a publish stores hard links as separate entries.)
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import List, Optional, Tuple, Union

from .dirfd import DIR_FLAGS, acting_as_root


def copy_dir_metadata(src_fd: int, dst_fd: int, privileged: Optional[bool] = None) -> None:
    """Owner (when `privileged`; None: when we are root), xattrs, mode and times of one directory onto another."""
    st = os.fstat(src_fd)
    if acting_as_root(privileged):
        os.fchown(dst_fd, st.st_uid, st.st_gid)
    for name in os.listxattr(src_fd):
        os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def clone_into(src_fd: int, dst_fd: int, privileged: Optional[bool] = None) -> int:
    """Clone the content of directory `src_fd` into the empty directory `dst_fd`
    (metadata of the directories inside included, not of `dst_fd` itself).
    Returns the number of entries. Iterative, like remove_at."""
    as_root = acting_as_root(privileged)
    count = 0
    # (source fd, destination fd, entries still to clone, fds ours to close) per directory
    stack: List[Tuple[int, int, List[Tuple[str, bool]], bool]] = [(src_fd, dst_fd, _entries(src_fd), False)]
    try:
        while stack:
            src, dst, entries, owned = stack[-1]
            if not entries:
                stack.pop()
                if owned:
                    try:
                        copy_dir_metadata(src, dst, as_root)  # last: its children changed its times
                    finally:
                        os.close(src)
                        os.close(dst)
                continue
            name, is_dir = entries.pop()
            count += 1
            if not is_dir:
                os.link(name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
                continue
            sub_src, sub_dst = _make_and_open(src, name, dst, name)
            stack.append((sub_src, sub_dst, [], True))  # on the stack first: closed if listing fails
            stack[-1][2].extend(_entries(sub_src))
    finally:
        for src, dst, _, owned in stack:
            if owned:
                os.close(src)
                os.close(dst)
    return count


def _make_and_open(src_dir_fd: int, src_name: str, dst_dir_fd: int, dst_name: str) -> Tuple[int, int]:
    """Make directory `dst_name` (u+rwx only until its metadata is copied) and
    open it and its source, never through a symlink."""
    os.mkdir(dst_name, 0o700, dir_fd=dst_dir_fd)
    src = os.open(src_name, DIR_FLAGS, dir_fd=src_dir_fd)
    try:
        return src, os.open(dst_name, DIR_FLAGS, dir_fd=dst_dir_fd)
    except BaseException:
        os.close(src)
        raise


def _entries(dir_fd: int) -> List[Tuple[str, bool]]:
    """A directory's entries, each with whether it is a real directory."""
    with os.scandir(dir_fd) as it:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]


def clone_entry(src_dir_fd: int, src_name: str, dst_dir_fd: int, dst_name: str,
                privileged: Optional[bool] = None) -> int:
    """Clone one entry (a whole directory, or a hardlink of anything else).
    Returns the number of entries cloned below it. `privileged`: owners are
    copied (None: when we are root)."""
    st = os.stat(src_name, dir_fd=src_dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.link(src_name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
        return 0
    src, dst = _make_and_open(src_dir_fd, src_name, dst_dir_fd, dst_name)
    try:
        as_root = acting_as_root(privileged)
        count = clone_into(src, dst, as_root)
        copy_dir_metadata(src, dst, as_root)
    finally:
        os.close(dst)
        os.close(src)
    return count


def clone_tree(src: Union[str, Path], dst: Union[str, Path], privileged: Optional[bool] = None) -> int:
    """Recreate the directory `src` at `dst` (which must not exist). Returns the
    number of entries. `privileged`: owners are copied (None: when we are root)."""
    src, dst = Path(src), Path(dst)
    parent_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # as os.mkdir(dst) would, parents are followed
    src_parent = os.open(src.parent, parent_flags)
    try:
        if not stat.S_ISDIR(os.stat(src.name, dir_fd=src_parent, follow_symlinks=False).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory (or a symlink to one)", str(src))
        dst_parent = os.open(dst.parent, parent_flags)
        try:
            return clone_entry(src_parent, src.name, dst_parent, dst.name, privileged)
        finally:
            os.close(dst_parent)
    finally:
        os.close(src_parent)


def remove_at(parent_fd: int, name: str, privileged: Optional[bool] = None) -> bool:
    """Remove the entry `name` of `parent_fd`, a whole subtree if it is a
    directory (made writable on the way unless `privileged`, None: when we are
    not root), never following a symlink. False when nothing is there.

    Iterative, one open directory per level: an image may be 1024 directories
    deep (the applier's limit), deeper than Python's recursion limit."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return True
    as_root = acting_as_root(privileged)
    # (parent fd, name, fd, entries still to remove) per directory being emptied
    stack: List[Tuple[int, str, int, List[str]]] = [(parent_fd, name, *_open_to_clear(parent_fd, name, st, as_root))]
    try:
        while stack:
            parent, dirname, fd, entries = stack[-1]
            if not entries:
                stack.pop()
                os.close(fd)
                os.rmdir(dirname, dir_fd=parent)
                continue
            entry = entries.pop()
            try:
                entry_st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(entry_st.st_mode):
                stack.append((fd, entry, *_open_to_clear(fd, entry, entry_st, as_root)))
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)
    return True


def _open_to_clear(parent_fd: int, name: str, st: os.stat_result, as_root: bool) -> Tuple[int, List[str]]:
    """An fd on the directory `name` (made u+rwx when not `as_root`) and its entries."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        if not as_root:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        with os.scandir(fd) as it:
            return fd, [e.name for e in it]
    except BaseException:
        os.close(fd)
        raise
