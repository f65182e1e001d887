"""Process locks: one writer per state directory and per publish target.

A lock is `flock(LOCK_EX)` on a file; the kernel releases it when the process
dies, however it dies, so a lock is never stale. The holder writes its pid,
start time and command line into the file, so that a second run can say who
is in its way.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

from .errors import BusyError, StartError

log = logging.getLogger(__name__)


def process_start_time(pid: int) -> Optional[int]:
    """The start time of process `pid` in clock ticks since boot (field 22 of
    /proc/<pid>/stat), or None when no such process runs. With the pid it tells
    a process apart from a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_time: Optional[int]) -> bool:
    """True when `pid` runs and (if known) started at `start_time`."""
    current = process_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def _open_lock_file(path: Path) -> int:
    """The lock file, read-write; read-only when it exists but belongs to
    another user (flock works on either)."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, os.O_RDWR | flags, 0o644)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


class ProcessLock:
    """An exclusive lock on `path`; `what` names what it protects in messages."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock at once, or raise BusyError naming the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_lock_file(self.path)
        except OSError as exc:
            raise StartError(f"cannot create the lock file {self.path} ({self.what}): {exc.strerror}; "
                             "check that this user may write there") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise BusyError(f"another reconciler is using {self.what}{holder}; this run changes nothing. "
                            f"Wait for it to finish, or give this watchlist its own [state] dir and publish "
                            f"root (or lease_path)") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            return  # another user's lock file (say, after one run with sudo): flocked, but no holder note
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "start_time": process_start_time(os.getpid()),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "command": " ".join(sys.argv)[:300]}).encode() + b"\n", 0)

    def release(self) -> None:
        """Give the lock up (also done by the kernel when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ProcessLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(info, dict) or "pid" not in info:
        return ""
    return f" (pid {info['pid']}, since {info.get('since', '?')}: {info.get('command', '?')})"
