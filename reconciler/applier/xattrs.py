"""Extended attributes from an image: which ones an image may set, setting
them, and clearing those a directory had before the layer."""

from __future__ import annotations

import errno
import os
import tarfile
from typing import List, Tuple

from .names import encode
from .options import LayerStats

# Xattrs that may come from an image. trusted.* and *.overlay.* would steer an
# overlayfs (the CVMFS transaction is one); security.selinux belongs to the host.
ALLOWED_XATTR_PREFIXES = (b"user.", b"security.capability")
_FORBIDDEN_XATTR_PARTS = (b".overlay.", b"user.rootlesscontainers")
_PAX_XATTR = "SCHILY.xattr."


def image_xattrs(member: tarfile.TarInfo, privileged: bool, stats: LayerStats) -> List[Tuple[bytes, bytes]]:
    """The xattrs `member` may set (the others are noted as skipped)."""
    out = []
    for key, value in member.pax_headers.items():
        if not key.startswith(_PAX_XATTR):
            continue
        xname = encode(key[len(_PAX_XATTR):])
        if not xname.startswith(ALLOWED_XATTR_PREFIXES) or any(p in xname for p in _FORBIDDEN_XATTR_PARTS):
            stats.skip(f"xattr {xname.decode(errors='replace')} on {member.name}")
            continue
        if xname == b"security.capability" and not privileged:
            stats.skip(f"xattr security.capability on {member.name} (not root)")
            continue
        out.append((xname, encode(value)))
    return out


def set_xattrs_fd(fd: int, member: tarfile.TarInfo, privileged: bool, stats: LayerStats) -> None:
    """Set `member`'s xattrs on `fd`; where the file system refuses, note it and go on."""
    for xname, value in image_xattrs(member, privileged, stats):
        try:
            os.setxattr(fd, xname, value)
            if xname == b"security.capability":
                stats.capabilities += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            stats.skip(f"xattr {xname.decode(errors='replace')} on {member.name}: {exc.strerror}")


def note_special_xattrs(member: tarfile.TarInfo, privileged: bool, stats: LayerStats) -> None:
    """Xattrs on a FIFO or device are not set (no fd to set them through): noted as skipped."""
    if image_xattrs(member, privileged, stats):
        stats.skip(f"xattrs on special file {member.name}")


def clear_xattrs_fd(fd: int) -> None:
    """Remove the xattrs an image could have set (the host's stay)."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return
        raise
    for xname in names:
        if xname.encode().startswith(ALLOWED_XATTR_PREFIXES):
            os.removexattr(fd, xname)
