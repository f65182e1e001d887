"""What every publisher offers: transactions that make images and tags visible."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional

from ..errors import PublishError
from . import layout

if TYPE_CHECKING:
    from .chains import ChainCache

log = logging.getLogger(__name__)


def remove_tree(path: Path) -> None:
    """Remove a directory tree, also one with read-only directories (0555) inside;
    never follows symlinks (shutil.rmtree is fd-based)."""

    def retry(func, name, _exc_info):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(name)
        st = os.lstat(parent)
        os.chmod(parent, stat.S_IMODE(st.st_mode) | 0o700)
        func(name)

    if path.is_symlink() or not path.exists():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, onerror=retry)


class PublishTransaction(ABC):
    """One round of changes. Images built inside it become visible through
    their tags; commit() makes everything durable, abort() throws away what
    this transaction built."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.changed = False
        # Snapshots of applied layer chains, where the backend can clone them cheaply.
        self.chains: Optional["ChainCache"] = None

    def has_image(self, digest: str) -> bool:
        """True when the image directory of `digest` is complete and published."""
        return (self.root / layout.image_relpath(digest)).is_dir()

    @abstractmethod
    def build_image(self, digest: str) -> "contextlib.AbstractContextManager[Path]":
        """A directory to fill with the image's root filesystem. On normal exit the
        image is complete; on an exception its partial content is removed."""

    def _sync_dir(self, path: Path) -> None:
        """Make a directory's entries durable (where the backend needs it)."""

    def set_tag(self, tag_path: str, digest: str) -> None:
        """Point `<root>/<tag_path>` at the image `digest`, atomically (a new
        link renamed over the old one)."""
        path = self.root / tag_path
        if not self.has_image(digest):
            raise PublishError(f"cannot point {tag_path} at {digest}: the image is not complete")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_symlink():
            raise PublishError(f"{path} exists and is not a tag link; move it away")
        tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
        os.symlink(layout.link_target(tag_path, digest), tmp)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.changed = True
        self._sync_dir(path.parent)

    def remove_tag(self, tag_path: str) -> None:
        """Remove the tag link `<root>/<tag_path>` (the image stays until GC)."""
        path = self.root / tag_path
        if path.is_symlink():
            path.unlink()
            self.changed = True
            self._sync_dir(path.parent)

    def remove_image(self, digest: str) -> None:
        """Delete an image directory that no tag references any more."""
        remove_tree(self.root / layout.image_relpath(digest))
        self.changed = True

    @abstractmethod
    def commit(self) -> None:
        """Make the changes durable (and, for CVMFS, published)."""

    @abstractmethod
    def abort(self) -> None:
        """Discard what this transaction built that is not yet visible."""


class Publisher(ABC):
    """A place images are published to."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def recover(self) -> None:
        """Clean up after a crashed run (called once at start)."""

    @abstractmethod
    def begin(self, message: str, builds: Optional[Dict[str, List[str]]] = None) -> PublishTransaction:
        """Open a transaction; `message` says what it publishes, `builds` which
        images it may build (digest -> the ChainIDs of its layers)."""

    @contextlib.contextmanager
    def transaction(self, message: str, builds: Optional[Dict[str, List[str]]] = None
                    ) -> Iterator[PublishTransaction]:
        """`begin()`, then commit on success or abort on any exception."""
        txn = self.begin(message, builds)
        try:
            yield txn
        except BaseException:
            txn.abort()
            raise
        txn.commit()

    def current_tag(self, tag_path: str) -> Optional[str]:
        """The digest `<root>/<tag_path>` points at, if it points at a complete image."""
        path = self.root / tag_path
        try:
            target = os.readlink(path)
        except (FileNotFoundError, OSError):
            return None
        relative = os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(tag_path) or ".", target)))
        digest = layout.digest_of_image_relpath(relative)
        if digest and (self.root / layout.image_relpath(digest)).is_dir():
            return digest
        return None

    def images(self) -> List[str]:
        """The digests of every image directory under `.images/`."""
        base = self.root / layout.IMAGES_DIR
        out = []
        for sub in sorted(base.iterdir()) if base.is_dir() else []:
            for image in sorted(sub.iterdir()) if sub.is_dir() else []:
                digest = layout.digest_of_image_relpath(f"{layout.IMAGES_DIR}/{sub.name}/{image.name}")
                if digest:
                    out.append(digest)
        return out

    def tag_links(self) -> Dict[str, str]:
        """Every tag link under the root (outside hidden directories) and its digest."""
        out: Dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    rel = os.path.relpath(full, self.root)
                    digest = self.current_tag(rel)
                    if digest:
                        out[rel] = digest
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        return out
