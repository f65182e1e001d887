"""The record stage: the state database written from a cycle's outcomes, in
one commit. A success resets a tag's failures; a failure backs it off (1, 2,
4 … minutes, at most its interval), and so does an entry whose tags could not
be listed; the service schedules its retries from these times alone, so a
backoff survives a restart. Tags removed from the tree are forgotten;
image directories no tag references start (or keep) their GC grace period.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Protocol, Sequence

from ..state import StateDB
from ..watchlist import ImageEntry
from .outcome import CycleReport, Status

# Back off a failing tag: 1, 2, 4 … minutes, at most its interval.
BACKOFF_BASE_S = 60.0


def retry_delay(failures: int, interval: float, base: float = BACKOFF_BASE_S) -> float:
    """Seconds until the next attempt after `failures` failures in a row."""
    return float(min(interval, base * 2.0 ** (max(failures, 1) - 1)))


class PublishedTree(Protocol):
    """What the record stage reads of a publisher: the tree as it is now."""

    def tag_links(self) -> Dict[str, str]:
        """Every tag link and the digest of the image it links to."""

    def images(self) -> List[str]:
        """The digest of every image directory."""

    def foreign_links(self) -> Dict[str, str]:
        """Every link into an earlier tool's image directory, and that directory."""

    def foreign_images(self) -> List[str]:
        """Every image directory an earlier tool left, by path."""


def record(state: StateDB, published: PublishedTree, report: CycleReport, *,
           clock: Callable[[], float], backoff_base: float = BACKOFF_BASE_S) -> None:
    """Write the report's outcomes, entry failures and removals, and which
    images no tag uses, to `state` in one commit. A failure's `next_due` is
    the one backoff the service schedules retries by."""
    with state.batch():  # one commit for the whole cycle's state
        now = clock()
        _record_tags(state, report, now, backoff_base)
        _record_entries(state, report.entries, dict(report.entry_failures), now, backoff_base)
        _mark_images(state, published, clock())


def record_cycle_failure(state: StateDB, entries: Sequence[ImageEntry], reason: str, *, now: float,
                         backoff_base: float = BACKOFF_BASE_S) -> None:
    """A cycle that failed as a whole (it raised): each of its entries failed."""
    with state.batch():
        _record_entries(state, entries, {entry: reason for entry in entries}, now, backoff_base)


def _record_tags(state: StateDB, report: CycleReport, now: float, backoff_base: float) -> None:
    for o in report.outcomes:
        if o.status in (Status.PUBLISHED, Status.UNCHANGED):
            assert o.digests is not None
            # A published image records who signed it (or no policy); an unchanged one keeps its record.
            signature = (o.signed_by, o.signed_where) if o.status is Status.PUBLISHED else None
            state.record_success(o.key, *o.digests, next_due=now + o.entry.interval, now=now, signature=signature)
        elif o.status is Status.FAILED:
            row = state.get(o.entry.dest, o.tag, str(o.platform))
            failures = (row.failures if row else 0) + 1
            state.record_failure(o.key, o.reason, now=now,
                                 next_due=now + retry_delay(failures, o.entry.interval, backoff_base))
    # A key recorded above keeps its row, though its old tag path went (the
    # platform order changed, so its link name did).
    recorded = {(o.entry.dest, o.tag, str(o.platform)) for o in report.outcomes}
    for row in report.removed:
        if (row.dest, row.tag, row.platform) not in recorded:
            state.forget(row.dest, row.tag, row.platform)


def _record_entries(state: StateDB, entries: Iterable[ImageEntry], failed: Mapping[ImageEntry, str], now: float,
                    backoff_base: float) -> None:
    for entry in entries:
        if entry not in failed:
            state.clear_entry_failure(entry.dest)
            continue
        before = state.entry_failure(entry.dest)
        failures = (before.failures if before else 0) + 1
        state.record_entry_failure(entry.dest, entry.source.name, failed[entry], now=now,
                                   next_due=now + retry_delay(failures, entry.interval, backoff_base))


def _mark_images(state: StateDB, published: PublishedTree, now: float) -> None:
    """Note which image directories no tag references (the GC grace period starts then)."""
    links = published.tag_links()
    owners = {row.tag_path: row.dest for row in state.all()}
    dest_of = {digest: owners.get(path) for path, digest in links.items()}
    on_disk = {digest: dest_of.get(digest) for digest in published.images()}
    # An earlier tool's image directories (a repository taken over) age the same
    # way, keyed by their path: no link of theirs or ours refers to them.
    on_disk.update((path, None) for path in published.foreign_images())
    state.mark_images(on_disk, set(links.values()) | set(published.foreign_links().values()), now)
