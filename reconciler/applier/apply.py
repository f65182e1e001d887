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

Resolution work is bounded per path (`LayerLimits.max_resolve_steps`
components, link targets included) and not paid twice within a layer: what
each walked name is, where each symlink led, and the last path's
symlink-free part are kept, each forgotten when the layer removes anything
it relied on (only a removal changes what an existing path resolves to). A
kept resolution is charged what it cost, so the limits refuse the same paths
whatever came before.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import tarfile
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Dict, FrozenSet, Iterator, List, Optional, Protocol, Set, Tuple, Union

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
# Symlink resolutions kept from one entry to the next, and the paths they
# depend on (all of them together): least recently used ones go first.
_LINK_CACHE_ENTRIES = 4096
_LINK_CACHE_PATHS = 1 << 16
# The kernel's PATH_MAX: a symlink's target must be shorter.
_SYMLINK_MAX = 4096
# What the names walked are is kept up to about this many bytes (then dropped, and kept anew).
_ENTRIES_BYTES = 8 << 20
_ENTRY_COST = 200
# Directories a walk has seen are reopened this many bytes of path per open.
_KNOWN_PATH_BYTES = 2048

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


_DirId = Tuple[int, int]  # (st_dev, st_ino)


def _path_key(parent_key: int, name: bytes) -> int:
    """The identity of a path, from its parent's: a hash, so equal paths share it
    (a collision only costs a needless cache invalidation, never a wrong result)."""
    return hash((parent_key, name))


def _path_keys(path: PathKey) -> List[int]:
    """_path_key of every non-empty prefix of `path`, shortest first."""
    keys, key = [], 0
    for name in path:
        key = _path_key(key, name)
        keys.append(key)
    return keys


@dataclass(frozen=True)
class _LinkResolution:
    """Where a symlink's target led, as a directory: kept to skip walking it again."""

    real: PathKey
    ids: Tuple[_DirId, ...]  # of the root and of each directory of `real`
    keys: Tuple[int, ...]  # _path_key of the root (0) and of each prefix of `real`
    steps: int  # components walked in the target (nested links included): charged again on reuse
    links: int  # nested links followed: charged again on reuse
    # Every path the resolution relied on: the link, its ancestors, each
    # directory and link entered. Removing any of them makes it stale.
    paths: FrozenSet[int]


@dataclass
class _Frame:
    """A symlink target being walked: done when the pending stack is back to `mark`."""

    mark: int
    link: PathKey
    steps: int
    links: int
    paths: Set[int]


class _Cursor:
    """Where one path resolution stands: the real path walked so far (with the
    identity of each directory) and one fd on a directory along it, moved
    lazily. Stepping into a directory already looked at, or out with `..`,
    costs no system call until something must be looked up where we are."""

    def __init__(self, root_fd: int, root_id: _DirId) -> None:
        self.root_fd = root_fd
        self.real: List[bytes] = []
        self.ids: List[_DirId] = [root_id]
        self.keys: List[int] = [0]
        self.fd = os.dup(root_fd)
        self.fd_path: List[bytes] = []  # what self.fd is open on
        self.fd_ids: List[_DirId] = [root_id]
        self.common = 0  # components `real` and `fd_path` share

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def down(self, name: bytes, ident: _DirId) -> None:
        self.real.append(name)
        self.ids.append(ident)
        self.keys.append(_path_key(self.keys[-1], name))

    def up(self) -> None:
        """`..`: clamped at the root."""
        if self.real:
            self.real.pop()
            self.ids.pop()
            self.keys.pop()
            self.common = min(self.common, len(self.real))

    def to_root(self) -> None:
        del self.real[:]
        del self.ids[1:]
        del self.keys[1:]
        self.common = 0

    def jump(self, found: _LinkResolution) -> None:
        self.real, self.ids, self.keys = list(found.real), list(found.ids), list(found.keys)
        common = 0
        for a, b in zip(self.real, self.fd_path):
            if a != b:
                break
            common += 1
        self.common = common

    def start_at(self, prefix: PathKey, ids: List[_DirId], keys: List[int], fd: int, depth: int) -> None:
        """Begin at prefix[:depth], with `fd` (now the cursor's) open on `prefix`."""
        self.close()
        self.real, self.ids, self.keys = list(prefix[:depth]), ids[:depth + 1], keys[:depth + 1]
        self.fd, self.fd_path, self.fd_ids, self.common = fd, list(prefix), list(ids), depth

    def here(self) -> int:
        """An fd on the directory at `real` (owned by the cursor)."""
        climb = len(self.fd_path) - self.common
        if climb:
            if climb <= 2:
                self._climb(climb)
            else:
                self._reset()
        self._descend()
        self.common = len(self.real)
        return self.fd

    def _climb(self, levels: int) -> None:
        """`..` from the fd, `levels` times. Each parent must be the directory we
        came down through (only a concurrent rename could make it another);
        if not, start from the root after all."""
        for _ in range(levels):
            parent = os.open(b"..", _PATH_FLAGS, dir_fd=self.fd)
            os.close(self.fd)
            self.fd = parent
            self.fd_path.pop()
            self.fd_ids.pop()
            st = os.fstat(parent)
            if (st.st_dev, st.st_ino) != self.fd_ids[-1]:
                self._reset()
                return

    def _reset(self) -> None:
        fd = os.dup(self.root_fd)
        os.close(self.fd)
        self.fd = fd
        self.fd_path, self.fd_ids = [], self.fd_ids[:1]

    def _descend(self) -> None:
        """The fd from `fd_path` (a prefix of `real`) down to `real`, whose
        directories the walk has seen: several at a time, each group checked by
        the (dev, ino) the walk found at its end (a directory has one name, so
        the same inode is the same place, whatever the kernel followed to get
        there); a group that does not end there is walked one O_NOFOLLOW
        component at a time."""
        i, depth = len(self.fd_path), len(self.real)
        while i < depth:
            j, size = i + 1, len(self.real[i])
            while j < depth and size + 1 + len(self.real[j]) <= _KNOWN_PATH_BYTES:
                size += 1 + len(self.real[j])
                j += 1
            child = os.open(b"/".join(self.real[i:j]), _PATH_FLAGS, dir_fd=self.fd)
            if j - i > 1:
                st = os.fstat(child)
                if (st.st_dev, st.st_ino) != self.ids[j]:
                    os.close(child)
                    j = i + 1
                    child = os.open(self.real[i], _PATH_FLAGS, dir_fd=self.fd)
            os.close(self.fd)
            self.fd = child
            self.fd_path.extend(self.real[i:j])
            self.fd_ids.extend(self.ids[i + 1:j + 1])
            i = j

    def take(self) -> int:
        """The fd on `real`, now the caller's."""
        fd = self.here()
        self.fd = -1
        return fd


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
        # Symlinks resolved in this layer (by real path) and, for each path
        # they relied on (by _path_key), which of them did: a removal there
        # forgets them. Nothing but a removal changes what an existing path resolves to.
        # The longest leading part of the last path walked that held no symlink:
        # (those names, ids and keys of its directories, an fd on it). The next
        # path starts from what it shares with it (entries come sorted, or
        # nearly). Any removal drops it, like `_last_dir`.
        self._plain: Optional[Tuple[PathKey, List[_DirId], List[int], int]] = None
        # What each name in each directory walked is (by the directory's
        # (dev, ino)): a symlink and its target, a directory and its id, or
        # something else. A removal drops the name and, for a directory, all
        # that is known under it (an inode number may come back for another
        # directory); `_below` says which directories hold which.
        self._entries: Dict[_DirId, Dict[bytes, Tuple[int, object]]] = {}
        self._below: Dict[_DirId, Set[_DirId]] = {}
        self._entries_cost = 0
        self._links: "OrderedDict[PathKey, _LinkResolution]" = OrderedDict()
        self._link_deps: Dict[int, Set[PathKey]] = {}
        self._link_paths = 0

    def close(self) -> None:
        """Release the cached directory fd and the spooled directory times."""
        self._forget_dir()
        self.restore_times.close()
        self.dir_times.close()

    def _forget_dir(self) -> None:
        if self._last_dir is not None:
            os.close(self._last_dir[1])
            self._last_dir = None
        if self._plain is not None:
            os.close(self._plain[3])
            self._plain = None

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
            if self._last_dir is not None:
                os.close(self._last_dir[1])
            self._last_dir = (parts, os.dup(fd), real)
        return fd, real

    def _resolve_dir(self, parts: PathKey, create: bool) -> Tuple[Optional[int], PathKey]:
        # Components still to walk, the next one last: a symlink's target is
        # pushed in O(its length), whatever is pending behind it.
        cursor = _Cursor(self.root_fd, self.root_id)
        steps = links = 0
        plain = self._plain
        if plain is not None:
            # Begin where the last path's symlink-free part and this one part:
            # those components cost what walking them would (the limits hold).
            shared, most = 0, min(len(plain[0]), len(parts))
            while shared < most and plain[0][shared] == parts[shared]:
                shared += 1
            if shared:
                cursor.start_at(plain[0], plain[1], plain[2], os.dup(plain[3]), shared)
                steps = shared
        pending = list(reversed(parts[steps:]))
        # Until the first symlink, the walk is the path's own names: the part to keep.
        plain_part: Optional[int] = None
        entries = self._entries
        frames: List[_Frame] = []  # symlink targets being walked, innermost last
        limits = self.limits
        try:
            while True:
                while frames and len(pending) == frames[-1].mark:
                    self._keep_link(frames.pop(), cursor, steps, links, frames)
                if not pending:
                    break
                name = pending.pop()
                if name in (b"", b"."):
                    continue
                steps += 1
                if steps > limits.max_resolve_steps:
                    raise HostileLayerError(self._over_steps(parts))
                if name == b"..":
                    cursor.up()
                    continue
                here = entries.get(cursor.ids[-1])
                known = None if here is None else here.get(name)
                if known is None:
                    known = self._look_up(cursor, name, create)
                    if known is None:
                        return None, ()
                    self._note_entry(cursor.ids, name, known)
                kind, value = known
                if (kind == stat.S_IFDIR and pending and pending[-1] == b".."
                        and not (frames and len(pending) == frames[-1].mark)
                        and len(cursor.real) < limits.max_depth):
                    # `dir/..` is where we are: no need to step in and out.
                    pending.pop()
                    steps += 1
                    if steps > limits.max_resolve_steps:
                        raise HostileLayerError(self._over_steps(parts))
                    if frames:
                        frames[-1].paths.add(_path_key(cursor.keys[-1], name))
                    continue
                if kind == stat.S_IFLNK:
                    if plain_part is None:
                        plain_part = len(cursor.real)
                        self._keep_plain(cursor)
                    links += 1
                    if links > limits.max_symlinks:
                        raise HostileLayerError(f"too many levels of symbolic links (more than "
                                                f"{limits.max_symlinks}, the symlink limit) resolving {_show(parts)}")
                    link = tuple(cursor.real) + (name,)
                    done = self._links.get(link)
                    if done is not None:
                        # Resolved before and nothing it relied on was removed since:
                        # the same walk, charged the same, without the system calls.
                        self._links.move_to_end(link)
                        steps += done.steps
                        links += done.links
                        if steps > limits.max_resolve_steps:
                            raise HostileLayerError(self._over_steps(parts))
                        if links > limits.max_symlinks:
                            raise HostileLayerError(f"too many levels of symbolic links (more than "
                                                    f"{limits.max_symlinks}, the symlink limit) resolving "
                                                    f"{_show(parts)}")
                        cursor.jump(done)
                        if frames:
                            frames[-1].paths.update(done.paths)
                        continue
                    frames.append(_Frame(len(pending), link, steps, links,
                                         set(cursor.keys[1:]) | {_path_key(cursor.keys[-1], name)}))
                    target = value
                    assert isinstance(target, bytes)
                    if target.startswith(b"/"):
                        cursor.to_root()
                    pending.extend(reversed(target.split(b"/")))
                    continue
                if kind != stat.S_IFDIR:
                    if not create:
                        return None, ()
                    raise LayerError(f"{_show(parts)}: {_show(tuple(cursor.real) + (name,))} is not a directory")
                assert isinstance(value, tuple)
                cursor.down(name, value)
                if frames:
                    frames[-1].paths.add(cursor.keys[-1])
                if len(cursor.real) > limits.max_depth:
                    raise LayerError(f"{_show(parts)} resolves deeper than the depth limit of "
                                     f"{limits.max_depth} directories")
            if plain_part is None:
                self._keep_plain(cursor)
            return cursor.take(), tuple(cursor.real)
        finally:
            cursor.close()

    def _note_entry(self, ids: List[_DirId], name: bytes, known: Tuple[int, object]) -> None:
        """Keep what `name` is in the directory ids[-1] (`ids`: its ancestors' ids, the root first)."""
        cost = _ENTRY_COST + len(name) + (len(known[1]) if isinstance(known[1], bytes) else 0)
        if self._entries_cost + cost > _ENTRIES_BYTES:
            self._entries.clear()
            self._below.clear()
            self._entries_cost = 0
        here = self._entries.get(ids[-1])
        if here is None:
            here = self._entries[ids[-1]] = {}
            # Which directories hold which: removing one forgets all that is known under it.
            for i in range(len(ids) - 1, 0, -1):
                children = self._below.setdefault(ids[i - 1], set())
                if ids[i] in children:
                    break
                children.add(ids[i])
        here[name] = known
        self._entries_cost += cost

    def _forget_entry(self, parent_fd: int, name: bytes, st: os.stat_result) -> None:
        """`name` in `parent_fd` (lstat `st`) is being removed."""
        if not self._entries:
            return
        parent_st = os.fstat(parent_fd)
        parent_id = (parent_st.st_dev, parent_st.st_ino)
        here = self._entries.get(parent_id)
        if here is not None:
            here.pop(name, None)
        if stat.S_ISDIR(st.st_mode):
            self._below.get(parent_id, set()).discard((st.st_dev, st.st_ino))
            doomed = [(st.st_dev, st.st_ino)]
            while doomed:
                gone = doomed.pop()
                self._entries.pop(gone, None)
                doomed.extend(self._below.pop(gone, ()))

    def _keep_plain(self, cursor: _Cursor) -> None:
        """Where the cursor stands is the symlink-free leading part of the path
        being walked: keep it for the next one."""
        fd = os.dup(cursor.here())
        if self._plain is not None:
            os.close(self._plain[3])
        self._plain = (tuple(cursor.real), list(cursor.ids), list(cursor.keys), fd)

    def _over_steps(self, parts: PathKey) -> str:
        return (f"resolving {_show(parts)[:200]} walks more than {self.limits.max_resolve_steps} path components "
                "(the resolution limit), symlink targets included")

    def _look_up(self, cursor: _Cursor, name: bytes, create: bool) -> Optional[Tuple[int, object]]:
        """What `name` is where the cursor stands: (S_IFLNK, target), (S_IFDIR,
        its id) or (0, None) for anything else. None when it is missing and not
        `create`; with `create`, a missing one is made a directory."""
        fd = cursor.here()
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            if not create:
                return None
            real = tuple(cursor.real)
            self._note_dir_change(fd, real)
            if self.observer is not None:
                self.observer.creating(fd, real + (name,))
            os.mkdir(name, 0o755, dir_fd=fd)
            self.times_noted.add(real + (name,))
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return stat.S_IFLNK, os.readlink(name, dir_fd=fd)
        if stat.S_ISDIR(st.st_mode):
            return stat.S_IFDIR, (st.st_dev, st.st_ino)
        return 0, None

    # -- the symlink cache -------------------------------------------------

    def _keep_link(self, frame: _Frame, cursor: _Cursor, steps: int, links: int, frames: List[_Frame]) -> None:
        """A symlink's target is walked: keep where it led and what it relied on."""
        if frames:
            frames[-1].paths.update(frame.paths)
        if len(frame.paths) > _LINK_CACHE_PATHS // 4:
            return  # too big to keep: walked again next time (within the step limit)
        found = _LinkResolution(tuple(cursor.real), tuple(cursor.ids), tuple(cursor.keys),
                                steps - frame.steps, links - frame.links, frozenset(frame.paths))
        self._drop_link(frame.link)
        self._links[frame.link] = found
        if frames:
            # Met inside another link's target: that one is what the next entry
            # will ask for. Dropped first, so a layer of long chains of links
            # cannot push out the resolutions of the chains' heads.
            self._links.move_to_end(frame.link, last=False)
        self._link_paths += len(found.paths)
        for key in found.paths:
            self._link_deps.setdefault(key, set()).add(frame.link)
        while len(self._links) > _LINK_CACHE_ENTRIES or self._link_paths > _LINK_CACHE_PATHS:
            self._drop_link(next(iter(self._links)))

    def _drop_link(self, link: PathKey) -> None:
        found = self._links.pop(link, None)
        if found is None:
            return
        self._link_paths -= len(found.paths)
        for key in found.paths:
            users = self._link_deps.get(key)
            if users is not None:
                users.discard(link)
                if not users:
                    del self._link_deps[key]

    def _forget_links(self, path: PathKey) -> None:
        """`path` (a real path) is being removed: forget every resolution that went
        through it. One that went under it went through it too (walks go down
        one directory at a time, and a relative link relied on its ancestors)."""
        if not self._links or not path:
            return
        for link in list(self._link_deps.get(_path_keys(path)[-1], ())):
            self._drop_link(link)

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
        self._forget_links(path)
        self._forget_entry(parent_fd, name, st)
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
        link_real: PathKey = ()
        if member.islnk():
            link_parts = _split_name(_encode(member.linkname), f"hardlink target of {_show(parts)}", self.limits)
            if not link_parts:
                raise HostileLayerError(f"hardlink {_show(parts)} points at the image root")
            if link_parts[:len(parts)] == parts:
                # Replacing the entry would remove its own target first.
                raise HostileLayerError(f"hardlink {_show(parts)} points inside itself ({member.linkname!r})")
            link_fd, link_real = self.resolve_dir(link_parts[:-1], create=False)
            link_name = link_parts[-1]
            link_real = link_real + (link_name,)
            if link_fd is None:
                raise LayerError(f"hardlink {_show(parts)}: target {_show(link_parts)} does not exist")
        try:
            parent_fd, real_parent = self.resolve_dir(parts[:-1], create=True)
            assert parent_fd is not None
            try:
                self._create_in(tf, member, parent_fd, real_parent, name, link_fd, link_name, link_real, parts)
            finally:
                os.close(parent_fd)
        finally:
            if link_fd is not None:
                os.close(link_fd)

    def _create_in(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, real_parent: PathKey,
                   name: bytes, link_fd: Optional[int], link_name: bytes, link_real: PathKey = (),
                   entry: PathKey = ()) -> None:
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
            if existing is not None and link_real[:len(path)] == path:
                # The target was resolved (through symlinks) to a place under the entry
                # this one replaces: removing it first would pull the target away (or,
                # under an undo log, into the log). The position of the layer must not matter.
                raise HostileLayerError(f"hardlink {_show(entry)} points inside itself: its target "
                                        f"{member.linkname!r} resolves to {_show(link_real)}, under "
                                        f"{_show(path)}, which the entry replaces")
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
            if len(target) >= _SYMLINK_MAX:
                raise LayerError(f"symlink {_show(path)} has a target of {len(target)} bytes; Linux stores at most "
                                 f"{_SYMLINK_MAX - 1} (PATH_MAX), so the image cannot be unpacked here")
            if self.options.forbid_variant_symlinks and b"$(" in target:
                raise HostileLayerError(f"the image has a symlink {_show(path)} -> {member.linkname!r} that CernVM-FS "
                                        "would expand per client as a variant symlink ($(VARIABLE) in its target), "
                                        "so it is refused: published, it would not point where the image says")
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
