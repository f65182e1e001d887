"""Publishers: a local directory and CVMFS. They know nothing of registries."""

from __future__ import annotations

from pathlib import Path

from .base import Publisher, PublishTransaction
from .cvmfs import CvmfsPublisher
from .local import LocalPublisher


def make_publisher(backend: str, root: Path, *, state_dir: Path, repository: str = "",
                   lease_path: str = "") -> Publisher:
    """The publisher for a watchlist's `[publish]` section."""
    if backend == "cvmfs":
        return CvmfsPublisher(repository, root, state_dir, lease_path or None)
    return LocalPublisher(root)


__all__ = ["Publisher", "PublishTransaction", "LocalPublisher", "CvmfsPublisher", "make_publisher"]
