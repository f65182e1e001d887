"""What every publisher offers: transactions that make images and tags visible."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import stat
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .. import __version__
from ..applier import ApplyOptions
from ..applier.undo import UndoRecorder
from ..confined import ConfinedTree
from ..errors import PublishError
from ..treecopy import remove_at
from ..watchlist import PublishConfig
from . import foreign, layout

log = logging.getLogger(__name__)


def remove_tree(path: Path) -> None:
    """Remove `path`: a whole directory tree (read-only directories inside too),
    or the file or symlink itself; nothing when absent. Never follows a symlink
    below `path`'s parent (treecopy.remove_at works from an fd on it)."""
    try:
        parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_at(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def remove_legacy_chains(root: Path) -> bool:
    """Remove `<root>/.chains`, the layer chain snapshots earlier versions kept
    for updates (updates now start from the previous image). True when it was there.
    A `.chains` of DUCC's (a repository taken over from it) is never ours to remove."""
    legacy = root / layout.LEGACY_CHAINS_DIR
    if not foreign.is_our_legacy_chains(str(root)):
        return False
    log.info("removing %s: copies kept by earlier versions for updates, no longer needed "
             "(updates now start from the previous image)", legacy)
    remove_tree(legacy)
    return True


@dataclass(frozen=True)
class BaseImage:
    """A published image an update can start from: its tree, cloned, and its
    undo log replayed give the tree of its first `layers` layers."""

    digest: str
    path: Path
    undo: Path
    layers: int


@dataclass(frozen=True)
class PublishedChain:
    """A complete published image with an undo log, as its completion record
    tells: the ChainIDs of its layers and how many lie below its undo log."""

    digest: str
    chain: Tuple[str, ...]
    undo_layers: int


@dataclass
class Build:
    """Where one image is built, and what is there already.

    `path` holds a clone of `base` (when there is one): replaying
    `base.undo` on it leaves the base's first `base.layers` layers. Changes
    after those are to be told to `recorder`, the undo log of this image."""

    path: Path
    recorder: UndoRecorder
    base: Optional[BaseImage] = None
    # How many of the image's layers lie below its undo log (set by the builder;
    # 0: the log is no start for an update).
    undo_layers: int = 0


@dataclass
class BuildSite:
    """Where a transaction builds one image: `path` (a staging directory, a
    directory beside `final`, or `final` itself), the undo log being written,
    the published image it starts from, and (local directory) an unfinished
    directory set aside from `final` until the new one is complete."""

    final: Path
    path: Path
    undo: Path
    base: Optional[BaseImage] = None
    set_aside: Optional[Path] = None


@dataclass(frozen=True)
class TransactionIntent:
    """What a transaction is opened for: the message it is published with and
    the images it may build (digest -> the ChainIDs of their layers). Every
    backend gets the same; each takes what it needs (CernVM-FS opens its
    transaction as a clone of the published image that saves most layers)."""

    message: str
    builds: Mapping[str, Sequence[str]] = field(default_factory=dict)


def read_record(root: Path, digest: str) -> Optional[Dict[str, object]]:
    """The completion record of an image, or None (absent, unreadable, a symlink)."""
    try:
        fd = os.open(root / layout.completion_relpath(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def image_is_complete(root: Path, digest: str) -> bool:
    """True when `<root>/.images/…/<digest>` is a real directory and its completion record exists."""
    try:
        image = os.lstat(root / layout.image_relpath(digest))
        record = os.lstat(root / layout.completion_relpath(digest))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return stat.S_ISDIR(image.st_mode) and stat.S_ISREG(record.st_mode)


@dataclass(frozen=True)
class ReadAccess:
    """Whether the target itself restricts who reads it: None when it cannot
    tell; `detail` says what it found, for messages."""

    restricted: Optional[bool]
    detail: str = ""


class PublishTransaction(ABC):
    """One round of changes. Images built inside it become visible through
    their tags; commit() makes everything durable, abort() throws away what
    this transaction built."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.changed = False

    def has_image(self, digest: str) -> bool:
        """True when the image directory of `digest` is complete (its completion record exists)."""
        return image_is_complete(self.root, digest)

    def mark_complete(self, digest: str, chain: Sequence[str] = (), undo_layers: int = 0) -> None:
        """Write the image's completion record: the last step of every build.
        `chain`: the ChainIDs of its layers; its undo log goes back to the
        first `undo_layers` of them (0: there is none to start an update from)."""
        record = json.dumps({"digest": digest, "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "reconciler": __version__, "chain": list(chain),
                             "undo_layers": undo_layers}).encode() + b"\n"
        with ConfinedTree(self.root) as tree:
            if not tree.write_file(layout.completion_relpath(digest), record, 0o444, replace=True, durable=True):
                raise PublishError(f"cannot write the completion record of image {digest} under {self.root}: "
                                   f"{os.path.dirname(layout.completion_relpath(digest))} is not a directory")
            self._sync_dir(self.root / os.path.dirname(layout.completion_relpath(digest)))

    def unmark_complete(self, digest: str) -> None:
        """Remove the completion record first when an image goes: a crash half-way
        leaves an unfinished image, never a complete-looking half one."""
        with ConfinedTree(self.root) as tree:
            tree.unlink(layout.completion_relpath(digest))

    @contextlib.contextmanager
    def build_image(self, digest: str, chain: Sequence[str]) -> Iterator[Build]:
        """Where to build the image whose layers have the ChainIDs `chain`
        (maybe seeded from a published image sharing its first layers). On
        normal exit the image is complete; on an exception its partial content
        is removed. The lifecycle of every backend; each says where (`_build_site`),
        how the tree is finished (`_finish_tree`) and moved into place (`_place_tree`,
        `_place_undo`), and what it keeps of a build (`_built`, `_release_site`)."""
        site = self._build_site(digest, chain)
        build: Optional[Build] = None
        placed = False  # the complete new tree stands at `site.final`
        try:
            build = Build(site.path, UndoRecorder(site.undo), site.base)
            yield build
            self._finish_tree(build)
            build.recorder.close()
            if not self._place_tree(digest, site):
                return  # the same image was completed meanwhile: this build was dropped
            placed = True
            self._place_undo(digest, site)
            self._complete(digest, chain, build.undo_layers)
            self.changed = True
            self._built(digest, chain, build, site)
        except BaseException:
            if build is not None:
                build.recorder.close()
            if not placed:  # else a tree without its record: rebuilt next cycle, never half
                remove_tree(site.path)
            remove_tree(site.undo)
            raise
        finally:
            self._release_site(site)

    @abstractmethod
    def _build_site(self, digest: str, chain: Sequence[str]) -> BuildSite:
        """Prepare where the image is built (its directory exists on return,
        empty or a clone of `base`); on failure, leave nothing of it."""

    def _finish_tree(self, build: Build) -> None:
        """Last changes to a built tree, before its undo log is closed."""

    @abstractmethod
    def _place_tree(self, digest: str, site: BuildSite) -> bool:
        """Move the complete tree to `site.final`; False when it was dropped
        instead (its path and undo log removed)."""

    def _place_undo(self, digest: str, site: BuildSite) -> None:
        """Move the undo log of the image now at `site.final` beside it."""
        remove_tree(self.root / layout.undo_relpath(digest))
        os.rename(site.undo, self.root / layout.undo_relpath(digest))

    def _complete(self, digest: str, chain: Sequence[str], undo_layers: int) -> None:
        """The tree and undo log are in place: write the completion record now
        (a backend may defer it until the tree is durable; see `_before_links`)."""
        self.mark_complete(digest, chain, undo_layers)

    def _built(self, digest: str, chain: Sequence[str], build: Build, site: BuildSite) -> None:
        """After the image is complete (its record written, or deferred by `_complete`)."""

    def _release_site(self, site: BuildSite) -> None:
        """After the build, complete or not: forget the site."""

    def _sync_dir(self, path: Path) -> None:
        """Make a directory's entries durable (where the backend needs it)."""

    def _before_links(self) -> None:
        """Before a tag link moves: make what the link may point at durable (where the backend needs it)."""

    def set_tag(self, tag_path: str, digest: str) -> None:
        """Point `<root>/<tag_path>` at the image `digest`, atomically (a new
        link renamed over the old one)."""
        self._before_links()
        if not self.has_image(digest):
            raise PublishError(f"cannot point {tag_path} at {digest}: the image is not complete")
        with ConfinedTree(self.root) as tree:
            existing = tree.lstat(tag_path)
            if existing is not None and not stat.S_ISLNK(existing.st_mode):
                raise PublishError(f"{self.root / tag_path} exists and is not a tag link; move it away")
            if not tree.symlink(tag_path, layout.link_target(tag_path, digest), replace=True):
                raise PublishError(f"cannot create {self.root / tag_path}: a parent of it is not a directory "
                                   "(a file or symlink stands in the way); move it away")
        self.changed = True
        self._sync_dir(self.root / os.path.dirname(tag_path))

    def remove_tag(self, tag_path: str) -> None:
        """Remove the tag link `<root>/<tag_path>` (the image stays until GC)."""
        with ConfinedTree(self.root) as tree:
            existing = tree.lstat(tag_path)
            if existing is None or not stat.S_ISLNK(existing.st_mode):
                return
            tree.unlink(tag_path)
        self.changed = True
        self._sync_dir(self.root / os.path.dirname(tag_path))

    def remove_image(self, digest: str) -> None:
        """Delete an image directory that no tag references any more (its undo log too)."""
        self.unmark_complete(digest)
        remove_tree(self.root / layout.image_relpath(digest))
        remove_tree(self.root / layout.undo_relpath(digest))
        self.changed = True

    def remove_foreign_image(self, relpath: str) -> None:
        """Delete an image directory an earlier tool left (`foreign.foreign_image_relpath`)
        that no link refers to any more; nothing else of that tool's is touched."""
        if foreign.foreign_image_relpath(relpath) != relpath:
            raise PublishError(f"{self.root / relpath} is not an image directory of an earlier tool; not removed")
        remove_tree(self.root / relpath)
        self.changed = True

    @abstractmethod
    def commit(self) -> None:
        """Make the changes durable (and, for CVMFS, published)."""

    @abstractmethod
    def abort(self) -> None:
        """Discard what this transaction built that is not yet visible."""


class Publisher(ABC):
    """A place images are published to."""

    # True when a failed transaction leaves nothing of itself visible (CVMFS:
    # nothing shows before publish); False when what it did before the failure stands.
    all_or_nothing = False
    # True when readers of the target expand `$(VAR)` in symlink targets each on
    # their own (CernVM-FS variant symlinks): such links are refused when applied.
    expands_variant_symlinks = False
    # True when the target's publish reads `.cvmfsgraft-<name>` files as the
    # content of `<name>` (CernVM-FS): images holding such names are refused.
    reads_graft_markers = False

    def __init__(self, root: Path) -> None:
        self.root = root
        # Set when a transaction could not be closed: recover() before the next plan.
        self.needs_recovery = False

    @classmethod
    @abstractmethod
    def from_config(cls, config: PublishConfig, state_dir: Path) -> Publisher:
        """The publisher a watchlist's `[publish]` section describes."""

    @abstractmethod
    def recover(self) -> None:
        """Clean up after a crashed run (at start, and before a cycle when `needs_recovery`)."""

    @abstractmethod
    def begin(self, intent: TransactionIntent) -> PublishTransaction:
        """Open a transaction for `intent`: its message and the images it may build."""

    def lock_path(self) -> Path:
        """The lock file that makes this process the only one publishing to this target."""
        return self.root / ".reconciler.lock"

    @property
    def target_name(self) -> str:
        """How messages name what this publisher writes to."""
        return f"the publish root {self.root}"

    def check_ready(self) -> None:
        """Raise StartError when publishing cannot work at all (checked once at start)."""

    def read_access(self) -> ReadAccess:
        """Who may read this target, as the target itself says (a CernVM-FS
        repository made with `mkfs -V`); unknown unless the backend can tell."""
        return ReadAccess(None)

    # -- the backend's policy for what is applied into it (as containerd's WithFilter) --

    def apply_options(self, options: ApplyOptions) -> ApplyOptions:
        """The options layers are applied with into this backend: `options`,
        with what the backend's readers need on top."""
        if self.expands_variant_symlinks:
            # Readers would each resolve a `$(VAR)` target their own way: not the image.
            options = dataclasses.replace(options, forbid_variant_symlinks=True)
        if self.reads_graft_markers:
            options = dataclasses.replace(options, forbid_graft_markers=True)
        return options

    def build_hints(self, reference: str, capabilities: int, special: int = 0) -> List[str]:
        """Warnings for an admin about an image just built: what of it this
        backend will not serve as the image has it, and how to fix that.
        `capabilities`: how many of its files carry file capabilities;
        `special`: how many device nodes and FIFOs its layers made."""
        return []

    # -- the tag-link view --------------------------------------------------

    def has_tag_link(self, tag_path: str) -> bool:
        """True when anything stands at `<root>/<tag_path>` (a link, even dangling)."""
        return os.path.lexists(self.root / tag_path)

    def tag_changed_at(self, tag_path: str) -> Optional[float]:
        """When the tag link `<root>/<tag_path>` last changed (epoch seconds), or
        None when absent. A tag link is replaced (never rewritten) when its digest
        changes, so its own mtime says when, across restarts too."""
        try:
            return os.lstat(self.root / tag_path).st_mtime
        except OSError:
            return None

    @contextlib.contextmanager
    def transaction(self, message: str, builds: Optional[Mapping[str, Sequence[str]]] = None
                    ) -> Iterator[PublishTransaction]:
        """`begin()`, then commit on success or abort on any exception (a failing
        commit aborts by itself). `builds`: the images it may build (digest ->
        the ChainIDs of their layers)."""
        txn = self.begin(TransactionIntent(message, dict(builds or {})))
        try:
            yield txn
        except BaseException as exc:
            try:
                txn.abort()
            except Exception as abort_exc:  # the original error is what the caller must see
                log.error("%s: aborting after %s failed too: %s", self.target_name, type(exc).__name__, abort_exc)
            raise
        txn.commit()

    def linked_image(self, tag_path: str) -> Optional[str]:
        """The digest of the image directory `<root>/<tag_path>` links to, complete or not."""
        try:
            target = os.readlink(self.root / tag_path)
        except OSError:
            return None
        relative = foreign.resolve_link(str(self.root), tag_path, target)
        return layout.digest_of_image_relpath(relative) if relative else None

    def current_tag(self, tag_path: str) -> Optional[str]:
        """The digest `<root>/<tag_path>` points at, if it points at a complete image."""
        digest = self.linked_image(tag_path)
        return digest if digest and image_is_complete(self.root, digest) else None

    def published_chains(self) -> List[PublishedChain]:
        """Every complete image with an undo log an update could start from
        (reads each completion record once)."""
        out = []
        for digest in self.images():
            record = read_record(self.root, digest)
            if record is None:
                continue
            chain, layers = record.get("chain"), record.get("undo_layers")
            if not isinstance(chain, list) or not isinstance(layers, int) or not 1 <= layers <= len(chain):
                continue
            undo = self.root / layout.undo_relpath(digest)
            if image_is_complete(self.root, digest) and undo.is_dir() and not undo.is_symlink():
                out.append(PublishedChain(digest, tuple(chain), layers))
        return out

    def find_base(self, chain: Sequence[str], published: Sequence[PublishedChain]) -> Optional[BaseImage]:
        """Of `published` (what `published_chains` said), the image whose first
        layers are the most of `chain`'s (at least one), or None."""
        best: Optional[PublishedChain] = None
        for image in published:
            layers = image.undo_layers
            if layers <= len(chain) and image.chain[layers - 1] == chain[layers - 1] and \
                    (best is None or layers > best.undo_layers):
                best = image
        if best is None:
            return None
        return BaseImage(best.digest, self.root / layout.image_relpath(best.digest),
                         self.root / layout.undo_relpath(best.digest), best.undo_layers)

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

    def links(self) -> Dict[str, str]:
        """Every symlink under the root outside hidden directories (where tags
        live, ours and earlier tools'), and the root-relative path it names
        (links leaving the root are left out)."""
        out: Dict[str, str] = {}
        root = str(self.root)
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                try:
                    target = os.readlink(full)
                except OSError:  # not a link
                    continue
                rel = os.path.relpath(full, root)
                relative = foreign.resolve_link(root, rel, target)
                if relative is not None:
                    out[rel] = relative
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        return out

    def tag_links(self) -> Dict[str, str]:
        """Every tag link under the root (outside hidden directories) and the
        digest of the image it links to. Images without a completion record
        count too: a tag still serves them (e.g. images published by 0.1), so
        garbage collection must never take them."""
        out: Dict[str, str] = {}
        for rel, target in self.links().items():
            digest = layout.digest_of_image_relpath(target)
            if digest:
                out[rel] = digest
        return out

    def foreign_links(self) -> Dict[str, str]:
        """Every link (outside hidden directories) into an image directory of
        an earlier tool (a repository taken over), and that directory's path."""
        out: Dict[str, str] = {}
        for rel, target in self.links().items():
            image = foreign.foreign_image_relpath(target)
            if image:
                out[rel] = image
        return out

    def foreign_images(self) -> List[str]:
        """The image directories an earlier tool left under the root
        (`.images/<2>/<62 hex>`, `.flat/<2>/<64 hex>`), root-relative."""
        out = []
        for top in (layout.IMAGES_DIR, foreign.FLAT_DIR):
            base = self.root / top
            for sub in sorted(base.iterdir()) if base.is_dir() and not base.is_symlink() else []:
                if sub.is_symlink() or not sub.is_dir():
                    continue
                for image in sorted(sub.iterdir()):
                    relpath = f"{top}/{sub.name}/{image.name}"
                    if foreign.foreign_image_relpath(relpath) == relpath and image.is_dir() \
                            and not image.is_symlink():
                        out.append(relpath)
        return out
