"""What the applier is asked to do and what it reports: limits, options,
statistics and the observer told of every change (records, no behaviour)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Protocol

from .pathset import PathKey

_MAX_SKIPPED_NOTES = 100


@dataclass(frozen=True)
class LayerLimits:
    """Bounds on what one layer may make us do."""

    max_entries: int = 5_000_000
    max_bytes: int = 1 << 40  # uncompressed tar bytes
    max_depth: int = 1024  # path components
    max_path_bytes: int = 1 << 16
    max_symlinks: int = 40  # followed while resolving one path (the kernel's MAXSYMLINKS)
    # Components walked resolving one path, symlink targets included: 40 links of
    # the longest target the kernel stores (4095 bytes, `a/..` pairs) would need
    # about 82,000; no honest image comes near. Bounds the work one entry can cost.
    max_resolve_steps: int = 1 << 15


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply. `privileged=None` means "as root if we are root".

    Unprivileged: ownership is left to the caller (uids/gids are not applied),
    device nodes are skipped (and reported), and directories get u+rwx so a
    later layer can still write into them.
    """

    limits: LayerLimits = LayerLimits()
    privileged: Optional[bool] = None
    # CernVM-FS clients expand `$(VAR)` in symlink targets (variant symlinks):
    # refuse such links where the publisher says its target does that.
    forbid_variant_symlinks: bool = False
    # CernVM-FS's publish reads a file `.cvmfsgraft-<name>` as the hash and
    # chunks of `<name>` (a graft): an image's own would make the published file
    # whatever content it names. Refused where the publisher says its target does that.
    forbid_graft_markers: bool = False


class ChangeObserver(Protocol):
    """Told of every change the applier makes to what was already in the tree,
    just before it happens (an undo log keeps what is needed to go back).
    Paths are real paths (symlinks resolved), relative to the root."""

    def creating(self, parent_fd: int, path: PathKey) -> None:
        """Something is about to be created at `path`, where nothing is."""

    def removing(self, parent_fd: int, path: PathKey, st: os.stat_result) -> bool:
        """The entry at `path` (its lstat `st`) is about to be removed. Returns
        True when the observer took it away itself (renamed it elsewhere)."""

    def changing_metadata(self, parent_fd: int, name: bytes, path: PathKey) -> None:
        """The directory `name` in `parent_fd` (at `path`) keeps its content but
        is about to get new owner, mode, xattrs and times."""

    def changing_entries(self, dir_fd: int, path: PathKey) -> None:
        """The existing directory `dir_fd` (at `path`) is about to gain or lose
        entries (its times change; the applier restores them at the end)."""


@dataclass
class LayerStats:
    """What applying a layer did."""

    entries: int = 0
    files: int = 0
    bytes: int = 0
    removed: int = 0
    skipped: List[str] = field(default_factory=list)  # the first notes only; `skipped_count` counts all
    skipped_count: int = 0
    capabilities: int = 0  # files given a security.capability (file capabilities, e.g. ping)
    special: int = 0  # device nodes and FIFOs made
    diff_id: str = ""

    def skip(self, note: str) -> None:
        """Record something left out. Only the first notes are kept: a layer of
        a million device nodes must not cost a million strings."""
        self.skipped_count += 1
        if len(self.skipped) < _MAX_SKIPPED_NOTES:
            self.skipped.append(note)
