"""Publishers: a local directory and CVMFS. They know nothing of registries.

The backend named in a watchlist's `[publish]` section is chosen here, and
only here (`BACKENDS`); each publisher class makes itself from the section
(`from_config`) and supplies its own policy (the options layers are applied
with, the hints on what it built, whether a failed transaction leaves
anything visible).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Type

from ..watchlist import PublishConfig
from .base import Publisher, PublishTransaction, TransactionIntent
from .cvmfs import CvmfsPublisher
from .local import LocalPublisher

# Every backend by its name in `[publish] backend`.
BACKENDS: Dict[str, Type[Publisher]] = {"local": LocalPublisher, "cvmfs": CvmfsPublisher}


def make_publisher(config: PublishConfig, *, state_dir: Path) -> Publisher:
    """The publisher for a watchlist's `[publish]` section (its state in `state_dir`)."""
    return BACKENDS.get(config.backend, LocalPublisher).from_config(config, state_dir)


__all__ = ["BACKENDS", "Publisher", "PublishTransaction", "TransactionIntent", "LocalPublisher", "CvmfsPublisher",
           "make_publisher"]
