"""The local directory publisher (the embedded default; no CVMFS needed).

An image is built in `<root>/.staging/` and renamed into `.images/` only when
complete; a tag moves by an atomic symlink swap (a new link, then rename over
the old one). Data is synced before each rename, so a crash at any moment
leaves every tag pointing at a complete image. Leftovers in `.staging` are
removed at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from . import layout
from .base import Publisher, PublishTransaction, remove_tree
from .chains import ChainCache

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalTransaction(PublishTransaction):
    def __init__(self, root: Path, message: str) -> None:
        super().__init__(root)
        self.message = message
        self._staged: List[Path] = []
        self.chains = ChainCache(root)

    @contextlib.contextmanager
    def build_image(self, digest: str) -> Iterator[Path]:
        final = self.root / layout.image_relpath(digest)
        staging = self.root / STAGING_DIR / f"{digest.split(':', 1)[1]}.{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        self._staged.append(staging)
        try:
            yield staging
            # Everything written must be on disk before the image can become visible.
            os.sync()
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                log.info("image %s already present; dropping the duplicate build", digest)
                remove_tree(staging)
            else:
                os.rename(staging, final)
                _fsync_dir(final.parent)
                self.changed = True
        except BaseException:
            remove_tree(staging)
            raise
        finally:
            self._staged.remove(staging)

    def _sync_dir(self, path: Path) -> None:
        _fsync_dir(path)

    def remove_image(self, digest: str) -> None:
        # Out of .images first, in one rename: a crash mid-delete leaves no half image there.
        final = self.root / layout.image_relpath(digest)
        doomed = self.root / STAGING_DIR / f"gc-{digest.split(':', 1)[1]}.{secrets.token_hex(4)}"
        doomed.parent.mkdir(parents=True, exist_ok=True)
        os.rename(final, doomed)
        _fsync_dir(final.parent)
        self.changed = True
        remove_tree(doomed)

    def commit(self) -> None:
        log.debug("local publish complete: %s", self.message)

    def abort(self) -> None:
        for staging in list(self._staged):
            remove_tree(staging)


class LocalPublisher(Publisher):
    """Publishes into a plain directory."""

    def recover(self) -> None:
        ChainCache(self.root).clean()
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            for leftover in staging.iterdir():
                log.warning("removing unfinished image build %s left by an interrupted run", leftover)
                remove_tree(leftover)
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") and ".tmp-" in name:
                    os.unlink(os.path.join(dirpath, name))

    def begin(self, message: str, builds: Optional[Dict[str, List[str]]] = None) -> LocalTransaction:
        self.root.mkdir(parents=True, exist_ok=True)
        return LocalTransaction(self.root, message)
