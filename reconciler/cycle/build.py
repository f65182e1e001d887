"""The build stage: inside one transaction of the publisher, build each changed
image (layers applied from nothing, or from a published image sharing its
lower layers, whose top is undone), make it Apptainer-ready, set its tags;
remove the tags no longer watched and collect unreferenced images.

A failing image fails alone; a failing transaction fails all its changes
(all-or-nothing publishers) or those not done yet (the local directory).
The stage returns what it did (a `BuildResult`); the outcomes it was given
stay as they were.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from ..applier import ApplyOptions, apply_layer
from ..applier.undo import UndoError, undo_changes
from ..apptainer import DEFAULT_BIND_POINTS, make_apptainer_ready
from ..blobstore import BlobStore
from ..errors import IntegrityError, LayerError, PublishError, ReconcilerError
from ..fetch import ResolvedImage
from ..publish import Publisher, PublishTransaction
from ..publish.base import Build, remove_tree
from ..registry.reference import is_valid_digest
from ..state import TagState
from .outcome import ImageOutcome, describe_failure, report_failure
from .results import BuildResult

if TYPE_CHECKING:
    from ..progress import TerminalProgress

log = logging.getLogger(__name__)


def chain_ids(diff_ids: Sequence[str]) -> List[str]:
    """The OCI ChainID of every prefix of a layer list: the first layer's DiffID,
    then sha256("<previous ChainID> <next DiffID>")."""
    out: List[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def _duration(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds / 3600:g} hours"


class BuildStage:
    """Builds and publishes through `publisher`, reading layers from `store`."""

    def __init__(self, publisher: Publisher, store: BlobStore, *, apply_options: Optional[ApplyOptions] = None,
                 bind_points: Sequence[str] = DEFAULT_BIND_POINTS, gc_grace: float = 0.0,
                 progress: Optional["TerminalProgress"] = None) -> None:
        self.publisher = publisher
        self.store = store
        # The backend adds its own filters (e.g. CernVM-FS refuses variant symlinks).
        self.apply_options = publisher.apply_options(apply_options or ApplyOptions())
        self.bind_points = bind_points
        self.gc_grace = gc_grace  # only said in messages: the plan chose what to collect
        self.progress = progress

    def publish(self, changes: List[ImageOutcome], removals: Sequence[TagState], doomed: Sequence[str],
                foreign_removals: Sequence[str] = ()) -> BuildResult:
        """One transaction for `changes` (planned outcomes), the tag `removals`, the
        earlier tool's links to collect (`foreign_removals`) and the images in
        `doomed` (ours by digest, an earlier tool's by path; each checked again
        against the links as they are then); none when there is nothing to do.
        Returns what it did."""
        result = BuildResult(removed=list(removals))
        if not (changes or removals or doomed or foreign_removals):
            return result
        names = sorted({o.name for o in changes})
        message = "reconciler: " + (", ".join(names[:20]) + (" …" if len(names) > 20 else "") or "tag removals")
        result.transactions += 1
        try:
            builds = {o.resolved.manifest_digest: chain_ids(o.resolved.config.diff_ids)
                      for o in changes if o.resolved is not None}
            with self.publisher.transaction(message, builds) as txn:
                self._apply(txn, changes, builds, result)
                for row in removals:
                    txn.remove_tag(row.tag_path)
                    log.info("removed tag %s (no longer watched)", row.tag_path)
                for tag_path in foreign_removals:
                    txn.remove_tag(tag_path)
                    log.info("removed tag %s of an earlier tool: no entry watches it ([publish] foreign_tags = "
                             "\"collect\")", tag_path)
                self._collect(txn, doomed, result)
        except Exception as exc:  # the transaction failed: contained to its changes
            self._transaction_failed(exc, changes, result)
        return result

    def _transaction_failed(self, exc: Exception, changes: List[ImageOutcome], result: BuildResult) -> None:
        """Fail the changes the failed transaction took with it, and keep only the removals that stood."""
        reason = describe_failure(exc, self.publisher.root)
        log.debug("transaction failed", exc_info=True)
        # All or nothing (CVMFS): nothing of it is visible, every change failed.
        # Local: what was done before the failure stands.
        published = set(result.published)
        for outcome in changes:
            key = outcome.key
            if key not in result.failures and (self.publisher.all_or_nothing or key not in published):
                result.failures[key] = report_failure(outcome.name, PublishError(f"not published: {reason}"))
        if self.publisher.all_or_nothing:
            result.published, result.removed, result.collected = [], [], []
        else:
            result.removed = [r for r in result.removed if not self.publisher.has_tag_link(r.tag_path)]

    def _apply(self, txn: PublishTransaction, changes: List[ImageOutcome], chains: Dict[str, List[str]],
               result: BuildResult) -> None:
        """Build each change's image once (`chains`: the ChainIDs of each), then
        set the tags: every build before the first tag, so that a backend making
        its trees durable before a link moves (the local directory) does it once."""
        built: Dict[str, Optional[str]] = {}  # digest -> failure reason (None when built)
        for outcome in changes:
            image = outcome.resolved
            assert image is not None
            digest = image.manifest_digest
            if digest not in built:
                built[digest] = None
                if not txn.has_image(digest):
                    try:
                        with txn.build_image(digest, chains[digest]) as build:
                            self.apply_layers(image, build, progress_key=outcome.name)
                    except Exception as exc:  # one image's failure is never the cycle's
                        log.debug("%s: build failed", outcome.name, exc_info=True)
                        built[digest] = describe_failure(exc, self.publisher.root)
            if self.progress is not None:  # built by this outcome, by an earlier one sharing it, or failed
                self.progress.finished(outcome.name)
        for outcome in changes:
            assert outcome.resolved is not None
            digest = outcome.resolved.manifest_digest
            failure = built[digest]
            if failure is not None:
                result.failures[outcome.key] = report_failure(outcome.name, ReconcilerError(failure))
                continue
            try:
                txn.set_tag(outcome.tag_path, digest)
            except Exception as exc:
                result.failures[outcome.key] = report_failure(outcome.name, exc)
                continue
            result.published.append(outcome.key)
            log.info("%s: published as %s (%s)", outcome.name, outcome.tag_path, digest[:19])

    def apply_layers(self, image: ResolvedImage, build: Build, progress_key: str) -> None:
        """Build the image in `build.path`: from the published image it was cloned
        from (its top layer undone), or from nothing; then the remaining layers
        and the Apptainer files. Everything after the layers below the top one
        goes into the image's own undo log, for the next update. Progress is
        counted under `progress_key`, the outcome's name, as its download was."""
        on_entries = None
        if self.progress is not None:
            progress = self.progress
            on_entries = lambda files, nbytes: progress.applied(progress_key, files, nbytes)  # noqa: E731
        layers = list(zip(image.layers, image.config.diff_ids))
        start = self._start_from_base(image, build)
        # The undo log goes back to the layers below the top one (a one-layer
        # image keeps none: nothing could start from an empty tree).
        build.undo_layers = max(start, len(layers) - 1)
        recorder = build.recorder if build.undo_layers else None
        capabilities = special = 0
        for i in range(start, len(layers)):
            layer, diff_id = layers[i]
            try:
                with self.store.path(layer.digest).open("rb") as blob:
                    stats = apply_layer(blob, layer.media_type, build.path, expected_diff_id=diff_id,
                                        options=self.apply_options, progress=on_entries,
                                        observer=recorder if i >= build.undo_layers else None)
            except (LayerError, IntegrityError) as exc:
                raise type(exc)(f"layer {i + 1} of {len(layers)} ({layer.digest[:19]}): {exc}") from None
            capabilities += stats.capabilities
            special += stats.special
        for hint in self.publisher.build_hints(str(image.reference), capabilities, special=special):
            log.warning("%s", hint)
        if self.progress is not None:
            self.progress.finished(progress_key)
        config = image.config
        kept = make_apptainer_ready(build.path, env=config.env, entrypoint=config.entrypoint, cmd=config.cmd,
                                    labels=config.labels, bind_points=self.bind_points, observer=recorder)
        if kept:
            log.debug("%s: the image already has %s; left as they are", image.reference, ", ".join(kept))

    def _start_from_base(self, image: ResolvedImage, build: Build) -> int:
        """Undo the top of the image `build.path` was cloned from; returns how many
        layers are in place (0: none, the tree is empty)."""
        base = build.base
        if base is None:
            return 0
        try:
            undone = undo_changes(build.path, base.undo)
        except (UndoError, OSError) as exc:
            log.warning("%s: cannot reuse the layers of the published image %s (%s); applying all %d layers instead",
                        image.reference, base.digest[:19], describe_failure(exc), len(image.layers))
            # Anew, not only emptied: the clone's root carries the old image's owner, mode and xattrs.
            remove_tree(build.path)
            build.path.mkdir()
            return 0
        log.info("%s: reusing %d of %d layers from the published image %s; applying the other %d",
                 image.reference, base.layers, len(image.layers), base.digest[:19], len(image.layers) - base.layers)
        log.debug("%s: %d paths set back to how the lower layers had them", image.reference, undone)
        return base.layers

    def _collect(self, txn: PublishTransaction, doomed: Sequence[str], result: BuildResult) -> None:
        """Remove unreferenced images, checking the links as they are now, in this transaction."""
        if not doomed:
            return
        # Ours by digest, an earlier tool's by path: any link, ours or theirs, keeps one.
        live = set(self.publisher.tag_links().values()) | set(self.publisher.foreign_links().values())
        on_disk = set(self.publisher.images()) | set(self.publisher.foreign_images())
        for digest in doomed:
            if digest in live or digest not in on_disk:
                continue
            try:
                if is_valid_digest(digest):
                    txn.remove_image(digest)
                else:
                    txn.remove_foreign_image(digest)
            except Exception as exc:  # one image that cannot go never stops the others
                log.error("cannot remove the unused image %s: %s; trying again next cycle", digest[:19],
                          describe_failure(exc, self.publisher.root))
                continue
            result.collected.append(digest)
            log.info("removed the image %s: no tag has used it for over %s ([publish] gc_grace)", digest[:19],
                     _duration(self.gc_grace))
