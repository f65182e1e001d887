"""Publishers: a local directory and CVMFS. They know nothing of registries.

The backend of a watchlist's `[publish]` section is chosen here, and only
here, by the type of its target (`PUBLISHERS`: the watchlist parser turned
the name into that type); each publisher class makes itself from the section
(`from_config`) and supplies its own policy (the options layers are applied
with, the hints on what it built, whether a failed transaction leaves
anything visible).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Type

from ..watchlist import CvmfsTarget, LocalTarget, PublishConfig
from .base import Publisher, PublishTransaction, TransactionIntent
from .cvmfs import CvmfsPublisher
from .local import LocalPublisher

# Every backend by the type of its `[publish]` target.
PUBLISHERS: Dict[Type[Any], Type[Publisher]] = {LocalTarget: LocalPublisher, CvmfsTarget: CvmfsPublisher}


def make_publisher(config: PublishConfig, *, state_dir: Path) -> Publisher:
    """The publisher for a watchlist's `[publish]` section (its state in `state_dir`)."""
    return PUBLISHERS[type(config.target)].from_config(config, state_dir)


__all__ = ["PUBLISHERS", "Publisher", "PublishTransaction", "TransactionIntent", "LocalPublisher", "CvmfsPublisher",
           "make_publisher"]
