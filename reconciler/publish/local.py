"""The local directory publisher (the embedded default; no CVMFS needed).

An image is built in `<root>/.staging/` and renamed into `.images/` only when
complete, then its completion record is written; a tag moves by an atomic
symlink swap (a new link, then rename over the old one). Data is synced before
each rename, so a crash at any moment leaves every tag pointing at a complete
image. Leftovers in `.staging` are removed at the next start, by the one
process that holds the publish root's lock.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import List, Optional, Sequence

from ..dirfd import fsync_dir
from ..errors import PublishError, StartError
from ..treecopy import clone_tree
from ..watchlist import PublishConfig
from . import foreign, layout
from .base import (
    Build,
    BuildSite,
    PublishedChain,
    Publisher,
    PublishTransaction,
    TransactionIntent,
    remove_legacy_chains,
    remove_tree,
)

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"


class LocalTransaction(PublishTransaction):
    def __init__(self, publisher: "LocalPublisher", message: str) -> None:
        super().__init__(publisher.root)
        self.publisher = publisher
        self.message = message
        self._staged: List[Path] = []
        # What builds may start from: read once, then each image built in this transaction added.
        self._published: Optional[List[PublishedChain]] = None

    def _build_site(self, digest: str, chain: Sequence[str]) -> BuildSite:
        """A new staging directory: a clone of the published image sharing the
        most layers with `chain` (hardlinks), or empty."""
        final = self.root / layout.image_relpath(digest)
        staging = self.root / STAGING_DIR / f"{digest.split(':', 1)[1]}.{secrets.token_hex(4)}"
        undo = staging.with_name(staging.name + layout.UNDO_SUFFIX)
        staging.parent.mkdir(parents=True, exist_ok=True)
        self._staged += [staging, undo]
        try:
            if self._published is None:
                self._published = self.publisher.published_chains()
            base = self.publisher.find_base(chain, self._published)
            if base is not None:
                try:
                    clone_tree(base.path, staging)  # hardlinks: the applier never writes into an inode
                except OSError as exc:  # e.g. EMLINK: too many links to one inode
                    log.warning("cannot clone the published image %s (%s); building %s from scratch",
                                base.digest[:19], exc.strerror or exc, digest[:19])
                    remove_tree(staging)
                    base = None
            if base is None:
                staging.mkdir()
        except BaseException:
            remove_tree(staging)
            remove_tree(undo)
            self._release_site(BuildSite(final, staging, undo))
            raise
        return BuildSite(final, staging, undo, base)

    def _place_tree(self, digest: str, site: BuildSite) -> bool:
        """Rename the staged tree into `.images/`, once on disk; an unfinished
        directory there is set aside until the new one is complete."""
        # Everything written must be on disk before the image can become visible.
        os.sync()
        site.final.parent.mkdir(parents=True, exist_ok=True)
        if self.has_image(digest):
            log.info("image %s already present; dropping the duplicate build", digest)
            remove_tree(site.path)
            remove_tree(site.undo)
            return False
        # An unfinished directory (no completion record) may still be what a tag
        # serves (an image of 0.1): set aside only now, so its tags dangle for
        # two renames at most, and deleted once the new tree is complete.
        site.set_aside = self._set_aside(site.final, f"unfinished-{digest.split(':', 1)[1]}")
        if site.set_aside is not None:
            log.warning("replacing the unfinished image directory %s (it has no completion record)", site.final)
        self._discard(self.root / layout.undo_relpath(digest), f"undo-{digest.split(':', 1)[1]}")
        # The image first: an undo log never stands without its image (GC finds images).
        os.rename(site.path, site.final)
        return True

    def _place_undo(self, digest: str, site: BuildSite) -> None:
        """The old undo log was discarded with the old tree: rename, then sync both."""
        os.rename(site.undo, self.root / layout.undo_relpath(digest))
        fsync_dir(site.final.parent)

    def _built(self, digest: str, chain: Sequence[str], build: Build, site: BuildSite) -> None:
        """Later builds of this transaction may start from this image; the unfinished one goes."""
        if build.undo_layers:
            assert self._published is not None  # read by _build_site
            self._published.append(PublishedChain(digest, tuple(chain), build.undo_layers))
        if site.set_aside is not None:
            remove_tree(site.set_aside)

    def _release_site(self, site: BuildSite) -> None:
        self._staged.remove(site.path)
        self._staged.remove(site.undo)

    def _sync_dir(self, path: Path) -> None:
        fsync_dir(path)

    def remove_image(self, digest: str) -> None:
        self.unmark_complete(digest)
        self._discard(self.root / layout.image_relpath(digest), f"gc-{digest.split(':', 1)[1]}")
        self._discard(self.root / layout.undo_relpath(digest), f"gc-undo-{digest.split(':', 1)[1]}")
        self.changed = True

    def remove_foreign_image(self, relpath: str) -> None:
        """Set aside first, as our own images: a crash mid-delete leaves nothing half there."""
        if foreign.foreign_image_relpath(relpath) != relpath:
            raise PublishError(f"{self.root / relpath} is not an image directory of an earlier tool; not removed")
        self._discard(self.root / relpath, "gc-foreign-" + relpath.replace("/", "-"))
        self.changed = True

    def _set_aside(self, path: Path, label: str) -> Optional[Path]:
        """Rename a directory under .images into .staging (where a crash leaves
        it to the next start's cleanup); where it went, or None when absent."""
        if not os.path.lexists(path):
            return None
        aside = self.root / STAGING_DIR / f"{label}.{secrets.token_hex(4)}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, aside)
        fsync_dir(path.parent)
        return aside

    def _discard(self, path: Path, label: str) -> None:
        """Delete a directory under .images: set aside first, so a crash
        mid-delete leaves nothing half there."""
        aside = self._set_aside(path, label)
        if aside is not None:
            remove_tree(aside)

    def commit(self) -> None:
        log.debug("local publish complete: %s", self.message)

    def abort(self) -> None:
        for staging in list(self._staged):
            remove_tree(staging)


class LocalPublisher(Publisher):
    """Publishes into a plain directory."""

    @classmethod
    def from_config(cls, config: PublishConfig, state_dir: Path) -> LocalPublisher:
        """A directory publisher at `[publish] root` (it keeps no state elsewhere)."""
        return cls(config.root)

    def check_ready(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StartError(f"the publish root {self.root} cannot be a directory: it, or a directory above it, "
                             "is a file; fix [publish] root in the watchlist or move that file away") from None
        except OSError as exc:
            raise StartError(f"cannot create the publish root {self.root}: {exc.strerror}; create it for this "
                             "user or fix [publish] root in the watchlist") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StartError(f"the publish root {self.root} is not writable by this user (uid {os.getuid()}); "
                             "change its owner or run as its owner")

    def recover(self) -> None:
        remove_legacy_chains(self.root)
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
        for leftover in (self.root / layout.IMAGES_DIR).glob("*/.*.tmp-*"):
            leftover.unlink()  # a completion record that was being written

    def begin(self, intent: TransactionIntent) -> LocalTransaction:
        """A transaction on the directory (nothing to open: builds are staged)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return LocalTransaction(self, intent.message)
