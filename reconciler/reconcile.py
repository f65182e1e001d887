"""One reconcile cycle: watchlist -> plan -> fetch -> apply -> publish -> state.

Every watched (tag, platform) is resolved with HEAD requests; only those whose
digest differs from what is published are fetched (all downloads happen
before the publisher's transaction opens) and then applied, all in one
transaction. A failure is confined to its image: the others publish, it is
reported and retried next cycle.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from .applier import ApplyOptions, apply_layer, compression_for
from .apptainer import make_apptainer_ready
from .blobstore import BlobStore, ReadOnlyBlobStore
from .errors import ConfigError, IntegrityError, LayerError, PublishError, ReconcilerError, StartError
from .fetch import ResolvedImage, fetch_layers, resolve_image
from .locking import ProcessLock
from .publish import Publisher, PublishTransaction, make_publisher
from .applier.undo import UndoError, undo_changes
from .publish.base import Build, remove_tree
from .publish.layout import tag_relpath
from .registry.client import RegistryClient, RetryPolicy
from .registry.credentials import CredentialStore, Credentials, DockerConfig, read_secret
from .registry.manifest import Descriptor, Platform
from .state import StateDB, TagKey, TagState

if TYPE_CHECKING:
    from .progress import TerminalProgress
from .watchlist import ImageEntry, Watchlist

log = logging.getLogger(__name__)

# Back off a failing tag: 1, 2, 4 … minutes, at most its interval.
BACKOFF_BASE_S = 60.0


def retry_delay(failures: int, interval: float, base: float = BACKOFF_BASE_S) -> float:
    """Seconds until the next attempt after `failures` failures in a row."""
    return min(interval, base * 2 ** (max(failures, 1) - 1))


def _duration(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds / 3600:g} hours"


def version_order(tag: str, versions: Dict[str, Version]) -> Tuple[int, object, str]:
    """The sort key `newest` uses: tags that are not versions rank below every
    version (in name order among themselves); versions by PEP 440 order."""
    version = versions.get(tag)
    return (0, (), tag) if version is None else (1, version, tag)


def select_tags(entry: ImageEntry, available: Sequence[str]) -> List[str]:
    """Apply an entry's `tag_pattern`, `semver` and `newest` to a tag list."""
    tags = list(available)
    if entry.tag_pattern:
        pattern = re.compile(entry.tag_pattern)
        tags = [t for t in tags if pattern.search(t)]
    versions: Dict[str, Version] = {}
    for t in tags:
        try:
            versions[t] = Version(t)
        except InvalidVersion:
            pass
    if entry.semver:
        spec = SpecifierSet(entry.semver)
        tags = [t for t in tags if t in versions and spec.contains(versions[t], prereleases=False)]
    if entry.newest:
        tags.sort(key=lambda t: version_order(t, versions))
        tags = tags[-entry.newest:]
    return sorted(tags)


@dataclass
class ImageOutcome:
    """What happened to one (entry, tag, platform) this cycle."""

    entry: ImageEntry
    tag: str
    platform: Platform
    tag_path: str
    status: str = "planned"  # planned | unchanged | published | failed
    resolved: Optional[ResolvedImage] = None
    reason: str = ""
    downloaded: int = 0

    @property
    def name(self) -> str:
        suffix = "" if self.tag_path.endswith(f":{self.tag}") else f" [{self.platform}]"
        return f"{self.entry.source.name}:{self.tag}{suffix}"

    @property
    def digest(self) -> Optional[str]:
        return self.resolved.manifest_digest if self.resolved else None

    @property
    def key(self) -> TagKey:
        """Its row in the state database."""
        return TagKey(self.entry.dest, self.tag, str(self.platform), self.entry.source.name, self.tag_path)

    @property
    def blobs(self) -> List[Descriptor]:
        """The config and layers it needs in the blob store."""
        return [self.resolved.manifest.config, *self.resolved.layers] if self.resolved else []


@dataclass
class CycleReport:
    """The outcome of one cycle."""

    outcomes: List[ImageOutcome] = field(default_factory=list)
    entry_failures: List[Tuple[ImageEntry, str]] = field(default_factory=list)
    removed: List[TagState] = field(default_factory=list)
    collected: List[str] = field(default_factory=list)
    transactions: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.entry_failures) or any(o.status == "failed" for o in self.outcomes)

    def summary(self) -> str:
        """A human-readable summary, one line per change or failure."""
        counts: Dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        lines = [", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing watched"]
        for o in self.outcomes:
            if o.status in ("published", "planned"):
                lines.append(f"  {o.status:9} {o.name} -> {o.tag_path} ({(o.digest or '')[:19]})")
        for row in self.removed:
            lines.append(f"  removed   {row.tag_path}")
        for digest in self.collected:
            lines.append(f"  collected {digest[:19]} (unreferenced past the grace period)")
        for entry, reason in self.entry_failures:
            lines.append(f"  FAILED    {entry.label}: {reason}")
        for o in self.outcomes:
            if o.status == "failed":
                lines.append(f"  FAILED    {o.name}: {o.reason}")
        return "\n".join(lines)


class Reconciler:
    """Converges a publisher's tree on a watchlist.

    Unless `read_only`, it starts by making this process the only writer: it
    locks the state directory and the publish target (BusyError when another
    reconciler holds either), checks that the target can be written
    (StartError) and only then recovers what an interrupted run left. A
    `read_only` reconciler (`--dry-run`) takes no lock and writes nothing: it
    can plan beside a running service.
    """

    def __init__(self, watchlist: Watchlist, *, publisher: Optional[Publisher] = None,
                 apply_options: Optional[ApplyOptions] = None, workers: int = 4,
                 retry: RetryPolicy = RetryPolicy(), clock: Callable[[], float] = time.time,
                 progress: Optional["TerminalProgress"] = None, read_only: bool = False) -> None:
        self.watchlist = watchlist
        self.read_only = read_only
        pub = watchlist.publish
        self.publisher = publisher or make_publisher(pub.backend, pub.root, state_dir=watchlist.state_dir,
                                                     repository=pub.repository or "", lease_path=pub.lease_path or "")
        self.apply_options = apply_options or ApplyOptions()
        self.workers = workers
        self.retry = retry
        self.clock = clock
        self.progress = progress
        self._clients: Dict[str, RegistryClient] = {}
        self._credentials = CredentialStore(docker_config=DockerConfig())
        self._secrets = self._read_secrets()  # now: a missing password file is a configuration error
        self._cancel = threading.Event()
        self._locks: List[ProcessLock] = []
        blobs = watchlist.state_dir / "blobs"
        if read_only:
            self.store: BlobStore = ReadOnlyBlobStore(blobs)
            self.state = StateDB.read_only(watchlist.state_dir / "state.db")
            return
        try:
            self._lock(ProcessLock(watchlist.state_dir / "lock", f"the state directory {watchlist.state_dir}"))
            self.publisher.check_ready()
            self._lock(ProcessLock(self.publisher.lock_path(), self.publisher.target_name))
            self.store = BlobStore(blobs, max_bytes=watchlist.blob_cache_max)
            self.state = StateDB(watchlist.state_dir / "state.db")
        except (OSError, sqlite3.Error) as exc:
            self._release_locks()
            raise StartError(f"cannot open the state directory {watchlist.state_dir}: {describe_failure(exc)}; "
                             "check its owner and free space") from None
        except BaseException:
            self._release_locks()
            raise
        try:
            self.publisher.recover()
        except PublishError as exc:  # cvmfs_server missing, the repository unknown: nothing can work
            self.close()
            raise StartError(str(exc)) from None
        except OSError as exc:  # e.g. a leftover of another user's run that we may not delete
            self.close()
            raise StartError(f"cannot clean up what an interrupted run left under {self.publisher.root}: "
                             f"{describe_failure(exc)}") from None
        except BaseException:
            self.close()
            raise

    def _lock(self, lock: ProcessLock) -> None:
        lock.acquire()
        self._locks.append(lock)

    def _release_locks(self) -> None:
        while self._locks:
            self._locks.pop().release()

    def _read_secrets(self) -> Dict[str, Credentials]:
        out = {}
        for host, config in self.watchlist.registries.items():
            if config.username:
                secret = read_secret(owner=f"{self.watchlist.path.name}: registries.\"{host}\"",
                                     password_file=config.password_file, password_env=config.password_env)
                out[host] = Credentials(config.username, secret)
        return out

    def cancel(self) -> None:
        """Ask a running cycle to stop downloading (Ctrl-C): transfers end at their next chunk."""
        self._cancel.set()

    def close(self) -> None:
        """Close clients and the state database, then release the locks."""
        for client in self._clients.values():
            client.close()
        self.state.close()
        self._release_locks()

    def mirror(self, host: str) -> Optional[RegistryClient]:
        """The (cached) client of a registry's configured blob mirror, anonymous."""
        url = self.watchlist.registry(host).mirror
        if not url:
            return None
        key = f"mirror:{host}"
        if key not in self._clients:
            parts = urlsplit(url)
            self._clients[key] = RegistryClient(parts.netloc, insecure=parts.scheme == "http", retry=self.retry)
        return self._clients[key]

    def registry_clients(self) -> Dict[str, RegistryClient]:
        """The registry clients made so far, by host."""
        return dict(self._clients)

    def client(self, host: str) -> RegistryClient:
        """The (cached) client for a registry host, with its configured credentials."""
        if host not in self._clients:
            config = self.watchlist.registry(host)
            creds = self._secrets.get(host) or self._credentials.lookup(host)
            self._clients[host] = RegistryClient(host, insecure=config.insecure, credentials=creds,
                                                 max_concurrency=config.max_concurrency, retry=self.retry,
                                                 private_realms=config.token_realms)
        return self._clients[host]

    # -- plan --------------------------------------------------------------

    def _watched_tags(self, entry: ImageEntry) -> List[str]:
        if not entry.lists_tags:
            return list(entry.tags)
        client = self.client(entry.source.registry)
        return select_tags(entry, client.list_tags(entry.source.repository))

    def plan(self, entries: Optional[Sequence[ImageEntry]] = None) -> CycleReport:
        """Resolve every watched tag (HEAD first) and compare with what is published.

        Tag listings, then tag resolutions, run concurrently (each registry
        client bounds its own requests by `max_concurrency`): a thousand tags
        far from the registry cost round trips in parallel, not in a row."""
        report = CycleReport()
        planned = list(entries or self.watchlist.images)
        for entry in planned:  # clients are made here, in one thread
            self.client(entry.source.registry)
            self.mirror(entry.source.registry)
        with ThreadPoolExecutor(max_workers=_PLAN_WORKERS) as pool:
            listings = [pool.submit(self._watched_tags, entry) for entry in planned]
            resolutions = []
            for entry, listing in zip(planned, listings):
                try:
                    tags = listing.result()
                except Exception as exc:  # one entry's failure is never the cycle's
                    reason = f"cannot list tags: {describe_failure(exc)}"
                    log.error("%s: %s", entry.label, reason, exc_info=_traceback_for(exc))
                    report.entry_failures.append((entry, reason))
                    continue
                if not tags:
                    log.warning("%s: no tag matches the selection", entry.label)
                for tag in tags:
                    for i, platform in enumerate(entry.platforms):
                        outcome = ImageOutcome(entry, tag, platform, tag_relpath(entry.dest, tag, platform, i == 0))
                        report.outcomes.append(outcome)
                        resolutions.append(pool.submit(self._resolve, outcome))
            for done in resolutions:
                done.result()
        self._plan_removals(planned if entries else None, report)
        return report

    def _resolve(self, outcome: ImageOutcome) -> None:
        """Resolve one (entry, tag, platform) and say whether it is published already."""
        entry = outcome.entry
        try:
            host = entry.source.registry
            outcome.resolved = resolve_image(self.client(host), self.store, entry.source.with_tag(outcome.tag),
                                             outcome.platform, mirror=self.mirror(host))
            for layer in outcome.resolved.layers:
                compression_for(layer.media_type)  # refuse unknown layer types before any download
        except Exception as exc:  # one image's failure is never the cycle's
            self._fail(outcome, exc)
            return
        if self.publisher.current_tag(outcome.tag_path) == outcome.resolved.manifest_digest:
            outcome.status = "unchanged"

    def _plan_removals(self, entries: Optional[List[ImageEntry]], report: CycleReport) -> None:
        """Published tags that are no longer watched: of the planned entries (by
        dest, so entries sharing a source never remove each other's tags) and of
        dests no entry has any more. A tag of an entry whose listing failed is
        never removed: a partial listing proves nothing."""
        watched = {o.tag_path for o in report.outcomes}
        unsure = {e.dest for e, _ in report.entry_failures}
        all_dests = {e.dest for e in self.watchlist.images}
        planned = all_dests if entries is None else {e.dest for e in entries}
        for row in self.state.all():
            in_scope = row.dest in planned or row.dest not in all_dests
            if not in_scope or row.tag_path in watched or row.dest in unsure:
                continue
            report.removed.append(row)

    def _fail(self, outcome: ImageOutcome, exc: BaseException, where: Optional[Path] = None) -> None:
        outcome.status = "failed"
        outcome.reason = describe_failure(exc, where)
        log.error("%s: %s", outcome.name, outcome.reason, exc_info=_traceback_for(exc))

    # -- the cycle ---------------------------------------------------------

    def run_once(self, *, dry_run: bool = False, entries: Optional[Sequence[ImageEntry]] = None) -> CycleReport:
        """Plan, fetch, apply and publish once; returns the report."""
        if self.publisher.needs_recovery and not self.read_only:
            self.publisher.recover()  # e.g. close a transaction the last cycle could not abort
        report = self.plan(entries)
        if dry_run or self.read_only:
            return report
        self._cancel.clear()
        changes = [o for o in report.outcomes if o.status == "planned"]
        # Every blob of this cycle stays in the store until the cycle is over.
        pinned = [d.digest for o in changes for d in o.blobs]
        self.store.pin(pinned)
        try:
            self._publish(report, changes)
        finally:
            self.store.unpin(pinned)
            self.store.evict()
        return report

    def _publish(self, report: CycleReport, changes: List[ImageOutcome]) -> None:
        self._check_cache_bound(changes)
        self._fetch([o for o in changes if o.status == "planned"])
        changes = [o for o in changes if o.status == "planned"]
        pub = self.watchlist.publish
        # Never collect the images of an entry whose tags could not be listed this cycle.
        protected = {entry.dest for entry, _ in report.entry_failures}
        doomed = self.state.gc_candidates(self.clock() - pub.gc_grace, protected, pub.gc_max_per_cycle)
        if changes or report.removed or doomed:
            names = sorted({o.name for o in changes})
            message = "reconciler: " + (", ".join(names[:20]) + (" …" if len(names) > 20 else "") or "tag removals")
            report.transactions += 1
            try:
                builds = {o.resolved.manifest_digest: chain_ids(o.resolved.config.diff_ids)
                          for o in changes if o.resolved is not None}
                with self.publisher.transaction(message, builds) as txn:
                    self._apply(txn, changes)
                    for row in report.removed:
                        txn.remove_tag(row.tag_path)
                        log.info("removed tag %s (no longer watched)", row.tag_path)
                    self._collect(txn, doomed, report)
            except Exception as exc:  # the transaction failed: contained to its changes
                reason = describe_failure(exc, self.publisher.root)
                log.debug("transaction failed", exc_info=True)
                # All or nothing (CVMFS): nothing of it is visible, every change failed.
                # Local: what was done before the failure stands.
                failed = ("planned", "published") if self.publisher.all_or_nothing else ("planned",)
                for outcome in changes:
                    if outcome.status in failed:
                        self._fail(outcome, PublishError(f"not published: {reason}"))
                if self.publisher.all_or_nothing:
                    report.removed, report.collected = [], []
                else:
                    report.removed = [r for r in report.removed
                                      if not os.path.lexists(self.publisher.root / r.tag_path)]
        with self.state.batch():  # one commit for the whole cycle's state
            self._record(report)
            self._mark_images(protected)

    def _check_cache_bound(self, changes: List[ImageOutcome]) -> None:
        """An image whose blobs alone exceed `blob_cache_max` can never be applied:
        say so, instead of evicting its layers and failing forever."""
        bound = self.watchlist.blob_cache_max
        if bound is None:
            return
        for outcome in changes:
            needed = sum({d.digest: d.size for d in outcome.blobs}.values())
            if needed > bound:
                self._fail(outcome, ConfigError(
                    f"the image needs {needed} bytes of blobs (config and layers) in the blob store, more than "
                    f"[state] blob_cache_max ({bound} bytes) in {self.watchlist.path.name}; raise blob_cache_max above the largest image"))

    def _collect(self, txn: PublishTransaction, doomed: List[str], report: CycleReport) -> None:
        """Remove unreferenced images, checking the links as they are now, in this transaction."""
        if not doomed:
            return
        live = set(self.publisher.tag_links().values())
        on_disk = set(self.publisher.images())
        for digest in doomed:
            if digest in live or digest not in on_disk:
                continue
            try:
                txn.remove_image(digest)
            except Exception as exc:  # one image that cannot go never stops the others
                log.error("cannot remove the unused image %s: %s; trying again next cycle", digest[:19],
                          describe_failure(exc, self.publisher.root))
                continue
            report.collected.append(digest)
            log.info("removed the image %s: no tag has used it for over %s ([publish] gc_grace)", digest[:19],
                     _duration(self.watchlist.publish.gc_grace))

    def _mark_images(self, protected: Set[str]) -> None:
        """Note which image directories no tag references (the GC grace period starts then)."""
        links = self.publisher.tag_links()
        owners = {row.tag_path: row.dest for row in self.state.all()}
        dest_of = {digest: owners.get(path) for path, digest in links.items()}
        on_disk = {digest: dest_of.get(digest) for digest in self.publisher.images()}
        self.state.mark_images(on_disk, set(links.values()), self.clock())

    def _fetch(self, changes: List[ImageOutcome]) -> None:
        def one(outcome: ImageOutcome) -> None:
            assert outcome.resolved is not None
            progress, name = self.progress, outcome.name
            if progress is not None:
                progress.expect(name, sum(l.size for l in outcome.resolved.layers if not self.store.has(l.digest)))

            def on_bytes(n: int) -> None:
                if self._cancel.is_set():
                    raise Cancelled()
                if progress is not None:
                    progress.downloaded(name, n)

            host = outcome.entry.source.registry
            try:
                outcome.downloaded = fetch_layers(self.client(host), self.store, outcome.resolved,
                                                  progress=on_bytes, mirror=self.mirror(host))
                log.info("%s: layers ready (%d bytes downloaded)", outcome.name, outcome.downloaded)
            except Exception as exc:  # one image's failure is never the cycle's
                self._fail(outcome, exc, where=self.store.root)

        if changes:
            pool = ThreadPoolExecutor(max_workers=self.workers)
            try:
                list(pool.map(one, changes))
            except BaseException:
                self.cancel()  # Ctrl-C: the running downloads stop at their next chunk
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _apply(self, txn: PublishTransaction, changes: List[ImageOutcome]) -> None:
        built: Dict[str, Optional[str]] = {}  # digest -> failure reason (None when built)
        for outcome in changes:
            image = outcome.resolved
            assert image is not None
            digest = image.manifest_digest
            if digest not in built:
                built[digest] = None
                if not txn.has_image(digest):
                    try:
                        with txn.build_image(digest, chain_ids(image.config.diff_ids)) as build:
                            self._apply_layers(image, build)
                    except Exception as exc:  # one image's failure is never the cycle's
                        log.debug("%s: build failed", outcome.name, exc_info=True)
                        built[digest] = describe_failure(exc, self.publisher.root)
            if built[digest] is not None:
                self._fail(outcome, ReconcilerError(built[digest]))
                continue
            try:
                txn.set_tag(outcome.tag_path, digest)
            except Exception as exc:
                self._fail(outcome, exc)
                continue
            outcome.status = "published"
            log.info("%s: published as %s (%s)", outcome.name, outcome.tag_path, digest[:19])

    def _apply_layers(self, image: ResolvedImage, build: Build) -> None:
        """Build the image in `build.path`: from the published image it was cloned
        from (its top layer undone), or from nothing; then the remaining layers
        and the Apptainer files. Everything after the layers below the top one
        goes into the image's own undo log, for the next update."""
        on_entries = None
        if self.progress is not None:
            progress, name = self.progress, str(image.reference)
            on_entries = lambda files, nbytes: progress.applied(name, files, nbytes)  # noqa: E731
        layers = list(zip(image.layers, image.config.diff_ids))
        start = self._start_from_base(image, build)
        # The undo log goes back to the layers below the top one (a one-layer
        # image keeps none: nothing could start from an empty tree).
        build.undo_layers = max(start, len(layers) - 1)
        recorder = build.recorder if build.undo_layers else None
        capabilities = 0
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
        if capabilities and self.publisher.drops_xattrs():
            log.warning("%s: %d files carry file capabilities (security.capability), which %s drops: they will "
                        "not work for users; set CVMFS_INCLUDE_XATTRS=true in the repository's server.conf",
                        image.reference, capabilities, self.publisher.target_name)
        if self.progress is not None:
            self.progress.finished(str(image.reference))
        config = image.config
        kept = make_apptainer_ready(build.path, env=config.env, entrypoint=config.entrypoint, cmd=config.cmd,
                                    labels=config.labels, bind_points=self.watchlist.publish.bind_points,
                                    observer=recorder)
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

    def _record(self, report: CycleReport) -> None:
        now = self.clock()
        for o in report.outcomes:
            if o.status in ("published", "unchanged"):
                assert o.resolved is not None
                self.state.record_success(o.key, o.resolved.tag_digest, o.resolved.manifest_digest,
                                          next_due=now + o.entry.interval, now=now)
            elif o.status == "failed":
                state = self.state.get(o.entry.dest, o.tag, str(o.platform))
                failures = (state.failures if state else 0) + 1
                self.state.record_failure(o.key, o.reason, next_due=now + retry_delay(failures, o.entry.interval),
                                          now=now)
        # A key recorded above keeps its row, though its old tag path went (the
        # platform order changed, so its link name did).
        recorded = {(o.entry.dest, o.tag, str(o.platform)) for o in report.outcomes}
        for row in report.removed:
            if (row.dest, row.tag, row.platform) not in recorded:
                self.state.forget(row.dest, row.tag, row.platform)


# Requests in flight while planning (each registry client also bounds its own).
_PLAN_WORKERS = 16


def chain_ids(diff_ids: Sequence[str]) -> List[str]:
    """The OCI ChainID of every prefix of a layer list: the first layer's DiffID,
    then sha256("<previous ChainID> <next DiffID>")."""
    out: List[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


class Cancelled(BaseException):
    """Raised inside a download when the cycle was cancelled (Ctrl-C). A
    BaseException, so that no retry loop takes it for a transfer error."""


def _traceback_for(exc: BaseException) -> bool:
    """Log a traceback only for what no operator caused: an unexpected exception
    type (a bug), never a ReconcilerError or an OSError (they say what to do)."""
    return not isinstance(exc, (ReconcilerError, OSError)) and log.isEnabledFor(logging.DEBUG)


def describe_failure(exc: BaseException, where: Optional[Path] = None) -> str:
    """One line for a site admin: what failed and, where we know, what to do.
    `where` is the directory the failing step was writing to."""
    if isinstance(exc, ReconcilerError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{exc.strerror} under {exc.filename or where or 'an unknown directory'}; free space there "
                "(or raise the quota) and it is retried next cycle")
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else f"{exc.strerror or exc}"
    return f"unexpected {type(exc).__name__}: {exc}"
