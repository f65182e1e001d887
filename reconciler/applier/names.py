"""Tar member names as the applier sees them: bytes, split into components,
refused when they hold a NUL or `..` or exceed the limits."""

from __future__ import annotations

from ..errors import HostileLayerError, LayerError
from .options import LayerLimits
from .pathset import PathKey


def encode(name: str) -> bytes:
    """A name tarfile decoded (utf-8, surrogateescape) back to its bytes."""
    return name.encode("utf-8", "surrogateescape")


def split_name(raw: bytes, what: str, limits: LayerLimits) -> PathKey:
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


def show(path: PathKey) -> str:
    """A path for messages: absolute, undecodable bytes escaped."""
    return "/" + b"/".join(path).decode("utf-8", "backslashreplace")
