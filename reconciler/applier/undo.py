"""An undo log of the changes made to a tree, and its replay.

While an image's top layer is applied (and the Apptainer files and markers
written after it), `UndoRecorder` is told of every change to what was there
before (see `ChangeObserver`) and keeps, in a directory of its own beside the
image, what is needed to go back: what stood at a path before its first change
(the entry itself, renamed away instead of deleted, or a clone of it), that
nothing stood there, a directory's old owner, mode, xattrs and times.

`undo_changes` replays such a log on a clone of the image, newest change first,
and so turns the clone back into the tree of the layers below the top one. An
update that changes only the top layer then costs that layer: clone the
previous image, undo its top, apply the new top. Each step of the replay
replaces the whole subtree at a path with what was there just before that
change, so the reverse order undoes nested changes correctly.

Paths are real paths (the applier resolved the image's symlinks); the replay
walks them with O_NOFOLLOW and stops with UndoError where the tree is not the
one the log was written for.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional

from ..confined import ConfinedTree
from ..dirfd import DIR_FLAGS, acting_as_root
from ..errors import LayerError
from ..treecopy import clone_entry, remove_at
from .dirtimes import TimesLog
from .pathset import PathKey, PathSet

# One journal record, as JSON decodes it (checked where it is used: a malformed one is UndoError).
_Record = Dict[str, Any]
JOURNAL = "journal"
SAVED = "saved"


class UndoError(LayerError):
    """The tree does not match its undo log (or the log is unreadable)."""


def _text(path: PathKey) -> str:
    return b"/".join(path).decode("utf-8", "surrogateescape")


def _parts(text: str) -> PathKey:
    return tuple(text.encode("utf-8", "surrogateescape").split(b"/")) if text else ()


# Set by the host (SELinux labels), not by an image: never kept nor restored.
_HOST_XATTRS = ("security.selinux",)


def _xattrs(fd: int) -> List[List[str]]:
    """A directory's xattrs, as [name, value in latin-1] pairs (JSON-safe, lossless)."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise
    return [[name, os.getxattr(fd, name).decode("latin-1")] for name in sorted(names)
            if not name.startswith(_HOST_XATTRS)]


class UndoRecorder:
    """Writes an undo log into `undo_dir` (created here; it must not exist).
    A ChangeObserver for the applier and for ConfinedTree writes. `privileged`:
    owners of what is cloned into the log are kept (None: when we are root)."""

    def __init__(self, undo_dir: Path, privileged: Optional[bool] = None) -> None:
        self.undo_dir = undo_dir
        self._privileged = acting_as_root(privileged)
        os.mkdir(undo_dir, 0o700)
        self._dir_fd = os.open(undo_dir, DIR_FLAGS)
        os.mkdir(SAVED, 0o700, dir_fd=self._dir_fd)
        self._saved_fd = os.open(SAVED, DIR_FLAGS, dir_fd=self._dir_fd)
        fd = os.open(JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self._dir_fd)
        self._journal: Optional[BinaryIO] = os.fdopen(fd, "wb")
        self._content = PathSet()  # paths whose state before their first change is kept
        self._meta = PathSet()
        self._times = PathSet()
        self._saved = 0

    def _covered(self, path: PathKey) -> bool:
        """True when `path` or an ancestor already has its earlier state kept:
        replaying that record puts back the whole subtree, so nothing under it
        needs a record of its own (and a record under it could not be replayed
        once the ancestor was replaced by a file or a link)."""
        return any(path[:i] in self._content for i in range(len(path), 0, -1))

    def _write(self, record: _Record) -> None:
        assert self._journal is not None, "the undo log is closed"
        self._journal.write(json.dumps(record).encode() + b"\n")

    # -- ChangeObserver -----------------------------------------------------

    def creating(self, parent_fd: int, path: PathKey) -> None:
        """Nothing stood at `path`: undoing removes whatever is there."""
        if self._covered(path):
            return
        self._content.add(path)
        self._write({"op": "absent", "path": _text(path)})

    def removing(self, parent_fd: int, path: PathKey, st: os.stat_result) -> bool:
        """Keep the entry about to go: renamed into the log (free), or cloned where
        the file system cannot rename it (a published directory on a union mount)."""
        if self._covered(path):
            return False
        self._content.add(path)
        saved = str(self._saved)
        self._saved += 1
        taken = True
        try:
            os.rename(path[-1], saved, src_dir_fd=parent_fd, dst_dir_fd=self._saved_fd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            clone_entry(parent_fd, os.fsdecode(path[-1]), self._saved_fd, saved, self._privileged)
            taken = False
        self._write({"op": "saved", "path": _text(path), "id": saved})
        return taken

    def changing_metadata(self, parent_fd: int, name: bytes, path: PathKey) -> None:
        """Keep a directory's owner, mode, xattrs and times."""
        if self._covered(path) or path in self._meta:
            return
        self._meta.add(path)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
            self._write({"op": "meta", "path": _text(path), "uid": st.st_uid, "gid": st.st_gid,
                         "mode": stat.S_IMODE(st.st_mode), "atime": st.st_atime_ns, "mtime": st.st_mtime_ns,
                         "xattrs": _xattrs(fd)})
        finally:
            os.close(fd)

    def changing_entries(self, dir_fd: int, path: PathKey) -> None:
        """Keep the times of a directory whose entries change."""
        if self._covered(path) or path in self._times:
            return
        self._times.add(path)
        st = os.fstat(dir_fd)
        self._write({"op": "times", "path": _text(path), "atime": st.st_atime_ns, "mtime": st.st_mtime_ns})

    # -----------------------------------------------------------------------

    def close(self) -> None:
        """Write the log out (fsynced) and release its descriptors."""
        if self._journal is not None:
            self._journal.flush()
            os.fsync(self._journal.fileno())
            self._journal.close()
            self._journal = None
            os.close(self._saved_fd)
            os.close(self._dir_fd)

    def __enter__(self) -> "UndoRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_JOURNAL_CHUNK = 1 << 16


def _journal_backwards(undo_fd: int, undo_dir: Path) -> Iterator[_Record]:
    """The journal's records, newest first, read from its end in chunks: memory
    stays at a chunk and the longest record, however long the journal is."""
    try:
        fd = os.open(JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=undo_fd)
    except OSError as exc:
        raise UndoError(f"cannot read the undo log in {undo_dir}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        position = fh.seek(0, os.SEEK_END)
        tail = b""  # the start of a record whose beginning is in an earlier chunk
        while position > 0:
            step = min(_JOURNAL_CHUNK, position)
            position -= step
            fh.seek(position)
            lines = (fh.read(step) + tail).split(b"\n")
            tail = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield _record(line, undo_dir)
        if tail:
            yield _record(tail, undo_dir)


def _record(line: bytes, undo_dir: Path) -> _Record:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise UndoError(f"the undo log in {undo_dir} is corrupt: {exc}") from None
    if not isinstance(record, dict):
        raise UndoError(f"the undo log in {undo_dir} is corrupt: a record is not an object")
    return record


def _open_dir(tree: ConfinedTree, path: PathKey, undo_dir: Path) -> int:
    """An fd on the directory `path` of the tree, walked without following anything."""
    fd = tree.open_dir([os.fsdecode(name) for name in path])
    if fd is None:
        raise UndoError(f"the tree does not match the undo log in {undo_dir}: {_text(path) or '/'} is missing, "
                        "a symlink or not a directory")
    return fd


def _restore_metadata(fd: int, record: _Record, privileged: bool) -> None:
    if privileged:
        os.fchown(fd, record["uid"], record["gid"])
    for name in os.listxattr(fd):
        if not name.startswith(_HOST_XATTRS):
            os.removexattr(fd, name)
    for name, value in record["xattrs"]:
        os.setxattr(fd, name, value.encode("latin-1"))
    os.fchmod(fd, record["mode"])


def undo_changes(tree: Path, undo_dir: Path, privileged: Optional[bool] = None) -> int:
    """Replay the undo log in `undo_dir` on `tree` (a clone of the tree it was
    written for), newest change first. The log is only read: it can be
    replayed again on another clone. Returns the number of changes undone.
    Raises UndoError where the tree does not match the log. `privileged`:
    owners are restored (None: when we are root)."""
    as_root = acting_as_root(privileged)
    try:
        undo_fd = os.open(undo_dir, DIR_FLAGS)
    except OSError as exc:
        raise UndoError(f"cannot open the undo log {undo_dir}: {exc.strerror}") from None
    # Directory times, in the order met (newest change first): set at the end,
    # in that order, so the oldest record of a path wins. Spooled to a file past a few MiB.
    times = TimesLog()
    try:
        with ConfinedTree(tree) as confined:
            saved_fd = os.open(SAVED, DIR_FLAGS, dir_fd=undo_fd)
            try:
                try:
                    count = _replay(_journal_backwards(undo_fd, undo_dir), confined, saved_fd, undo_dir, times,
                                    as_root)
                except (KeyError, TypeError, ValueError, struct.error) as exc:
                    raise UndoError(f"the undo log in {undo_dir} is corrupt: {type(exc).__name__} {exc}") from None
            finally:
                os.close(saved_fd)
            # Times last: every change above touched the times of a parent.
            for path, atime, mtime in times:
                fd = _open_dir(confined, path, undo_dir)
                try:
                    os.utime(fd, ns=(atime, mtime))
                finally:
                    os.close(fd)
    finally:
        times.close()
        os.close(undo_fd)
    return count


def _replay(records: Iterable[_Record], tree: ConfinedTree, saved_fd: int, undo_dir: Path, times: TimesLog,
            privileged: bool) -> int:
    """Undo the records (newest first); directory times are added to `times`.
    Returns how many records there were."""
    count = 0
    for record in records:
        count += 1
        path = _parts(record["path"])
        op = record["op"]
        if op in ("times", "meta"):
            times.add(path, record["atime"], record["mtime"])
            if op == "meta":
                fd = _open_dir(tree, path, undo_dir)
                try:
                    _restore_metadata(fd, record, privileged)
                finally:
                    os.close(fd)
            continue
        if not path:
            raise UndoError(f"the undo log in {undo_dir} replaces the tree's root")
        if op not in ("saved", "absent"):
            raise UndoError(f"the undo log in {undo_dir} has an unknown record {op!r}")
        parent = _open_dir(tree, path[:-1], undo_dir)
        try:
            name = os.fsdecode(path[-1])
            remove_at(parent, name, privileged)
            if op == "saved":
                clone_entry(saved_fd, record["id"], parent, name, privileged)
        finally:
            os.close(parent)
    return count
