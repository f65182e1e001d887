"""CernVM-FS nested catalogs: an empty `.cvmfscatalog` in a directory makes
it a catalog of its own (for a publish and for an ingest alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..applier.undo import UndoRecorder
from ..confined import ConfinedTree
from ..errors import PublishError

CATALOG_MARKER = ".cvmfscatalog"


def mark_catalog(directory: Path, observer: Optional[UndoRecorder] = None) -> None:
    """Make `directory` a nested catalog: an empty regular `.cvmfscatalog` in it,
    replacing whatever the image put at that name without following it
    (and telling `observer`, the image's undo log)."""
    with ConfinedTree(directory, observer) as tree:
        if not tree.write_file(CATALOG_MARKER, b"", 0o644, replace=True):
            raise PublishError(f"{directory / CATALOG_MARKER} is a directory in the image; cannot make "
                               f"{directory} a nested catalog")
