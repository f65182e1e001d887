"""Whiteouts, as the OCI image spec has them: `.wh.<name>` removes lower
content, `.wh..wh..opq` hides a directory's lower content wherever it stands
in the layer, and entries of the same layer survive both (the layer's own
paths are in `LayerState.upper`). AUFS's other `.wh..wh.` names are skipped."""

from __future__ import annotations

import os
import stat

from ..dirfd import DIR_FLAGS
from ..errors import HostileLayerError
from .layer import LayerState
from .names import show
from .pathset import PathKey

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
_AUFS_META = b".wh..wh."


def handle_whiteout_name(layer: LayerState, parts: PathKey) -> bool:
    """Apply the entry at `parts` if it is a whiteout, an opaque marker or
    AUFS metadata (skipped) and return True; False for any other entry.
    Refuses an entry under a whiteout name and a whiteout of nothing."""
    base = parts[-1] if parts else b""
    if any(p.startswith(_AUFS_META) for p in parts) and base != OPAQUE_MARKER:
        layer.stats.skip(f"AUFS metadata {show(parts)}")
        return True
    if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
        raise HostileLayerError(f"entry {show(parts)} lies under a whiteout name")
    if base == OPAQUE_MARKER:
        opaque(layer, parts[:-1])
        return True
    if base.startswith(WHITEOUT_PREFIX):
        target = base[len(WHITEOUT_PREFIX):]
        if target in (b"", b".", b".."):
            raise HostileLayerError(f"invalid whiteout {show(parts)}")
        whiteout(layer, parts[:-1], target)
        return True
    return False


def whiteout(layer: LayerState, parent: PathKey, target: bytes) -> None:
    """`.wh.<target>` in directory `parent`."""
    fd, real = layer.resolver.resolve_dir(parent, create=False)
    if fd is None:
        return
    try:
        try:
            st = os.stat(target, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        path = real + (target,)
        if path in layer.upper:
            if stat.S_ISDIR(st.st_mode):
                _clear_dir_at(layer, fd, target, path)
            return
        layer.times.changing(fd, real)
        layer.remove(fd, target, st, path)
    finally:
        os.close(fd)


def opaque(layer: LayerState, directory: PathKey) -> None:
    """`.wh..wh..opq` in `directory`: hide all of its lower content."""
    fd, real = layer.resolver.resolve_dir(directory, create=True)
    assert fd is not None
    try:
        layer.mark_upper(real)
        layer.times.changing(fd, real)
        _clear_dir_at(layer, fd, b".", real)
    finally:
        os.close(fd)


def _clear_dir_at(layer: LayerState, parent_fd: int, name: bytes, keep: PathKey) -> None:
    """_clear_dir on the directory `name` of `parent_fd` (never through a symlink)."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        _clear_dir(layer, fd, keep)
    finally:
        os.close(fd)


def _clear_dir(layer: LayerState, dir_fd: int, keep: PathKey) -> None:
    """Remove the lower content of directory `keep` (its real path), sparing
    this layer's own entries and clearing their lower content in turn."""
    with os.scandir(dir_fd) as it:
        names = [os.fsencode(e.name) for e in it]
    noted = False
    for name in names:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        child = keep + (name,)
        if child in layer.upper:
            if stat.S_ISDIR(st.st_mode):
                _clear_dir_at(layer, dir_fd, name, child)
            continue
        if not noted:
            # A lower directory losing entries: its times are restored at the end.
            layer.times.changing(dir_fd, keep)
            noted = True
        layer.remove(dir_fd, name, st, child)
