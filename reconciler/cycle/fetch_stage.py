"""The fetch stage: every blob the plan needs, present in the blob store and
pinned there for the rest of the cycle.

It stores the manifests and configs the plan downloaded (and marks those it
read as recently used), then downloads the layers of each planned change,
concurrently. A failure is confined to its image. It returns what happened
to each outcome (a `FetchResult`) and leaves the outcomes as the plan made them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, List, Optional, Set, Tuple

from ..blobstore import BlobStore
from ..errors import ConfigError
from ..fetch import fetch_layers
from .outcome import ImageOutcome, Registries, Status, describe_failure, report_failure
from .plan import Plan
from .results import FetchResult

if TYPE_CHECKING:
    from ..progress import TerminalProgress

log = logging.getLogger(__name__)


class Cancelled(BaseException):
    """Raised inside a download when the cycle was cancelled (Ctrl-C). A
    BaseException, so that no retry loop takes it for a transfer error."""


class FetchStage:
    """Fetches a plan's blobs into `store`. Setting `cancel` stops the running
    downloads at their next chunk; `cache_bound` is `[state] blob_cache_max`,
    named in messages as a setting of `config_name`."""

    def __init__(self, store: BlobStore, registries: Registries, *, cancel: threading.Event, workers: int = 4,
                 progress: Optional["TerminalProgress"] = None, cache_bound: Optional[int] = None,
                 config_name: str = "the watchlist") -> None:
        self.store = store
        self.registries = registries
        self.cancel = cancel
        self.workers = workers
        self.progress = progress
        self.cache_bound = cache_bound
        self.config_name = config_name

    @contextlib.contextmanager
    def pinned(self, plan: Plan) -> Iterator[None]:
        """Keep the blobs of the plan's changes from eviction until the block ends
        (they are in use until the cycle is over); then evict down to the bound."""
        pins = [d.digest for o in plan.changes for d in o.blobs]
        self.store.pin(pins)
        try:
            yield
        finally:
            self.store.unpin(pins)
            self.store.evict()

    def fetch(self, plan: Plan) -> FetchResult:
        """Store what the plan downloaded, then download the layers of its changes.
        An image that fails is reported failed in the result; the others go on."""
        result = FetchResult()
        self._keep(plan, result)
        changes = result.remaining(plan.changes)
        self._check_cache_bound(changes, result)
        self._download(result.remaining(changes), result)
        return result

    def _keep(self, plan: Plan, result: FetchResult) -> None:
        """Manifests and configs the plan used: stored when it downloaded them,
        else marked recently used (the plan itself writes nothing, not even that)."""
        touched: Set[str] = set()
        for outcome in plan.outcomes:
            if outcome.status is Status.FAILED:  # the plan's failure stands; its downloads are kept below
                continue
            image = outcome.resolved
            # A tag known unchanged from its HEAD: its manifests stay (a Docker Hub
            # manifest GET counts as a pull, should its index change later).
            used = (image.tag_digest, image.manifest_digest, image.manifest.config.digest) if image \
                else outcome.unchanged_at or ()
            try:
                for digest in dict.fromkeys(used):
                    if digest in plan.fetched:
                        self.store.put_bytes(digest, plan.fetched[digest])
                    elif digest not in touched:
                        self.store.touch(digest)
                        touched.add(digest)
            except Exception as exc:  # one image's failure is never the cycle's
                result.failures[outcome.key] = report_failure(outcome.name, exc, where=self.store.root)
        # Also what images that failed to resolve downloaded: not fetched again next cycle.
        for digest, data in plan.fetched.items():
            if not self.store.has(digest):
                try:
                    self.store.put_bytes(digest, data)
                except Exception as exc:  # only a cache: the next cycle fetches it again
                    log.warning("cannot keep %s in the blob store: %s", digest[:19],
                                describe_failure(exc, self.store.root))

    def _check_cache_bound(self, changes: List[ImageOutcome], result: FetchResult) -> None:
        """An image whose blobs alone exceed `blob_cache_max` can never be applied:
        say so, instead of evicting its layers and failing forever."""
        bound = self.cache_bound
        if bound is None:
            return
        for outcome in changes:
            needed = sum({d.digest: d.size for d in outcome.blobs}.values())
            if needed > bound:
                result.failures[outcome.key] = report_failure(outcome.name, ConfigError(
                    f"the image needs {needed} bytes of blobs (config and layers) in the blob store, more than "
                    f"[state] blob_cache_max ({bound} bytes) in {self.config_name}; raise blob_cache_max above "
                    "the largest image"))

    def _download(self, changes: List[ImageOutcome], result: FetchResult) -> None:
        """Download the layers of `changes` concurrently; note in `result` each
        one's bytes downloaded, or its failure."""
        def one(outcome: ImageOutcome) -> Tuple[int, Optional[str]]:
            """(bytes downloaded, None), or (0, the reason it failed)."""
            assert outcome.resolved is not None
            progress, name = self.progress, outcome.name
            if progress is not None:
                progress.expect(name, sum(d.size for d in outcome.resolved.layers if not self.store.has(d.digest)))

            def on_bytes(n: int) -> None:
                if self.cancel.is_set():
                    raise Cancelled()
                if progress is not None:
                    progress.downloaded(name, n)

            host = outcome.entry.source.registry
            try:
                downloaded = fetch_layers(self.registries.client(host), self.store, outcome.resolved,
                                          progress=on_bytes, mirror=self.registries.mirror(host))
                log.info("%s: layers ready (%d bytes downloaded)", outcome.name, downloaded)
                return downloaded, None
            except Exception as exc:  # one image's failure is never the cycle's
                return 0, report_failure(outcome.name, exc, where=self.store.root)

        if changes:
            pool = ThreadPoolExecutor(max_workers=self.workers)
            try:
                # Collected here, in this thread: the workers share nothing they write.
                for outcome, (downloaded, failure) in zip(changes, pool.map(one, changes)):
                    if failure is None:
                        result.downloaded[outcome.key] = downloaded
                    else:
                        result.failures[outcome.key] = failure
            except BaseException:
                self.cancel.set()  # Ctrl-C: the running downloads stop at their next chunk
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
