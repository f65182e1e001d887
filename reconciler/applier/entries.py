"""Creating the tree's entries from tar members, one function per type.

Each is called where nothing stands at `name` in `parent_fd` any more (the
applier removed what was there), so it creates with `O_CREAT|O_EXCL|
O_NOFOLLOW`, `mkdir`, `symlink`, `link` or `mknod`, and sets metadata
through the fd or `*at` calls that do not follow links: nothing is ever
written through a symlink or into an existing (possibly hardlinked) inode.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from typing import Optional

from ..dirfd import DIR_FLAGS
from ..errors import HostileLayerError, LayerError
from .layer import LayerState
from .names import encode, show, split_name
from .pathset import PathKey
from .xattrs import clear_xattrs_fd, note_special_xattrs, set_xattrs_fd

# The kernel's PATH_MAX: a symlink's target must be shorter.
_SYMLINK_MAX = 4096


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in ns: the PAX one (sub-second) when there is one."""
    text = member.pax_headers.get("mtime")
    if text:
        whole, _, frac = text.partition(".")
        try:
            sign = -1 if whole.startswith("-") else 1
            return int(whole) * 1_000_000_000 + sign * int((frac + "000000000")[:9] or 0)
        except ValueError:
            pass
    return int(member.mtime) * 1_000_000_000


def write_regular(layer: LayerState, tf: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, name: bytes,
                  mode: int) -> None:
    """A regular file: its data, then owner, xattrs, mode and times."""
    limits, stats = layer.limits, layer.stats
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
    try:
        source = tf.extractfile(member)
        if source is not None:
            buffer = layer.buffer
            while True:
                n = source.readinto(buffer)  # type: ignore[attr-defined]  # an ExFileObject (BufferedReader)
                if not n:
                    break
                view = memoryview(buffer)[:n]
                while view:
                    view = view[os.write(fd, view):]
                stats.bytes += n
                if stats.bytes > limits.max_bytes:
                    raise LayerError(f"layer writes more than the limit of {limits.max_bytes} bytes "
                                     f"(the size limit), writing {member.name[:200]!r}")
        if layer.privileged:
            os.fchown(fd, member.uid, member.gid)
        set_xattrs_fd(fd, member, layer.privileged, stats)
        os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
        os.utime(fd, ns=(mtime_ns(member),) * 2)
    finally:
        os.close(fd)
    stats.files += 1


def make_directory(layer: LayerState, member: tarfile.TarInfo, parent_fd: int, name: bytes, path: PathKey) -> None:
    """A new directory (u+rwx only until its metadata is set)."""
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    set_dir_metadata(layer, parent_fd, name, member, path)


def set_dir_metadata(layer: LayerState, parent_fd: int, name: bytes, member: tarfile.TarInfo, path: PathKey) -> None:
    """The layer's own directory entry: its times are set at the end, so a
    later change of its entries needs none restored (a lower one's were
    kept by the observer's changing_metadata)."""
    layer.times.settled(path)
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        if layer.privileged:
            os.fchown(fd, member.uid, member.gid)
        clear_xattrs_fd(fd)
        set_xattrs_fd(fd, member, layer.privileged, layer.stats)
        mode = stat.S_IMODE(member.mode)
        # Unprivileged, we must be able to write into it for later entries and layers.
        os.fchmod(fd, mode if layer.privileged else mode | 0o700)
    finally:
        os.close(fd)
    layer.times.own(path, mtime_ns(member))


def make_symlink(layer: LayerState, member: tarfile.TarInfo, parent_fd: int, name: bytes, path: PathKey) -> None:
    """A symlink, its target checked for what Linux and CernVM-FS would not store as is."""
    target = encode(member.linkname)
    if b"\x00" in target:
        raise HostileLayerError(f"symlink {show(path)} has a NUL byte in its target")
    if len(target) >= _SYMLINK_MAX:
        raise LayerError(f"symlink {show(path)} has a target of {len(target)} bytes; Linux stores at most "
                         f"{_SYMLINK_MAX - 1} (PATH_MAX), so the image cannot be unpacked here")
    if layer.options.forbid_variant_symlinks and b"$(" in target:
        raise HostileLayerError(f"the image has a symlink {show(path)} -> {member.linkname!r} that CernVM-FS "
                                "would expand per client as a variant symlink ($(VARIABLE) in its target), "
                                "so it is refused: published, it would not point where the image says")
    os.symlink(target, name, dir_fd=parent_fd)
    _chown(layer, parent_fd, name, member)
    os.utime(name, ns=(mtime_ns(member),) * 2, dir_fd=parent_fd, follow_symlinks=False)


@dataclass(frozen=True)
class HardlinkTarget:
    """Where a hardlink's target stands: `name` in the directory `fd` (the
    caller's to close), at the real path `real`."""

    fd: int
    name: bytes
    real: PathKey


def find_hardlink_target(layer: LayerState, member: tarfile.TarInfo, parts: PathKey) -> HardlinkTarget:
    """Resolve the target of the hardlink `member` (at `parts`), refusing one
    at the root or inside the entry itself, and one whose directory is missing."""
    link_parts = split_name(encode(member.linkname), f"hardlink target of {show(parts)}", layer.limits)
    if not link_parts:
        raise HostileLayerError(f"hardlink {show(parts)} points at the image root")
    if link_parts[:len(parts)] == parts:
        # Replacing the entry would remove its own target first.
        raise HostileLayerError(f"hardlink {show(parts)} points inside itself ({member.linkname!r})")
    link_fd, link_real = layer.resolver.resolve_dir(link_parts[:-1], create=False)
    if link_fd is None:
        raise LayerError(f"hardlink {show(parts)}: target {show(link_parts)} does not exist")
    return HardlinkTarget(link_fd, link_parts[-1], link_real + (link_parts[-1],))


def hardlink_in_place(member: tarfile.TarInfo, link: HardlinkTarget, existing: Optional[os.stat_result],
                      path: PathKey, entry: PathKey) -> bool:
    """True when what stands at `path` is the target's inode already (a link
    to itself: nothing to do). Refuses a missing or directory target, and a
    target under the entry the link replaces."""
    try:
        target_st = os.stat(link.name, dir_fd=link.fd, follow_symlinks=False)
    except FileNotFoundError:
        raise LayerError(f"hardlink {show(path)}: target {member.linkname!r} does not exist") from None
    if stat.S_ISDIR(target_st.st_mode):
        raise LayerError(f"hardlink {show(path)}: target {member.linkname!r} is a directory")
    if existing is not None and existing.st_ino == target_st.st_ino and existing.st_dev == target_st.st_dev:
        return True
    if existing is not None and link.real[:len(path)] == path:
        # The target was resolved (through symlinks) to a place under the entry
        # this one replaces: removing it first would pull the target away (or,
        # under an undo log, into the log). The position of the layer must not matter.
        raise HostileLayerError(f"hardlink {show(entry)} points inside itself: its target "
                                f"{member.linkname!r} resolves to {show(link.real)}, under "
                                f"{show(path)}, which the entry replaces")
    return False


def make_hardlink(link: HardlinkTarget, parent_fd: int, name: bytes) -> None:
    """A hardlink to the target's inode (never to what a symlink points at)."""
    os.link(link.name, name, src_dir_fd=link.fd, dst_dir_fd=parent_fd, follow_symlinks=False)


def make_special(layer: LayerState, member: tarfile.TarInfo, parent_fd: int, name: bytes, path: PathKey,
                 mode: int) -> None:
    """A FIFO, or a character or block device (as root only: skipped and noted otherwise)."""
    if member.isfifo():
        os.mkfifo(name, 0o600, dir_fd=parent_fd)
    elif not layer.privileged:
        layer.stats.skip(f"device {show(path)} (not root)")
        return
    else:
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent_fd)
    layer.stats.special += 1
    _chown(layer, parent_fd, name, member)
    note_special_xattrs(member, layer.privileged, layer.stats)
    # Just created by us and not a symlink: chmod may follow.
    os.chmod(name, mode, dir_fd=parent_fd)
    os.utime(name, ns=(mtime_ns(member),) * 2, dir_fd=parent_fd, follow_symlinks=False)


def _chown(layer: LayerState, parent_fd: int, name: bytes, member: tarfile.TarInfo) -> None:
    if layer.privileged:
        os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
