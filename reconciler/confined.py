"""Writes under a publish root, where image content may have planted symlinks.

Every write that happens after the layers are applied (the Apptainer files,
catalog markers, completion records, tag links) goes through `ConfinedTree`:
paths are walked from an fd on the tree's root one component at a time with
`O_NOFOLLOW`, a component that is not a real directory stops the walk, and
entries are created with `O_CREAT|O_EXCL|O_NOFOLLOW` or `*at` calls that
never follow a symlink. Nothing that an image holds can redirect such a write
outside the tree, whatever runs as root.

(The layer applier has its own resolver: it must follow in-image symlinks as
if the image root were `/`, which these writes never do.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple, Union

from .dirfd import DIR_FLAGS

if TYPE_CHECKING:
    from .applier.apply import ChangeObserver


class NotConfinedError(OSError):
    """A path component is a symlink, a file or missing where a directory was needed."""


_MISSING = "missing"


def _open_subdir(dir_fd: int, name: str) -> Union[int, str, None]:
    """An fd on the real directory `name` in `dir_fd`; `_MISSING` when there is
    nothing there; None for a symlink (ELOOP under O_NOFOLLOW) or a non-directory."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return None
        raise


_REFUSED = "refused"


def _existing_entry(dir_fd: int, name: str, replace: bool) -> Union[os.stat_result, str, None]:
    """The lstat of what stands at `name` (None: free to create), or _REFUSED when
    it must be left alone: it exists and `replace` is off, or it is a directory."""
    try:
        existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not replace or stat.S_ISDIR(existing.st_mode):
        return _REFUSED
    return existing


def _key(parts: Sequence[str]) -> Tuple[bytes, ...]:
    """Path components as the applier's observers take them."""
    return tuple(os.fsencode(p) for p in parts)


def _parts(relpath: Union[str, Sequence[str]]) -> List[str]:
    parts = relpath.split("/") if isinstance(relpath, str) else list(relpath)
    parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {relpath!r} climbs out with '..'")
    return parts


class ConfinedTree:
    """A directory tree written without ever following a symlink inside it.

    Methods take paths relative to the root ("a/b/c"). They return False (and
    do nothing) when a parent is not a real directory or the entry exists and
    is not to be replaced; the caller decides whether that is an error.
    """

    def __init__(self, root: Union[str, Path], observer: Optional["ChangeObserver"] = None) -> None:
        self.root = Path(root)
        self._root_fd = os.open(self.root, DIR_FLAGS)
        # Told of every change to what was there (an undo log), as the applier tells it.
        self.observer = observer

    def close(self) -> None:
        """Release the fd on the root."""
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> "ConfinedTree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- walking ----------------------------------------------------------

    def open_dir(self, relpath: Union[str, Sequence[str]], *, create: bool = False, mode: int = 0o755) -> Optional[int]:
        """An fd on the directory `relpath` (the caller closes it), or None when
        a component is missing (and not `create`), a symlink or not a directory."""
        fd = os.dup(self._root_fd)  # -1 once closed, so the error path closes nothing twice
        walked: List[str] = []
        try:
            for name in _parts(relpath):
                new = _open_subdir(fd, name)
                if new is _MISSING and create:
                    self._creating(fd, walked, name)
                    try:
                        os.mkdir(name, mode, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: opened (or refused) below like any other entry
                    new = _open_subdir(fd, name)
                os.close(fd)
                fd = -1
                if not isinstance(new, int):
                    return None
                fd = new
                walked.append(name)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return fd

    def _creating(self, dir_fd: int, parent: Sequence[str], name: str) -> None:
        if self.observer is not None:
            self.observer.changing_entries(dir_fd, _key(parent))
            self.observer.creating(dir_fd, _key([*parent, name]))

    def _replacing(self, dir_fd: int, parent: Sequence[str], name: str, existing: os.stat_result) -> bool:
        """Tell the observer an entry is about to be replaced; True when it took it away."""
        if self.observer is None:
            return False
        self.observer.changing_entries(dir_fd, _key(parent))
        taken = self.observer.removing(dir_fd, _key([*parent, name]), existing)
        self.observer.creating(dir_fd, _key([*parent, name]))
        return taken

    def _claim(self, dir_fd: int, parent: Sequence[str], name: str, replace: bool) -> Union[bool, str]:
        """Before writing `name`: _REFUSED when it must be left alone, else whether
        something still stands there (to be swapped out by rename). The
        observer hears of the change first (and may take the old entry away)."""
        existing = _existing_entry(dir_fd, name, replace)
        if isinstance(existing, str):  # _REFUSED
            return _REFUSED
        if existing is None:
            self._creating(dir_fd, parent, name)
            return False
        return not self._replacing(dir_fd, parent, name, existing)

    @contextlib.contextmanager
    def _writing(self, relpath: str, replace: bool) -> Iterator[Optional[Tuple[int, str, bool]]]:
        """(parent fd, name, whether something still stands there) for a write to
        `relpath`, or None when it must not happen (see `_claim`)."""
        found = self._parent(relpath, create=True)
        if found is None:
            yield None
            return
        fd, name, parent = found
        try:
            existing = self._claim(fd, parent, name, replace)
            yield None if existing is _REFUSED else (fd, name, bool(existing))
        finally:
            os.close(fd)

    def _parent(self, relpath: str, create: bool) -> Optional[Tuple[int, str, List[str]]]:
        parts = _parts(relpath)
        if not parts:
            raise ValueError("the tree's root itself cannot be written this way")
        fd = self.open_dir(parts[:-1], create=create)
        return None if fd is None else (fd, parts[-1], parts[:-1])

    def lstat(self, relpath: str) -> Optional[os.stat_result]:
        """lstat of an entry, or None when it (or a real-directory path to it) is missing."""
        found = self._parent(relpath, create=False)
        if found is None:
            return None
        fd, name, parent = found
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    # -- writing ----------------------------------------------------------

    def mkdirs(self, relpath: str, mode: int = 0o755) -> bool:
        """Create `relpath` and its missing parents; False when a component is not a real directory."""
        fd = self.open_dir(relpath, create=True, mode=mode)
        if fd is None:
            return False
        os.close(fd)
        return True

    def write_file(self, relpath: str, data: bytes, mode: int = 0o644, *, replace: bool = False,
                   durable: bool = False) -> bool:
        """Create the regular file `relpath` (and missing parents) holding `data`.
        An existing entry is kept (False) unless `replace`, which swaps a new file
        in by rename, so whatever stood there (a symlink included) is never
        written through. A directory in the way is never replaced (False).
        `durable` fsyncs the file before it appears under its name."""
        with self._writing(relpath, replace) as slot:
            if slot is None:
                return False
            fd, name, existing = slot
            target = f".{name}.tmp-{secrets.token_hex(4)}" if existing else name
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view):]
                os.fchmod(out, mode)  # not narrowed by the umask
                if durable:
                    os.fsync(out)
            except BaseException:
                os.close(out)
                os.unlink(target, dir_fd=fd)
                raise
            os.close(out)
            if target != name:
                os.replace(target, name, src_dir_fd=fd, dst_dir_fd=fd)
            return True

    def symlink(self, relpath: str, target: str, *, replace: bool = False) -> bool:
        """Create the symlink `relpath` -> `target`. With `replace`, an existing
        symlink or file is swapped atomically (a new link renamed over it); a
        directory in the way is never replaced (False)."""
        with self._writing(relpath, replace) as slot:
            if slot is None:
                return False
            fd, name, existing = slot
            if not existing:
                os.symlink(target, name, dir_fd=fd)
                return True
            tmp = f".{name}.tmp-{secrets.token_hex(4)}"
            os.symlink(target, tmp, dir_fd=fd)
            try:
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                os.unlink(tmp, dir_fd=fd)
                raise
            return True

    def unlink(self, relpath: str) -> bool:
        """Remove a file or symlink (never what it points at); False when absent."""
        found = self._parent(relpath, create=False)
        if found is None:
            return False
        fd, name, parent = found
        try:
            os.unlink(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
