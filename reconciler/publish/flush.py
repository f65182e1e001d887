"""Flushing one filesystem to disk: what the local directory publisher pays,
once per transaction, before any tag may point at a tree it built.

`syncfs(2)` writes back the dirty data of the filesystem holding the publish
root only, not of every disk on the machine as `sync(2)` does; Python's os has
no syncfs, so it is called through the C library, with `os.sync()` where the
platform has none.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable, Optional

# What a publisher calls to make everything written on a filesystem durable,
# given an fd on a directory of it opened before the writes (see sync_filesystem).
Flush = Callable[[int], None]


def _libc_syncfs() -> Optional[Callable[[int], int]]:
    """The C library's syncfs, or None where there is none (not Linux, old libc)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    func = getattr(libc, "syncfs", None)
    if func is None:
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func  # type: ignore[no-any-return]


def open_root(path: Path) -> int:
    """An fd on the directory `path` to flush its filesystem through later.
    Opened before the writes: the kernel reports to syncfs the write-back
    errors that happened since the fd was opened, not before."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def sync_filesystem(fd: int) -> None:
    """Write back every dirty page of the filesystem that holds the directory
    `fd` (syncfs), or of every filesystem where syncfs is missing (sync).
    Raises OSError when the kernel reports a write-back error (once: a second
    call on the same fd would not report it again)."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        os.sync()
        return
    if syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
