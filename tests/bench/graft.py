"""Grafted copies of published trees: a candidate, measured and not adopted,
for starting an update through a gateway lease from the published image
(`transaction -T` is not possible there: CernVM-FS 2.11.5 aborts on a template
with a lease path). See tests/bench/lease.py for the figures.

A plain copy of a published image costs more than building it cold: the
publish compresses and hashes every copied file again. CernVM-FS's graft
markers avoid that: an empty file `NAME` beside a `.cvmfsgraft-NAME` that
gives the size, content hash, compression and chunks of content already in
the repository's storage is published as that content, never read. The
published image's own files tell all of that through the client's magic
extended attributes (`user.hash`, `user.chunk_list`, `user.compression`).

`graft_copy` recreates a published tree as directories, symlinks and empty
placeholders, each tagged (an xattr holding a per-build random value and its
marker's text). Whatever an undo-log replay and new layers then do to the
tree, `seal` settles it before the publish: a placeholder still there (or
moved into an undo log, or hard-linked under another name) gets its marker;
a marker whose placeholder was replaced or removed goes, so a new file is
never published with old content; the tags are removed. (Built into the
publisher and tested on the real gateway on branch `lease`, commit cb800fb:
correct, but the update through a lease took 1.03-1.11x a cold build on the
bench image: the per-file copy through the client costs what the publish saves.)
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import Dict, List, Optional, Tuple

from reconciler.dirfd import DIR_FLAGS, acting_as_root

MARKER_PREFIX = ".cvmfsgraft-"
_TAG = "user.reconciler.graft"
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The client's own attributes: never an image's, never copied.
_MAGIC_PREFIX = "user."


def new_tag() -> bytes:
    """The random value that marks this build's placeholders."""
    return secrets.token_hex(16).encode()


def marker_text(fd: int, size: int) -> Optional[str]:
    """The graft marker naming the stored content of the published regular
    file open at `fd`, or None when it cannot be grafted (external data, or a
    client that does not answer)."""
    try:
        if os.getxattr(fd, "user.external_file").strip() == b"1":
            return None
        compression = os.getxattr(fd, "user.compression").decode().strip()
        chunks = [line.split(",") for line in os.getxattr(fd, "user.chunk_list").decode().split()[1:]]
    except OSError:
        return None
    try:
        checksum = os.getxattr(fd, "user.hash").decode().strip()
    except OSError as exc:
        if exc.errno != errno.ENODATA or len(chunks) < 2:
            return None
        checksum = "0" * 40  # a chunked file published without a bulk hash: the null hash, as it has
    if not chunks or any(len(c) != 3 for c in chunks):
        return None
    text = f"size={size}\nchecksum={checksum}\ncompression={compression}\n"
    if len(chunks) > 1:
        # A chunk's hash carries the suffix P ("partial") in the client's list; the marker takes the bare hash.
        text += (f"chunk_offsets={','.join(c[1] for c in chunks)}\n"
                 f"chunk_checksums={','.join(c[0].rstrip('P') for c in chunks)}\n")
    return text


def _image_xattrs(fd: int) -> List[Tuple[str, bytes]]:
    """The xattrs the image gave an entry (the client's magic ones are not listed, but never copy user.* guesses)."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise
    out = []
    for name in names:
        try:
            out.append((name, os.getxattr(fd, name)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return out


def _copy_meta(src_fd: int, dst_fd: int, st: os.stat_result, as_root: bool) -> None:
    for name, value in _image_xattrs(src_fd):
        os.setxattr(dst_fd, name, value)
    if as_root:
        os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_data(src_fd: int, dst_fd: int) -> None:
    while os.sendfile(dst_fd, src_fd, None, 1 << 24):
        pass


def _copy_file(src_dir: int, dst_dir: int, name: str, st: os.stat_result, tag: bytes, as_root: bool) -> bool:
    """A regular file: a tagged placeholder and its marker, or a plain copy
    where it cannot be grafted (empty, external). True when grafted."""
    src = os.open(name, _FILE_FLAGS, dir_fd=src_dir)
    try:
        text = marker_text(src, st.st_size) if st.st_size else None
        dst = os.open(name, _NEW_FLAGS, 0o600, dir_fd=dst_dir)
        try:
            if text is None:
                _copy_data(src, dst)
            else:
                os.setxattr(dst, _TAG, tag + b"\n" + text.encode())
            _copy_meta(src, dst, st, as_root)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if text is not None:
        _write_marker(dst_dir, name, text.encode())
    return text is not None


def _write_marker(dir_fd: int, name: str, text: bytes) -> None:
    fd = os.open(MARKER_PREFIX + name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        os.write(fd, text)
    finally:
        os.close(fd)


def graft_copy(src_fd: int, dst_fd: int, tag: bytes, privileged: Optional[bool] = None) -> int:
    """Recreate the content of the published directory `src_fd` in the empty
    directory `dst_fd` (inside the transaction's union mount), regular files
    as tagged placeholders with graft markers. Returns how many were grafted.
    Nothing is followed; iterative like treecopy.clone_into."""
    as_root = acting_as_root(privileged)
    grafted = 0
    # (source fd, destination fd, names still to copy, owned)
    stack: List[Tuple[int, int, List[str], bool]] = [(src_fd, dst_fd, sorted(os.listdir(src_fd)), False)]
    try:
        while stack:
            src, dst, names, owned = stack[-1]
            if not names:
                stack.pop()
                if owned:
                    try:
                        _copy_meta(src, dst, os.fstat(src), as_root)  # last: its entries changed its times
                    finally:
                        os.close(src)
                        os.close(dst)
                continue
            name = names.pop()
            st = os.stat(name, dir_fd=src, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=dst)
                sub_src = os.open(name, DIR_FLAGS, dir_fd=src)
                try:
                    sub_dst = os.open(name, DIR_FLAGS, dir_fd=dst)
                except BaseException:
                    os.close(sub_src)
                    raise
                stack.append((sub_src, sub_dst, [], True))
                stack[-1][2].extend(sorted(os.listdir(sub_src)))
            elif stat.S_ISREG(st.st_mode):
                grafted += _copy_file(src, dst, name, st, tag, as_root)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
                if as_root:
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
            elif as_root:  # device nodes and FIFOs
                os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dst)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
    finally:
        for src, dst, _, owned in stack:
            if owned:
                os.close(src)
                os.close(dst)
    return grafted


def _placeholder_text(dir_fd: int, name: str, tag: bytes) -> Optional[bytes]:
    """The marker text of the placeholder `name` in `dir_fd` (tagged by this
    build), or None: any other file."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        value = os.getxattr(fd, _TAG)
    except OSError:
        return None
    finally:
        os.close(fd)
    head, _, text = value.partition(b"\n")
    return text if head == tag else None


def _untag(dir_fd: int, name: str) -> None:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        os.removexattr(fd, _TAG)
    finally:
        os.close(fd)


def seal(root_fd: int, tag: bytes) -> int:
    """Settle the tree at `root_fd` for the publish: every placeholder of
    this build (tag `tag`) still there, under any name, has its marker; every
    other marker goes; the tags are removed. Returns the placeholders kept."""
    kept = 0
    # (dev, ino) -> an fd on a placeholder with several names (few): untagged last
    untag: Dict[Tuple[int, int], int] = {}
    stack: List[int] = [os.dup(root_fd)]
    try:
        while stack:
            dir_fd = stack.pop()
            try:
                placeholders = set()
                markers = []
                for entry in os.scandir(dir_fd):
                    if entry.name.startswith(MARKER_PREFIX):
                        markers.append(entry.name)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd))
                        continue
                    if not stat.S_ISREG(st.st_mode) or st.st_size:
                        continue
                    text = _placeholder_text(dir_fd, entry.name, tag)
                    if text is None:
                        continue
                    placeholders.add(entry.name)
                    kept += 1
                    _write_marker(dir_fd, entry.name, text)
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink == 1:
                        _untag(dir_fd, entry.name)
                    elif key not in untag:  # its other names are still to be met with the tag on
                        untag[key] = os.open(entry.name, _FILE_FLAGS, dir_fd=dir_fd)
                for marker in markers:
                    if marker[len(MARKER_PREFIX):] not in placeholders:
                        os.unlink(marker, dir_fd=dir_fd)  # its file was replaced or removed: publish what is there
            finally:
                os.close(dir_fd)
        for fd in untag.values():
            os.removexattr(fd, _TAG)
    finally:
        for fd in stack:
            os.close(fd)
        for fd in untag.values():
            os.close(fd)
    return kept
