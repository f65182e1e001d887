"""Apply one OCI layer onto a directory tree, straight from its blob stream.

Safety rests on three rules, whatever the tar says:
- every path is resolved component by component from an fd on the root, with
  `O_NOFOLLOW`; symlinks met on the way are resolved by hand as if the root
  were `/` (absolute targets re-rooted, `..` clamped at the root, at most
  255 links), and the final component is never followed;
- an existing final component is unlinked (or its subtree removed) and
  recreated with `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing is ever written
  through a symlink or into an existing (possibly hardlinked) inode; only a
  directory over a directory keeps its inode and gets new metadata;
- metadata is set through fds or `*at` calls that do not follow links, and the
  deferred directory mtimes re-resolve their path refusing any symlink.

Whiteouts follow the OCI image spec: `.wh.<name>` removes lower content,
`.wh..wh..opq` hides a directory's lower content wherever it stands in the
layer, and entries of the same layer survive both.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Dict, List, Optional, Set, Tuple, Union

from ..errors import HostileLayerError, IntegrityError, LayerError
from .decompress import DigestingReader

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

PathKey = Tuple[bytes, ...]
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
    max_symlinks: int = 255  # followed while resolving one path


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


@dataclass
class LayerStats:
    """What applying a layer did."""

    entries: int = 0
    files: int = 0
    bytes: int = 0
    removed: int = 0
    skipped: List[str] = field(default_factory=list)
    diff_id: str = ""


class _TarInfo(tarfile.TarInfo):
    """tarfile's member parser with two changes: global PAX headers are
    ignored (tarfile would apply them to later members, unlike Go's archive/tar),
    and the last header block read is kept to tell a clean end of archive from
    a corrupt header (tarfile stops silently on both)."""

    @classmethod
    def fromtarfile(cls, tf):  # type: ignore[override]
        buf = tf.fileobj.read(tarfile.BLOCKSIZE)
        tf.last_header_block = buf
        obj = cls.frombuf(buf, tf.encoding, tf.errors)
        obj.offset = tf.fileobj.tell() - tarfile.BLOCKSIZE
        return obj._proc_member(tf)

    def _proc_pax(self, tf):  # type: ignore[override]
        if self.type == tarfile.XGLTYPE:
            tf.fileobj.read(self._block(self.size))
            return self.fromtarfile(tf)
        return super()._proc_pax(tf)


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _split_name(raw: bytes, what: str, limits: LayerLimits) -> PathKey:
    """Normalize a tar name: `/x`, `./x`, `x//y` and `x/` are one path. `..` is refused."""
    if b"\x00" in raw:
        raise HostileLayerError(f"{what} {raw[:200]!r} contains a NUL byte")
    if len(raw) > limits.max_path_bytes:
        raise LayerError(f"{what} is {len(raw)} bytes long, over the limit of {limits.max_path_bytes}")
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise HostileLayerError(f"{what} {raw[:200]!r} climbs out with '..'")
    if len(parts) > limits.max_depth:
        raise LayerError(f"{what} is {len(parts)} directories deep, over the limit of {limits.max_depth}")
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

    def __init__(self, root_fd: int, options: ApplyOptions, stats: LayerStats) -> None:
        self.root_fd = root_fd
        self.options = options
        self.limits = options.limits
        self.privileged = options.privileged if options.privileged is not None else os.geteuid() == 0
        self.stats = stats
        # Real paths this layer created or changed, and all their ancestors:
        # whiteouts and opaque markers never remove them.
        self.upper: Set[PathKey] = set()
        self.dir_times: Dict[PathKey, int] = {}
        self.restore_times: Dict[PathKey, Tuple[int, int]] = {}
        self.created_dirs: Set[PathKey] = set()
        self.buffer = bytearray(_COPY_CHUNK)
        # The last directory resolved (entries come grouped by directory):
        # (entry path, fd, real path). Any removal drops it, as only a removal
        # can change what an existing path resolves to.
        self._last_dir: Optional[Tuple[PathKey, int, PathKey]] = None

    def close(self) -> None:
        self._forget_dir()

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
        pending = list(parts)
        real: List[bytes] = []
        fd = os.dup(self.root_fd)
        links = 0
        try:
            while pending:
                name = pending.pop(0)
                if name in (b"", b"."):
                    continue
                if name == b"..":
                    if real:
                        real.pop()
                        os.close(fd)
                        fd = self._reopen(tuple(real))
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None, ()
                    self._note_dir_change(fd, tuple(real))
                    os.mkdir(name, 0o755, dir_fd=fd)
                    self.created_dirs.add(tuple(real) + (name,))
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > self.limits.max_symlinks:
                        raise HostileLayerError(f"more than {self.limits.max_symlinks} symlinks resolving {_show(parts)}")
                    target = os.readlink(name, dir_fd=fd)
                    if target.startswith(b"/"):
                        real = []
                        os.close(fd)
                        fd = os.dup(self.root_fd)
                    pending[:0] = [p for p in target.split(b"/") if p]
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if not create:
                        os.close(fd)
                        return None, ()
                    raise LayerError(f"{_show(parts)}: {_show(tuple(real) + (name,))} is not a directory")
                new_fd = self._open_dir(fd, name)
                os.close(fd)
                fd = new_fd
                real.append(name)
                if len(real) > self.limits.max_depth:
                    raise LayerError(f"{_show(parts)} resolves deeper than {self.limits.max_depth} directories")
        except BaseException:
            os.close(fd)
            raise
        return fd, tuple(real)

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
        if real in self.restore_times or real in self.created_dirs:
            return
        st = os.fstat(dir_fd)
        self.restore_times[real] = (st.st_atime_ns, st.st_mtime_ns)

    def _mark_upper(self, path: PathKey) -> None:
        for i in range(1, len(path) + 1):
            self.upper.add(path[:i])

    # -- removal -----------------------------------------------------------

    def _remove(self, parent_fd: int, name: bytes, st: os.stat_result) -> None:
        self._forget_dir()
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, os.O_RDONLY | _DIR_FLAGS, dir_fd=parent_fd)
            try:
                if not self.privileged:
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
                self._clear_dir(fd, keep=None)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
        self.stats.removed += 1

    def _clear_dir_at(self, parent_fd: int, name: bytes, keep: Optional[PathKey]) -> None:
        """_clear_dir on the directory `name` of `parent_fd` (never through a symlink)."""
        fd = os.open(name, os.O_RDONLY | _DIR_FLAGS, dir_fd=parent_fd)
        try:
            self._clear_dir(fd, keep)
        finally:
            os.close(fd)

    def _clear_dir(self, dir_fd: int, keep: Optional[PathKey]) -> None:
        """Remove a directory's content; with `keep` (its real path), spare this
        layer's own entries and clear their lower content recursively."""
        with os.scandir(dir_fd) as it:
            names = [os.fsencode(e.name) for e in it]
        for name in names:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            child = keep + (name,) if keep is not None else None
            if child is not None and child in self.upper:
                if stat.S_ISDIR(st.st_mode):
                    self._clear_dir_at(dir_fd, name, child)
                continue
            self._remove(dir_fd, name, st)

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
            self._remove(fd, target, st)
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
            self.stats.skipped.append(f"AUFS metadata {_show(parts)}")
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
            self._remove(parent_fd, name, existing)
        self._mark_upper(path)
        mode = stat.S_IMODE(member.mode)
        if member.isreg():
            self._write_file(tf, member, parent_fd, name, mode)
        elif member.isdir():
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            self.created_dirs.add(path)
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
                self.stats.skipped.append(f"device {_show(path)} (not root)")
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
                        raise LayerError(f"layer writes more than the limit of {self.limits.max_bytes} bytes")
            if self.privileged:
                os.fchown(fd, member.uid, member.gid)
            self._set_xattrs_fd(fd, member)
            os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
            os.utime(fd, ns=(_mtime_ns(member),) * 2)
        finally:
            os.close(fd)
        self.stats.files += 1

    def _set_dir_metadata(self, parent_fd: int, name: bytes, member: tarfile.TarInfo, path: PathKey) -> None:
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
        self.dir_times[path] = _mtime_ns(member)

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
                self.stats.skipped.append(f"xattr {xname.decode(errors='replace')} on {member.name}")
                continue
            if xname == b"security.capability" and not self.privileged:
                self.stats.skipped.append(f"xattr security.capability on {member.name} (not root)")
                continue
            out.append((xname, _encode(value)))
        return out

    def _set_xattrs_fd(self, fd: int, member: tarfile.TarInfo) -> None:
        for xname, value in self._xattrs(member):
            try:
                os.setxattr(fd, xname, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                self.stats.skipped.append(f"xattr {xname.decode(errors='replace')} on {member.name}: {exc.strerror}")

    def _set_xattrs_at(self, parent_fd: int, name: bytes, member: tarfile.TarInfo) -> None:
        if self._xattrs(member):
            self.stats.skipped.append(f"xattrs on special file {member.name}")

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
        the layer's own for its directory entries. Paths are re-resolved
        refusing symlinks, so a later entry cannot redirect these writes."""
        for path, (atime, mtime) in self.restore_times.items():
            if path not in self.dir_times:
                self._set_dir_times(path, atime, mtime)
        for path, mtime in self.dir_times.items():
            self._set_dir_times(path, mtime, mtime)

    def _set_dir_times(self, path: PathKey, atime: int, mtime: int) -> None:
        try:
            fd = os.open(b".", os.O_RDONLY | _DIR_FLAGS, dir_fd=self.root_fd) if not path else None
            if fd is None:
                parent = self._reopen(path[:-1])
                try:
                    fd = os.open(path[-1], os.O_RDONLY | _DIR_FLAGS, dir_fd=parent)
                finally:
                    os.close(parent)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed or replaced later in this layer
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return  # replaced by a symlink later in this layer: never follow it
            raise
        try:
            os.utime(fd, ns=(atime, mtime))
        finally:
            os.close(fd)


def apply_layer(stream: BinaryIO, media_type: str, root: Union[str, Path], *,
                expected_diff_id: Optional[str] = None, options: ApplyOptions = ApplyOptions(),
                progress: Optional[Callable[[int, int], None]] = None) -> LayerStats:
    """Apply one layer blob (`stream`, compressed as `media_type` says) onto `root`.

    Returns what was done. Raises HostileLayerError for a layer that tries to
    escape the root, LayerError for one that is corrupt, unsupported or over a
    limit, and IntegrityError when the uncompressed stream does not hash to
    `expected_diff_id`. On any error the tree is partly changed: the caller
    applies into a staging area or a transaction it can throw away.
    `progress(entries, bytes)` is called after each entry.
    """
    stats = LayerStats()
    root_fd = os.open(os.fspath(root), _PATH_FLAGS)
    reader = DigestingReader(stream, media_type, options.limits.max_bytes)
    applier: Optional[_Applier] = None
    try:
        applier = _Applier(root_fd, options, stats)
        try:
            # "r:" over a forward-only seekable reader: tarfile reads members
            # straight from it, without the extra buffer copies of stream mode.
            tf = tarfile.open(fileobj=reader, mode="r:", tarinfo=_TarInfo, encoding="utf-8", errors="surrogateescape")
        except tarfile.ReadError as exc:
            if reader.consumed == 0:
                tf = None  # a 0-byte layer is an empty layer
            else:
                raise LayerError(f"not a tar archive: {exc}") from None
        if tf is not None:
            try:
                last_bytes = 0
                for member in tf:
                    stats.entries += 1
                    if stats.entries > options.limits.max_entries:
                        raise LayerError(f"layer has more than {options.limits.max_entries} entries")
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
