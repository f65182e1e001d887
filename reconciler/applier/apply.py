"""Apply one OCI layer onto a directory tree, straight from its blob stream.

Safety rests on three rules, whatever the tar says:
- every path is resolved component by component from an fd on the root, with
  `O_NOFOLLOW`; symlinks met on the way are resolved by hand as if the root
  were `/` (absolute targets re-rooted, `..` clamped at the root, at most
  40 links like the kernel), and the final component is never followed;
- an existing final component is unlinked (or its subtree removed) and
  recreated with `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing is ever written
  through a symlink or into an existing (possibly hardlinked) inode; only a
  directory over a directory keeps its inode and gets new metadata;
- metadata is set through fds or `*at` calls that do not follow links, and the
  deferred directory mtimes re-resolve their path refusing any symlink.

Whiteouts follow the OCI image spec: `.wh.<name>` removes lower content,
`.wh..wh..opq` hides a directory's lower content wherever it stands in the
layer, and entries of the same layer survive both.

Memory stays small however many entries a layer has: tar members are
dropped as soon as they are applied, tar headers are bounded, the paths a
whiteout must spare are kept as keyed 64-bit hashes, and the directory times
to set at the end are spooled to a temporary file once they grow.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, Optional, Protocol, Tuple, Union

from ..errors import HostileLayerError, IntegrityError, LayerError
from ..treecopy import remove_at
from .decompress import DigestingReader
from .pathset import PathKey, PathSet

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
_AUFS_META = b".wh..wh."
_COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | _DIR_FLAGS
# Xattrs that may come from an image. trusted.* and *.overlay.* would steer an
# overlayfs (the CVMFS transaction is one); security.selinux belongs to the host.
_ALLOWED_XATTR_PREFIXES = (b"user.", b"security.capability")
_FORBIDDEN_XATTR_PARTS = (b".overlay.", b"user.rootlesscontainers")

# Go's archive/tar refuses special headers (PAX, GNU long names) over 1 MiB;
# one entry's headers together may take this much. Bounds both the memory a
# header costs and the sparse maps tarfile builds from extension blocks.
_MAX_HEADER_BYTES = 4 << 20
# Header blocks one entry may chain (global PAX, PAX, long name, long link…):
# tarfile parses a chain by recursion, so an endless one would overflow the stack.
_MAX_HEADERS = 16
_MAX_SKIPPED_NOTES = 100
# Directory times are spooled to an unlinked temporary file past this size.
_TIMES_SPOOL_BYTES = 4 << 20

# CONTTYPE ("7") and vendor types are refused: tarfile would read them as regular files.
_SUPPORTED_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.GNUTYPE_SPARSE, tarfile.LNKTYPE, tarfile.SYMTYPE,
                    tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE}


@dataclass(frozen=True)
class LayerLimits:
    """Bounds on what one layer may make us do."""

    max_entries: int = 5_000_000
    max_bytes: int = 1 << 40  # uncompressed tar bytes
    max_depth: int = 1024  # path components
    max_path_bytes: int = 1 << 16
    max_symlinks: int = 40  # followed while resolving one path (the kernel's MAXSYMLINKS)


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply. `privileged=None` means "as root if we are root".

    Unprivileged: ownership is left to the caller (uids/gids are not applied),
    device nodes are skipped (and reported), and directories get u+rwx so a
    later layer can still write into them.
    """

    limits: LayerLimits = LayerLimits()
    privileged: Optional[bool] = None
    # CVMFS resolves symlink targets containing $(VAR) per client: refuse them there.
    forbid_variant_symlinks: bool = False


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
    diff_id: str = ""

    def skip(self, note: str) -> None:
        """Record something left out. Only the first notes are kept: a layer of
        a million device nodes must not cost a million strings."""
        self.skipped_count += 1
        if len(self.skipped) < _MAX_SKIPPED_NOTES:
            self.skipped.append(note)


class _HeaderGuard:
    """The tar stream as tarfile sees it: while a member's headers are parsed
    (from `start_member` to `end_member`), reads beyond _MAX_HEADER_BYTES
    are refused before they happen; member data passes freely."""

    def __init__(self, raw: DigestingReader) -> None:
        self.raw = raw
        self.header_left = _MAX_HEADER_BYTES
        self.headers = 0
        self.member_offset = 0
        self.parsing = True  # tarfile.open parses the first member at once

    def start_member(self) -> None:
        """A member's headers come next."""
        self.header_left, self.headers, self.member_offset = _MAX_HEADER_BYTES, 0, self.raw.consumed
        self.parsing = True

    def end_member(self) -> None:
        """Its headers are parsed: what follows is data."""
        self.parsing = False

    def note_header(self) -> None:
        """One more header block in this member's chain."""
        self.headers += 1
        if self.parsing and self.headers > _MAX_HEADERS:
            raise LayerError(f"the tar entry at offset {self.member_offset} chains more than {_MAX_HEADERS} "
                             "headers (the header count limit); the layer is corrupt or hostile")

    def read(self, n: int = -1) -> bytes:
        if self.parsing:
            if n is None or n < 0 or n > self.header_left:
                raise LayerError(f"the tar entry at offset {self.member_offset} has more than {_MAX_HEADER_BYTES} "
                                 "bytes of headers (the header size limit); the layer is corrupt or hostile")
            self.header_left -= n
        return self.raw.read(n)

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)


class _TarInfo(tarfile.TarInfo):
    """tarfile's member parser with three changes: global PAX headers are
    ignored (tarfile would apply them to later members, unlike Go's archive/tar),
    the last header block read is kept to tell a clean end of archive from
    a corrupt header (tarfile stops silently on both), and header chains are
    counted (through _HeaderGuard, when that is the stream)."""

    @classmethod
    def fromtarfile(cls, tf):  # type: ignore[override]
        buf = tf.fileobj.read(tarfile.BLOCKSIZE)
        tf.last_header_block = buf
        obj = cls.frombuf(buf, tf.encoding, tf.errors)
        obj.offset = tf.fileobj.tell() - tarfile.BLOCKSIZE
        return obj._proc_member(tf)

    def _proc_member(self, tf):  # type: ignore[override]
        # Counted here, once per header block: tarfiles with the CVE-2025-13462
        # fix (3.9.2-1+deb11u7, newer 3.x) read a chain's later headers with
        # _fromtarfile, past fromtarfile.
        if isinstance(tf.fileobj, _HeaderGuard):
            tf.fileobj.note_header()
        return super()._proc_member(tf)

    def _proc_pax(self, tf):  # type: ignore[override]
        if self.type == tarfile.XGLTYPE:
            tf.fileobj.read(self._block(self.size))
            return self.fromtarfile(tf)
        return super()._proc_pax(tf)


def _members(tf: tarfile.TarFile, guard: _HeaderGuard) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order, each forgotten by tarfile once read.

    tarfile's own iteration appends every TarInfo to `tf.members` (for
    getmember() and hardlink lookups through tarfile, which the applier never
    uses): a million entries would hold hundreds of MB.
    """
    if tf.firstmember is None and tf.offset == 0:
        # No member at all (tarfile.open found the end): Python 3.9's next()
        # would seek back to offset -1 to look again (later ones return None).
        return
    while True:
        guard.start_member()
        try:
            member = tf.next()
        except ValueError as exc:  # some malformed sparse maps escape tarfile's own errors
            raise LayerError(f"corrupt tar header at offset {guard.member_offset}: {exc}") from None
        finally:
            guard.end_member()
        tf.members.clear()
        if member is None:
            return
        yield member


class _TimesLog:
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


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _split_name(raw: bytes, what: str, limits: LayerLimits) -> PathKey:
    """Normalize a tar name: `/x`, `./x`, `x//y` and `x/` are one path. `..` is refused."""
    if b"\x00" in raw:
        raise HostileLayerError(f"{what} {raw[:200]!r} contains a NUL byte")
    if len(raw) > limits.max_path_bytes:
        raise LayerError(f"{what} {raw[:200]!r}… is {len(raw)} bytes long, over the path length limit "
                         f"of {limits.max_path_bytes} bytes")
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise HostileLayerError(f"{what} {raw[:200]!r} climbs out with '..'")
    if len(parts) > limits.max_depth:
        raise LayerError(f"{what} {raw[:200]!r} is {len(parts)} directories deep, over the depth limit "
                         f"of {limits.max_depth}")
    return parts


def _show(path: PathKey) -> str:
    return "/" + b"/".join(path).decode("utf-8", "backslashreplace")


def _mtime_ns(member: tarfile.TarInfo) -> int:
    text = member.pax_headers.get("mtime")
    if text:
        whole, _, frac = text.partition(".")
        try:
            sign = -1 if whole.startswith("-") else 1
            return int(whole) * 1_000_000_000 + sign * int((frac + "000000000")[:9] or 0)
        except ValueError:
            pass
    return int(member.mtime) * 1_000_000_000


class _Applier:
    """State for applying one layer onto one root."""

    def __init__(self, root_fd: int, options: ApplyOptions, stats: LayerStats,
                 observer: Optional[ChangeObserver] = None) -> None:
        self.root_fd = root_fd
        self.observer = observer
        self.options = options
        self.limits = options.limits
        self.privileged = options.privileged if options.privileged is not None else os.geteuid() == 0
        self.stats = stats
        root_st = os.fstat(root_fd)
        self.root_id = (root_st.st_dev, root_st.st_ino)
        # Real paths this layer created or changed, and all their ancestors:
        # whiteouts and opaque markers never remove them.
        self.upper = PathSet()
        # Directories whose final times are settled: lower ones whose times
        # were recorded before their first change (in `restore_times`), and
        # those this layer created (they keep the time of their creation).
        self.times_noted = PathSet()
        self.restore_times = _TimesLog()
        self.dir_times = _TimesLog()  # the layer's own directory entries
        self.buffer = bytearray(_COPY_CHUNK)
        # The last directory resolved (entries come grouped by directory):
        # (entry path, fd, real path). Any removal drops it, as only a removal
        # can change what an existing path resolves to.
        self._last_dir: Optional[Tuple[PathKey, int, PathKey]] = None

    def close(self) -> None:
        """Release the cached directory fd and the spooled directory times."""
        self._forget_dir()
        self.restore_times.close()
        self.dir_times.close()

    def _forget_dir(self) -> None:
        if self._last_dir is not None:
            os.close(self._last_dir[1])
            self._last_dir = None

    # -- path resolution -------------------------------------------------

    def _open_dir(self, parent_fd: int, name: bytes) -> int:
        return os.open(name, _PATH_FLAGS, dir_fd=parent_fd)

    def resolve_dir(self, parts: PathKey, create: bool) -> Tuple[Optional[int], PathKey]:
        """Open the directory `parts` inside the root, following symlinks in-root.

        Returns (fd, real path) or (None, ()) when a component is missing and
        `create` is false. Missing directories are created 0755 when `create`.
        """
        last = self._last_dir
        if last is not None and last[0] == parts:
            return os.dup(last[1]), last[2]
        fd, real = self._resolve_dir(parts, create)
        if fd is not None:
            self._forget_dir()
            self._last_dir = (parts, os.dup(fd), real)
        return fd, real

    def _resolve_dir(self, parts: PathKey, create: bool) -> Tuple[Optional[int], PathKey]:
        # Components still to walk, the next one last: a symlink's target is
        # pushed in O(its length), whatever is pending behind it.
        pending = list(reversed(parts))
        real: List[bytes] = []
        # (st_dev, st_ino) of each directory of `real`, the root first: `..`
        # opens the parent straight from the current fd and checks it is this one.
        ids = [self.root_id]
        fd = os.dup(self.root_fd)  # always one open fd, owned here until returned
        links = 0
        try:
            while pending:
                name = pending.pop()
                if name in (b"", b"."):
                    continue
                if name == b"..":
                    if real:
                        real.pop()
                        ids.pop()
                        parent = self._open_parent(fd, real, ids[-1])
                        os.close(fd)
                        fd = parent
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None, ()
                    self._note_dir_change(fd, tuple(real))
                    if self.observer is not None:
                        self.observer.creating(fd, tuple(real) + (name,))
                    os.mkdir(name, 0o755, dir_fd=fd)
                    self.times_noted.add(tuple(real) + (name,))
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > self.limits.max_symlinks:
                        raise HostileLayerError(f"too many levels of symbolic links (more than "
                                                f"{self.limits.max_symlinks}, the symlink limit) resolving {_show(parts)}")
                    target = os.readlink(name, dir_fd=fd)
                    if target.startswith(b"/"):
                        root = os.dup(self.root_fd)
                        os.close(fd)
                        fd = root
                        real.clear()
                        del ids[1:]
                    pending.extend(reversed(target.split(b"/")))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if not create:
                        os.close(fd)
                        return None, ()
                    raise LayerError(f"{_show(parts)}: {_show(tuple(real) + (name,))} is not a directory")
                child = self._open_dir(fd, name)
                os.close(fd)
                fd = child
                real.append(name)
                ids.append((st.st_dev, st.st_ino))
                if len(real) > self.limits.max_depth:
                    raise LayerError(f"{_show(parts)} resolves deeper than the depth limit of "
                                     f"{self.limits.max_depth} directories")
        except BaseException:
            os.close(fd)
            raise
        return fd, tuple(real)

    def _open_parent(self, fd: int, real: List[bytes], expected: Tuple[int, int]) -> int:
        """A new fd on the parent of directory `fd`, whose real path is `real`.

        `..` from the fd is O(1) where walking `real` from the root is
        O(depth), which made long `..` chains quadratic. The parent must be the
        directory we came down through (only a concurrent rename could make it
        another); if not, walk from the root after all.
        """
        parent = os.open(b"..", _PATH_FLAGS, dir_fd=fd)
        st = os.fstat(parent)
        if (st.st_dev, st.st_ino) == expected:
            return parent
        os.close(parent)
        return self._reopen(tuple(real))

    def _reopen(self, real: PathKey) -> int:
        """Open a real path (no symlinks expected) from the root."""
        fd = os.dup(self.root_fd)
        try:
            for name in real:
                new_fd = self._open_dir(fd, name)
                os.close(fd)
                fd = new_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _note_dir_change(self, dir_fd: int, real: PathKey) -> None:
        """Remember a lower directory's times before we change its entries."""
        if not self.times_noted.add(real):
            return
        if self.observer is not None:
            self.observer.changing_entries(dir_fd, real)
        st = os.fstat(dir_fd)
        self.restore_times.add(real, st.st_atime_ns, st.st_mtime_ns)

    def _mark_upper(self, path: PathKey) -> None:
        # Deepest first, stopping at the first ancestor already there: every
        # path in the set has its ancestors in it too, so an entry costs O(1)
        # hashes rather than one per ancestor.
        for i in range(len(path), 0, -1):
            if not self.upper.add(path[:i]):
                return

    # -- removal -----------------------------------------------------------

    def _remove(self, parent_fd: int, name: bytes, st: os.stat_result, path: PathKey) -> None:
        """Remove the entry `name` (a whole subtree: without recursion, as a
        lower tree may be deeper than Python's limit); `path` is its real path."""
        self._forget_dir()
        if self.observer is not None and self.observer.removing(parent_fd, path, st):
            self.stats.removed += 1
            return
        if stat.S_ISDIR(st.st_mode):
            remove_at(parent_fd, os.fsdecode(name))
        else:
            os.unlink(name, dir_fd=parent_fd)
        self.stats.removed += 1

    def _clear_dir_at(self, parent_fd: int, name: bytes, keep: PathKey) -> None:
        """_clear_dir on the directory `name` of `parent_fd` (never through a symlink)."""
        fd = os.open(name, os.O_RDONLY | _DIR_FLAGS, dir_fd=parent_fd)
        try:
            self._clear_dir(fd, keep)
        finally:
            os.close(fd)

    def _clear_dir(self, dir_fd: int, keep: PathKey) -> None:
        """Remove the lower content of directory `keep` (its real path), sparing
        this layer's own entries and clearing their lower content in turn."""
        with os.scandir(dir_fd) as it:
            names = [os.fsencode(e.name) for e in it]
        noted = False
        for name in names:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            child = keep + (name,)
            if child in self.upper:
                if stat.S_ISDIR(st.st_mode):
                    self._clear_dir_at(dir_fd, name, child)
                continue
            if not noted:
                # A lower directory losing entries: its times are restored at the end.
                self._note_dir_change(dir_fd, keep)
                noted = True
            self._remove(dir_fd, name, st, child)

    def whiteout(self, parent: PathKey, target: bytes) -> None:
        """`.wh.<target>` in directory `parent`."""
        fd, real = self.resolve_dir(parent, create=False)
        if fd is None:
            return
        try:
            try:
                st = os.stat(target, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            path = real + (target,)
            if path in self.upper:
                if stat.S_ISDIR(st.st_mode):
                    self._clear_dir_at(fd, target, path)
                return
            self._note_dir_change(fd, real)
            self._remove(fd, target, st, path)
        finally:
            os.close(fd)

    def opaque(self, directory: PathKey) -> None:
        """`.wh..wh..opq` in `directory`: hide all of its lower content."""
        fd, real = self.resolve_dir(directory, create=True)
        assert fd is not None
        try:
            self._mark_upper(real)
            self._note_dir_change(fd, real)
            self._clear_dir_at(fd, b".", real)
        finally:
            os.close(fd)

    # -- entries -----------------------------------------------------------

    def apply_entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        raw = _encode(member.name)
        parts = _split_name(raw, "entry", self.limits)
        base = parts[-1] if parts else b""
        if any(p.startswith(_AUFS_META) for p in parts) and base != OPAQUE_MARKER:
            self.stats.skip(f"AUFS metadata {_show(parts)}")
            return
        if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
            raise HostileLayerError(f"entry {_show(parts)} lies under a whiteout name")
        if base == OPAQUE_MARKER:
            self.opaque(parts[:-1])
            return
        if base.startswith(WHITEOUT_PREFIX):
            target = base[len(WHITEOUT_PREFIX):]
            if target in (b"", b".", b".."):
                raise HostileLayerError(f"invalid whiteout {_show(parts)}")
            self.whiteout(parts[:-1], target)
            return
        if member.type not in _SUPPORTED_TYPES:
            raise LayerError(f"unsupported tar entry type {member.type!r} for {_show(parts)}")
        if not parts:
            if not member.isdir():
                raise HostileLayerError(f"entry {member.name!r} would replace the image root with a non-directory")
            if self.observer is not None:
                self.observer.changing_metadata(self.root_fd, b".", ())
            self._set_dir_metadata(self.root_fd, b".", member, ())
            return
        self._create(tf, member, parts)

    def _create(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parts: PathKey) -> None:
        name = parts[-1]
        link_fd: Optional[int] = None
        link_name = b""
        if member.islnk():
            link_parts = _split_name(_encode(member.linkname), f"hardlink target of {_show(parts)}", self.limits)
            if not link_parts:
                raise HostileLayerError(f"hardlink {_show(parts)} points at the image root")
            if link_parts[:len(parts)] == parts:
                # Replacing the entry would remove its own target first.
                raise LayerError(f"hardlink {_show(parts)} points inside itself ({member.linkname!r})")
            link_fd, _ = self.resolve_dir(link_parts[:-1], create=False)
            link_name = link_parts[-1]
            if link_fd is None:
                raise LayerError(f"hardlink {_show(parts)}: target {_show(link_parts)} does not exist")
        try:
            parent_fd, real_parent = self.resolve_dir(parts[:-1], create=True)
            assert parent_fd is not None
            try:
                self._create_in(tf, member, parent_fd, real_parent, name, link_fd, link_name)
            finally:
                os.close(parent_fd)
        finally:
            if link_fd is not None:
                os.close(link_fd)

    def _create_in(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, real_parent: PathKey,
                   name: bytes, link_fd: Optional[int], link_name: bytes) -> None:
        path = real_parent + (name,)
        try:
            existing: Optional[os.stat_result] = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if member.isdir() and existing is not None and stat.S_ISDIR(existing.st_mode):
            self._mark_upper(path)
            if self.observer is not None:
                self.observer.changing_metadata(parent_fd, name, path)
            self._set_dir_metadata(parent_fd, name, member, path)
            return
        if member.islnk():
            assert link_fd is not None
            try:
                target_st = os.stat(link_name, dir_fd=link_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise LayerError(f"hardlink {_show(path)}: target {member.linkname!r} does not exist") from None
            if stat.S_ISDIR(target_st.st_mode):
                raise LayerError(f"hardlink {_show(path)}: target {member.linkname!r} is a directory")
            if existing is not None and existing.st_ino == target_st.st_ino and existing.st_dev == target_st.st_dev:
                self._mark_upper(path)
                return  # already that inode (a link to itself)
        self._note_dir_change(parent_fd, real_parent)
        if existing is not None:
            self._remove(parent_fd, name, existing, path)
        if self.observer is not None:
            self.observer.creating(parent_fd, path)
        self._mark_upper(path)
        mode = stat.S_IMODE(member.mode)
        if member.isreg():
            self._write_file(tf, member, parent_fd, name, mode)
        elif member.isdir():
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            self._set_dir_metadata(parent_fd, name, member, path)
        elif member.issym():
            target = _encode(member.linkname)
            if b"\x00" in target:
                raise HostileLayerError(f"symlink {_show(path)} has a NUL byte in its target")
            if self.options.forbid_variant_symlinks and b"$(" in target:
                raise HostileLayerError(f"symlink {_show(path)} -> {member.linkname!r} would be a CVMFS variant symlink")
            os.symlink(target, name, dir_fd=parent_fd)
            self._chown(parent_fd, name, member)
            os.utime(name, ns=(_mtime_ns(member),) * 2, dir_fd=parent_fd, follow_symlinks=False)
        elif member.islnk():
            os.link(link_name, name, src_dir_fd=link_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
        elif member.isfifo() or member.ischr() or member.isblk():
            if member.isfifo():
                os.mkfifo(name, 0o600, dir_fd=parent_fd)
            elif not self.privileged:
                self.stats.skip(f"device {_show(path)} (not root)")
                return
            else:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent_fd)
            self._chown(parent_fd, name, member)
            self._set_xattrs_at(parent_fd, name, member)
            # Just created by us and not a symlink: chmod may follow.
            os.chmod(name, mode, dir_fd=parent_fd)
            os.utime(name, ns=(_mtime_ns(member),) * 2, dir_fd=parent_fd, follow_symlinks=False)
        else:
            raise LayerError(f"unsupported tar entry type {member.type!r} for {_show(path)}")

    def _write_file(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, name: bytes, mode: int) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
        try:
            source = tf.extractfile(member)
            if source is not None:
                # One reused buffer: allocating a fresh chunk per read fragments the heap.
                buffer = self.buffer
                while True:
                    n = source.readinto(buffer)
                    if not n:
                        break
                    view = memoryview(buffer)[:n]
                    while view:
                        view = view[os.write(fd, view):]
                    self.stats.bytes += n
                    if self.stats.bytes > self.limits.max_bytes:
                        raise LayerError(f"layer writes more than the limit of {self.limits.max_bytes} bytes "
                                         f"(the size limit), writing {member.name[:200]!r}")
            if self.privileged:
                os.fchown(fd, member.uid, member.gid)
            self._set_xattrs_fd(fd, member)
            os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
            os.utime(fd, ns=(_mtime_ns(member),) * 2)
        finally:
            os.close(fd)
        self.stats.files += 1

    def _set_dir_metadata(self, parent_fd: int, name: bytes, member: tarfile.TarInfo, path: PathKey) -> None:
        """The layer's own directory entry: its times are set at the end, so a
        later change of its entries needs none restored (a lower one's were
        kept by the observer's changing_metadata)."""
        self.times_noted.add(path)
        fd = os.open(name, os.O_RDONLY | _DIR_FLAGS, dir_fd=parent_fd)
        try:
            if self.privileged:
                os.fchown(fd, member.uid, member.gid)
            self._clear_xattrs_fd(fd)
            self._set_xattrs_fd(fd, member)
            mode = stat.S_IMODE(member.mode)
            os.fchmod(fd, mode if self.privileged else mode | 0o700)
        finally:
            os.close(fd)
        mtime = _mtime_ns(member)
        self.dir_times.add(path, mtime, mtime)

    def _chown(self, parent_fd: int, name: bytes, member: tarfile.TarInfo) -> None:
        if self.privileged:
            os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)

    # -- xattrs --------------------------------------------------------------

    def _xattrs(self, member: tarfile.TarInfo) -> List[Tuple[bytes, bytes]]:
        out = []
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            xname = _encode(key[len("SCHILY.xattr."):])
            if not xname.startswith(_ALLOWED_XATTR_PREFIXES) or any(p in xname for p in _FORBIDDEN_XATTR_PARTS):
                self.stats.skip(f"xattr {xname.decode(errors='replace')} on {member.name}")
                continue
            if xname == b"security.capability" and not self.privileged:
                self.stats.skip(f"xattr security.capability on {member.name} (not root)")
                continue
            out.append((xname, _encode(value)))
        return out

    def _set_xattrs_fd(self, fd: int, member: tarfile.TarInfo) -> None:
        for xname, value in self._xattrs(member):
            try:
                os.setxattr(fd, xname, value)
                if xname == b"security.capability":
                    self.stats.capabilities += 1
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                self.stats.skip(f"xattr {xname.decode(errors='replace')} on {member.name}: {exc.strerror}")

    def _set_xattrs_at(self, parent_fd: int, name: bytes, member: tarfile.TarInfo) -> None:
        if self._xattrs(member):
            self.stats.skip(f"xattrs on special file {member.name}")

    def _clear_xattrs_fd(self, fd: int) -> None:
        try:
            names = os.listxattr(fd)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                return
            raise
        for xname in names:
            if xname.encode().startswith(_ALLOWED_XATTR_PREFIXES):
                os.removexattr(fd, xname)

    # -- end of layer ------------------------------------------------------

    def finish(self) -> None:
        """Set directory times: restored for lower directories we changed,
        the layer's own for its directory entries (set last, so they win).
        Paths are re-resolved refusing symlinks, so a later entry cannot
        redirect these writes."""
        parent: Optional[Tuple[PathKey, int]] = None  # the last parent opened: records come grouped
        try:
            for log in (self.restore_times, self.dir_times):
                for path, atime, mtime in log:
                    parent = self._set_dir_times(path, atime, mtime, parent)
        finally:
            if parent is not None:
                os.close(parent[1])

    def _set_dir_times(self, path: PathKey, atime: int, mtime: int,
                       parent: Optional[Tuple[PathKey, int]]) -> Optional[Tuple[PathKey, int]]:
        """Set the times of `path`; takes and returns the cached (parent path,
        fd), which stays valid as nothing but times changes during finish()."""
        try:
            if not path:
                fd = os.open(b".", os.O_RDONLY | _DIR_FLAGS, dir_fd=self.root_fd)
            else:
                if parent is None or parent[0] != path[:-1]:
                    if parent is not None:
                        os.close(parent[1])
                        parent = None
                    parent = (path[:-1], self._reopen(path[:-1]))
                fd = os.open(path[-1], os.O_RDONLY | _DIR_FLAGS, dir_fd=parent[1])
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


def apply_layer(stream: BinaryIO, media_type: str, root: Union[str, Path], *,
                expected_diff_id: Optional[str] = None, options: ApplyOptions = ApplyOptions(),
                progress: Optional[Callable[[int, int], None]] = None,
                observer: Optional[ChangeObserver] = None) -> LayerStats:
    """Apply one layer blob (`stream`, compressed as `media_type` says) onto `root`.

    Returns what was done. Raises HostileLayerError for a layer that tries to
    escape the root, LayerError for one that is corrupt, unsupported or over a
    limit, and IntegrityError when the uncompressed stream does not hash to
    `expected_diff_id`. On any error the tree is partly changed: the caller
    applies into a staging area or a transaction it can throw away.
    `progress(entries, bytes)` is called after each entry; `observer` is told
    of every change to what was in the tree before (see ChangeObserver).
    """
    stats = LayerStats()
    root_fd = os.open(os.fspath(root), _PATH_FLAGS)
    reader = DigestingReader(stream, media_type, options.limits.max_bytes)
    applier: Optional[_Applier] = None
    try:
        applier = _Applier(root_fd, options, stats, observer)
        guard = _HeaderGuard(reader)
        try:
            # "r:" over a forward-only seekable reader: tarfile reads members
            # straight from it, without the extra buffer copies of stream mode.
            tf = tarfile.open(fileobj=guard, mode="r:", tarinfo=_TarInfo, encoding="utf-8", errors="surrogateescape")
        except tarfile.ReadError as exc:
            if reader.consumed == 0:
                tf = None  # a 0-byte layer is an empty layer
            else:
                raise LayerError(f"not a tar archive: {exc}") from None
        if tf is not None:
            try:
                last_bytes = 0
                for member in _members(tf, guard):
                    stats.entries += 1
                    if stats.entries > options.limits.max_entries:
                        raise LayerError(f"layer has more than {options.limits.max_entries} entries (the entry "
                                         f"limit); stopped at {member.name[:200]!r}")
                    applier.apply_entry(tf, member)
                    if progress:
                        progress(1, stats.bytes - last_bytes)
                        last_bytes = stats.bytes
            except tarfile.TarError as exc:
                raise LayerError(f"corrupt tar stream after {stats.entries} entries: {exc}") from None
            _check_end_of_archive(tf)
            applier.finish()
            # Drain through tarfile's own buffer: the DiffID covers every byte.
            while tf.fileobj.read(_COPY_CHUNK):
                pass
        reader.drain()
    finally:
        reader.close()
        if applier is not None:
            applier.close()
        os.close(root_fd)
    stats.diff_id = reader.digest
    if expected_diff_id and stats.diff_id != expected_diff_id:
        raise IntegrityError(f"layer content hashes to {stats.diff_id}, but the image config says {expected_diff_id}")
    return stats


def _check_end_of_archive(tf: tarfile.TarFile) -> None:
    """Match Go's archive/tar: a corrupt header is an error, and so is a zero
    block followed by a header (tarfile would stop silently at both)."""
    last = getattr(tf, "last_header_block", b"")
    if len(last) == tarfile.BLOCKSIZE and last.count(0) != tarfile.BLOCKSIZE:
        raise LayerError(f"invalid tar header at offset {tf.offset}; the layer is corrupt")
    if 0 < len(last) < tarfile.BLOCKSIZE:
        raise LayerError("tar stream is truncated inside a header")
    if len(last) == tarfile.BLOCKSIZE:
        following = tf.fileobj.read(tarfile.BLOCKSIZE)
        if following and following.count(0) != len(following):
            raise HostileLayerError("tar stream has a single zero block followed by more headers "
                                    "(parsers disagree on such archives)")
