"""The entries of a watchlist's [[list]] blocks, read again at every cycle.

A merged pull request to a list is then picked up by the next cycle. A list
that cannot be read any more (deleted, half-written YAML, permissions) keeps
its last good entries and the error is logged: a broken list never makes the
reconciler remove what it publishes. At start there is no last good read, so
an unreadable list is a ConfigError there.

A list being written is not read: one changed less than SETTLE_S ago, or
while it was read, keeps its last good entries until a later cycle (`git
pull` rewrites a file in place: read half-way, a 500-line list would remove
the tags of every line not yet written, and publish them again a cycle later). Lines that cannot be read are
logged (when they change, not every cycle) and skipped alone.

Precedence between entries with one dest: [[image]] blocks first (an admin
overrides a listed image there, e.g. with other platforms), then the lists
in file order; the later line is skipped and reported.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError
from ..watchlist import ImageEntry, ListConfig, Watchlist
from .entries import list_entries
from .read import read_list
from .record import Problem

log = logging.getLogger(__name__)

# A list changed this recently may still be being written; it is read at a later cycle.
SETTLE_S = 2.0


class ListSources:
    """Reads a watchlist's lists and remembers each one's last good read."""

    def __init__(self, watchlist: Watchlist) -> None:
        self.watchlist = watchlist
        self._last: Dict[int, Tuple[ImageEntry, ...]] = {}  # list index -> its entries at the last good read
        self._reported: Dict[int, Tuple[str, ...]] = {}  # list index -> the problems last logged

    def merged(self) -> Watchlist:
        """The watchlist with every list's entries after its [[image]] blocks,
        each list read now (or its last good entries, when it cannot be).
        ConfigError when a list cannot be read and never could."""
        if not self.watchlist.lists:
            return self.watchlist
        taken = {e.dest: e.label for e in self.watchlist.images}
        entries: List[ImageEntry] = list(self.watchlist.images)
        for config in self.watchlist.lists:
            fresh = self._read(config, len(entries) + 1, taken)
            if fresh is None:  # unreadable now: its last good entries, renumbered and still claiming their dests
                fresh = []
                for entry in self._last[config.index]:
                    if entry.dest in taken:
                        continue
                    taken[entry.dest] = entry.label
                    fresh.append(replace(entry, index=len(entries) + len(fresh) + 1))
            self._last[config.index] = tuple(fresh)
            entries.extend(fresh)
        return replace(self.watchlist, images=tuple(entries))

    def _read(self, config: ListConfig, first_index: int, taken: Dict[str, str]) -> Optional[List[ImageEntry]]:
        """The list's entries now; None (logged) when it cannot be read but was before."""
        before = _version(config.path)
        if config.index in self._last and before is not None and time.time() - before[0] / 1e9 < SETTLE_S:
            log.info("%s: changed %.1fs ago, perhaps still being written; read at a later cycle", config.label,
                     max(0.0, time.time() - before[0] / 1e9))
            return None
        try:
            read = read_list(config.path, config.format)
            if _version(config.path) != before:
                raise ConfigError(f"{config.path}: changed while it was read")
        except ConfigError as exc:
            if config.index not in self._last:
                raise ConfigError(f"{self.watchlist.path.name}: {config.label}: {exc}") from None
            log.error("%s: %s; keeping its %d entries of the last good read until it can be read again",
                      config.label, exc, len(self._last[config.index]))
            return None
        entries, problems = list_entries(read, config, first_index, taken)
        self._report(config, read.problems + problems)
        return entries

    def _report(self, config: ListConfig, problems: List[Problem]) -> None:
        """Log the skipped lines when they differ from the last read's."""
        shown = tuple(str(p) for p in sorted(problems, key=lambda p: p.line))
        if shown == self._reported.get(config.index):
            return
        self._reported[config.index] = shown
        for text in shown:
            log.warning("%s: %s", config.label, text)


def _version(path: Path) -> Optional[Tuple[int, int, int]]:
    """What changes when a file is written (mtime in ns, size, inode); None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
