"""Directory descriptors, shared by everything that walks a tree through fds:
the open flags that never follow a symlink, a directory fsync, and whether
we act as root (decided here once; callers pass the answer down)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

# A real directory, never a symlink to one; not inherited by children.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The same, as a handle for *at calls only where the kernel has O_PATH.
PATH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | DIR_FLAGS


def acting_as_root(requested: Optional[bool] = None) -> bool:
    """Whether to act as root (set owners, make devices, keep modes as they are):
    `requested` when given, else whether this process runs as root."""
    return requested if requested is not None else os.geteuid() == 0


def fsync_dir(path: Union[str, Path]) -> None:
    """fsync a directory (following `path` as given), so renames and new entries in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
