"""Apply one OCI layer onto a directory tree, straight from its blob stream.

Safety rests on three rules, whatever the tar says:
- every path is resolved component by component from an fd on the root, with
  `O_NOFOLLOW`; symlinks met on the way are resolved by hand as if the root
  were `/` (resolve.py), and the final component is never followed;
- an existing final component is unlinked (or its subtree removed) and
  recreated with `O_CREAT|O_EXCL|O_NOFOLLOW` (entries.py), so nothing is ever
  written through a symlink or into an existing (possibly hardlinked) inode;
  only a directory over a directory keeps its inode and gets new metadata;
- metadata is set through fds or `*at` calls that do not follow links, and the
  deferred directory times (dirtimes.py) re-resolve their path refusing any symlink.

Whiteouts follow the OCI image spec (whiteouts.py). The tar stream itself is
read through a hardened tarfile (tarstream.py): bounded headers, Go's
archive/tar's view of global headers and of the end of the archive.

Memory stays small however many entries a layer has: tar members are
dropped as soon as they are applied, tar headers are bounded, the paths a
whiteout must spare are kept as keyed 64-bit hashes, and the directory times
to set at the end are spooled to a temporary file once they grow.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

from ..dirfd import PATH_FLAGS, acting_as_root
from ..errors import HostileLayerError, IntegrityError, LayerError
from .decompress import DigestingReader
from .entries import (
    HardlinkTarget,
    find_hardlink_target,
    hardlink_in_place,
    make_directory,
    make_hardlink,
    make_special,
    make_symlink,
    set_dir_metadata,
    write_regular,
)
from .layer import LayerState
from .names import encode, show, split_name
from .options import ApplyOptions, ChangeObserver, LayerLimits, LayerStats
from .pathset import PathKey
from .tarstream import HeaderGuard, check_end_of_archive, drain, members, open_tar
from .whiteouts import handle_whiteout_name

__all__ = ["ApplyOptions", "ChangeObserver", "LayerLimits", "LayerStats", "apply_layer"]

# CONTTYPE ("7") and vendor types are refused: tarfile would read them as regular files.
_SUPPORTED_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.GNUTYPE_SPARSE, tarfile.LNKTYPE, tarfile.SYMTYPE,
                    tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE}


# The names CernVM-FS's publish takes for graft markers (cvmfs/sync_item.cc: `.cvmfsgraft-<file>`).
GRAFT_PREFIX = b".cvmfsgraft-"


class _Applier:
    """Applies the entries of one layer: each one's name decides whether it is
    a whiteout, the root, or an entry to create (replacing what stood there)."""

    def __init__(self, layer: LayerState) -> None:
        self.layer = layer

    def close(self) -> None:
        """Release the layer's fds and spooled records."""
        self.layer.close()

    def finish(self) -> None:
        """End of the layer: set the directory times."""
        self.layer.finish()

    def apply_entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Apply one tar member."""
        layer = self.layer
        parts = split_name(encode(member.name), "entry", layer.limits)
        if handle_whiteout_name(layer, parts):
            return
        if layer.options.forbid_graft_markers and any(part.startswith(GRAFT_PREFIX) for part in parts):
            raise HostileLayerError(f"the image has {show(parts)}, a name CernVM-FS's publish reads as a graft "
                                    "marker (the hash of another file's content), so it is refused: published, "
                                    "a file beside it would not hold what the image says")
        if member.type not in _SUPPORTED_TYPES:
            raise LayerError(f"unsupported tar entry type {member.type!r} for {show(parts)}")
        if not parts:
            if not member.isdir():
                raise HostileLayerError(f"entry {member.name!r} would replace the image root with a non-directory")
            if layer.observer is not None:
                layer.observer.changing_metadata(layer.root_fd, b".", ())
            set_dir_metadata(layer, layer.root_fd, b".", member, ())
            return
        self._create(tf, member, parts)

    def _create(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parts: PathKey) -> None:
        link = find_hardlink_target(self.layer, member, parts) if member.islnk() else None
        try:
            parent_fd, real_parent = self.layer.resolver.resolve_dir(parts[:-1], create=True)
            assert parent_fd is not None
            try:
                self._create_in(tf, member, parent_fd, real_parent, parts[-1], link, parts)
            finally:
                os.close(parent_fd)
        finally:
            if link is not None:
                os.close(link.fd)

    def _create_in(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, real_parent: PathKey,
                   name: bytes, link: Optional[HardlinkTarget], entry: PathKey) -> None:
        """Create `name` in `parent_fd` (at `real_parent`), replacing what stands there."""
        layer = self.layer
        path = real_parent + (name,)
        try:
            existing: Optional[os.stat_result] = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if member.isdir() and existing is not None and stat.S_ISDIR(existing.st_mode):
            layer.mark_upper(path)
            if layer.observer is not None:
                layer.observer.changing_metadata(parent_fd, name, path)
            set_dir_metadata(layer, parent_fd, name, member, path)
            return
        if link is not None and hardlink_in_place(member, link, existing, path, entry):
            layer.mark_upper(path)
            return
        layer.times.changing(parent_fd, real_parent)
        if existing is not None:
            layer.remove(parent_fd, name, existing, path)
        if layer.observer is not None:
            layer.observer.creating(parent_fd, path)
        layer.mark_upper(path)
        self._make(tf, member, parent_fd, name, path, link)

    def _make(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, name: bytes, path: PathKey,
              link: Optional[HardlinkTarget]) -> None:
        """Create the entry where nothing stands, by its type."""
        mode = stat.S_IMODE(member.mode)
        if member.isreg():
            self._write_file(tf, member, parent_fd, name, mode)
        elif member.isdir():
            make_directory(self.layer, member, parent_fd, name, path)
        elif member.issym():
            make_symlink(self.layer, member, parent_fd, name, path)
        elif member.islnk():
            assert link is not None
            make_hardlink(link, parent_fd, name)
        elif member.isfifo() or member.ischr() or member.isblk():
            make_special(self.layer, member, parent_fd, name, path, mode)
        else:
            raise LayerError(f"unsupported tar entry type {member.type!r} for {show(path)}")

    def _write_file(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, name: bytes, mode: int) -> None:
        # A method of its own: the fault tests replace it to fill the disk.
        write_regular(self.layer, tf, member, parent_fd, name, mode)


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
    root_fd = os.open(os.fspath(root), PATH_FLAGS)
    reader = DigestingReader(stream, media_type, options.limits.max_bytes)
    applier: Optional[_Applier] = None
    try:
        applier = _Applier(LayerState(root_fd, options, acting_as_root(options.privileged), stats, observer))
        guard = HeaderGuard(reader)
        tf = open_tar(guard)
        if tf is not None:
            _apply_members(tf, guard, applier, progress)
            check_end_of_archive(tf)
            applier.finish()
            drain(tf)
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


def _apply_members(tf: tarfile.TarFile, guard: HeaderGuard, applier: _Applier,
                   progress: Optional[Callable[[int, int], None]]) -> None:
    """Every member of the archive, in order, within the entry limit."""
    stats, limits = applier.layer.stats, applier.layer.limits
    try:
        last_bytes = 0
        for member in members(tf, guard):
            stats.entries += 1
            if stats.entries > limits.max_entries:
                raise LayerError(f"layer has more than {limits.max_entries} entries (the entry "
                                 f"limit); stopped at {member.name[:200]!r}")
            applier.apply_entry(tf, member)
            if progress:
                progress(1, stats.bytes - last_bytes)
                last_bytes = stats.bytes
    except tarfile.TarError as exc:
        raise LayerError(f"corrupt tar stream after {stats.entries} entries: {exc}") from None
