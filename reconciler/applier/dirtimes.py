"""Directory times, set once a layer is written: adding or removing an entry
changes a directory's mtime, so the times a layer gives its directories, and
those of lower directories it changed, are set at the very end.

Memory stays small: the records go to a spooled temporary file past a few MiB.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from typing import Callable, Iterator, Optional, Tuple

from ..dirfd import DIR_FLAGS
from .options import ChangeObserver
from .pathset import PathKey, PathSet

# Directory times are spooled to an unlinked temporary file past this size.
_TIMES_SPOOL_BYTES = 4 << 20

# The last parent directory opened while setting times: (its real path, an fd on it).
_OpenParent = Optional[Tuple[PathKey, int]]


class TimesLog:
    """Directory times to set at the end of the layer, as (path, atime, mtime)
    records in the order given. They stay in memory up to a few MiB and then go
    to an unlinked temporary file: a layer of a million directories must not
    keep a million paths in memory."""

    _HEAD = struct.Struct("<qqI")

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=_TIMES_SPOOL_BYTES)

    def add(self, path: PathKey, atime: int, mtime: int) -> None:
        """Append one record."""
        joined = b"/".join(path)
        self._file.write(self._HEAD.pack(atime, mtime, len(joined)) + joined)

    def __iter__(self) -> Iterator[Tuple[PathKey, int, int]]:
        self._file.seek(0)
        while True:
            head = self._file.read(self._HEAD.size)
            if not head:
                return
            atime, mtime, length = self._HEAD.unpack(head)
            joined = self._file.read(length)
            yield (tuple(joined.split(b"/")) if joined else ()), atime, mtime

    def close(self) -> None:
        """Drop the records (and the temporary file)."""
        self._file.close()


class DirTimes:
    """The directory times of one layer: lower directories' times kept before
    their first change (to restore), and the layer's own directory entries'."""

    def __init__(self, observer: Optional[ChangeObserver]) -> None:
        self.observer = observer
        # Directories whose final times are settled: lower ones whose times
        # were recorded before their first change (in `restore_times`), and
        # those this layer created (they keep the time of their creation).
        self.noted = PathSet()
        self.restore_times = TimesLog()
        self.dir_times = TimesLog()  # the layer's own directory entries

    def changing(self, dir_fd: int, real: PathKey) -> None:
        """Remember a lower directory's times before we change its entries."""
        if not self.noted.add(real):
            return
        if self.observer is not None:
            self.observer.changing_entries(dir_fd, real)
        st = os.fstat(dir_fd)
        self.restore_times.add(real, st.st_atime_ns, st.st_mtime_ns)

    def settled(self, path: PathKey) -> None:
        """`path` is the layer's own: a later change of its entries needs no times restored."""
        self.noted.add(path)

    def own(self, path: PathKey, mtime: int) -> None:
        """The layer's directory entry `path` gets `mtime` (atime too) at the end."""
        self.dir_times.add(path, mtime, mtime)

    def finish(self, root_fd: int, reopen: Callable[[PathKey], int]) -> None:
        """Set directory times: restored for lower directories we changed,
        the layer's own for its directory entries (set last, so they win).
        Paths are re-resolved refusing symlinks (`reopen` opens a real path
        from the root), so a later entry cannot redirect these writes."""
        parent: _OpenParent = None  # the last parent opened: records come grouped
        try:
            for log in (self.restore_times, self.dir_times):
                for path, atime, mtime in log:
                    parent = _set_dir_times(root_fd, reopen, path, atime, mtime, parent)
        finally:
            if parent is not None:
                os.close(parent[1])

    def close(self) -> None:
        """Drop the spooled records."""
        self.restore_times.close()
        self.dir_times.close()


def _set_dir_times(root_fd: int, reopen: Callable[[PathKey], int], path: PathKey, atime: int, mtime: int,
                   parent: _OpenParent) -> _OpenParent:
    """Set the times of `path`; takes and returns the cached (parent path,
    fd), which stays valid as nothing but times changes during finish()."""
    try:
        if not path:
            fd = os.open(b".", DIR_FLAGS, dir_fd=root_fd)
        else:
            if parent is None or parent[0] != path[:-1]:
                if parent is not None:
                    os.close(parent[1])
                    parent = None
                parent = (path[:-1], reopen(path[:-1]))
            fd = os.open(path[-1], DIR_FLAGS, dir_fd=parent[1])
    except (FileNotFoundError, NotADirectoryError):
        return parent  # removed or replaced later in this layer
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return parent  # replaced by a symlink later in this layer: never follow it
        raise
    try:
        os.utime(fd, ns=(atime, mtime))
    finally:
        os.close(fd)
    return parent
