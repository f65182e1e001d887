"""Publishers: a local directory and CVMFS. They know nothing of registries."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Publisher, PublishTransaction
from .local import LocalPublisher


def make_publisher(backend: str, root, **options: object) -> Publisher:
    """The publisher for a watchlist's `[publish]` section."""
    if backend == "local":
        return LocalPublisher(root)
    raise ConfigError(f"publish backend {backend!r} is not available yet")


__all__ = ["Publisher", "PublishTransaction", "LocalPublisher", "make_publisher"]
