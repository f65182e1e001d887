"""The state of applying one layer onto one root, shared by the applier's
concerns (resolution, whiteouts, entries, directory times): what to do, what
was done, what this layer itself wrote, and the one way to remove an entry."""

from __future__ import annotations

import os
import stat
from typing import Optional

from ..treecopy import remove_at
from .dirtimes import DirTimes
from .options import ApplyOptions, ChangeObserver, LayerStats
from .pathset import PathKey, PathSet
from .resolve import Resolver

COPY_CHUNK = 1 << 20


class LayerState:
    """One layer being applied onto the tree under `root_fd`. `privileged`
    (decided once by the caller) says whether to act as root."""

    def __init__(self, root_fd: int, options: ApplyOptions, privileged: bool, stats: LayerStats,
                 observer: Optional[ChangeObserver]) -> None:
        self.root_fd = root_fd
        self.options = options
        self.limits = options.limits
        self.privileged = privileged
        self.stats = stats
        self.observer = observer
        self.times = DirTimes(observer)
        self.resolver = Resolver(root_fd, options.limits, self._make_missing_dir)
        # Real paths this layer created or changed, and all their ancestors:
        # whiteouts and opaque markers never remove them.
        self.upper = PathSet()
        # One reused buffer for file data: allocating a fresh chunk per read fragments the heap.
        self.buffer = bytearray(COPY_CHUNK)

    def _make_missing_dir(self, dir_fd: int, real: PathKey, name: bytes) -> None:
        """A directory an entry's path needs but no entry made (0755, like tar)."""
        self.times.changing(dir_fd, real)
        if self.observer is not None:
            self.observer.creating(dir_fd, real + (name,))
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        self.times.settled(real + (name,))

    def mark_upper(self, path: PathKey) -> None:
        """`path` is this layer's (and so are its ancestors)."""
        # Deepest first, stopping at the first ancestor already there: every
        # path in the set has its ancestors in it too, so an entry costs O(1)
        # hashes rather than one per ancestor.
        for i in range(len(path), 0, -1):
            if not self.upper.add(path[:i]):
                return

    def remove(self, parent_fd: int, name: bytes, st: os.stat_result, path: PathKey) -> None:
        """Remove the entry `name` (a whole subtree: without recursion, as a
        lower tree may be deeper than Python's limit); `path` is its real path."""
        self.resolver.removing(parent_fd, name, st, path)
        if self.observer is not None and self.observer.removing(parent_fd, path, st):
            self.stats.removed += 1
            return
        if stat.S_ISDIR(st.st_mode):
            remove_at(parent_fd, os.fsdecode(name), self.privileged)
        else:
            os.unlink(name, dir_fd=parent_fd)
        self.stats.removed += 1

    def finish(self) -> None:
        """Set the directory times (see DirTimes.finish)."""
        self.times.finish(self.root_fd, self.resolver.reopen)

    def close(self) -> None:
        """Release the cached directory fds and the spooled directory times."""
        self.resolver.close()
        self.times.close()
