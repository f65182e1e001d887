"""The record stage: the state database written from a cycle's outcomes, in
one commit. A success resets a tag's failures; a failure backs it off (1, 2,
4 … minutes, at most its interval); tags removed from the tree are forgotten;
image directories no tag references start (or keep) their GC grace period.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Protocol

from ..state import StateDB
from .outcome import CycleReport

# Back off a failing tag: 1, 2, 4 … minutes, at most its interval.
BACKOFF_BASE_S = 60.0


def retry_delay(failures: int, interval: float, base: float = BACKOFF_BASE_S) -> float:
    """Seconds until the next attempt after `failures` failures in a row."""
    return min(interval, base * 2 ** (max(failures, 1) - 1))


class PublishedTree(Protocol):
    """What the record stage reads of a publisher: the tree as it is now."""

    def tag_links(self) -> Dict[str, str]:
        """Every tag link and the digest of the image it links to."""

    def images(self) -> List[str]:
        """The digest of every image directory."""


def record(state: StateDB, published: PublishedTree, report: CycleReport, *,
           clock: Callable[[], float]) -> None:
    """Write the report's outcomes and removals, and which images no tag uses,
    to `state` in one commit."""
    with state.batch():  # one commit for the whole cycle's state
        _record_tags(state, report, clock())
        _mark_images(state, published, clock())


def _record_tags(state: StateDB, report: CycleReport, now: float) -> None:
    for o in report.outcomes:
        if o.status in ("published", "unchanged"):
            assert o.digests is not None
            state.record_success(o.key, *o.digests, next_due=now + o.entry.interval, now=now)
        elif o.status == "failed":
            row = state.get(o.entry.dest, o.tag, str(o.platform))
            failures = (row.failures if row else 0) + 1
            state.record_failure(o.key, o.reason, next_due=now + retry_delay(failures, o.entry.interval), now=now)
    # A key recorded above keeps its row, though its old tag path went (the
    # platform order changed, so its link name did).
    recorded = {(o.entry.dest, o.tag, str(o.platform)) for o in report.outcomes}
    for row in report.removed:
        if (row.dest, row.tag, row.platform) not in recorded:
            state.forget(row.dest, row.tag, row.platform)


def _mark_images(state: StateDB, published: PublishedTree, now: float) -> None:
    """Note which image directories no tag references (the GC grace period starts then)."""
    links = published.tag_links()
    owners = {row.tag_path: row.dest for row in state.all()}
    dest_of = {digest: owners.get(path) for path, digest in links.items()}
    on_disk = {digest: dest_of.get(digest) for digest in published.images()}
    state.mark_images(on_disk, set(links.values()), now)
