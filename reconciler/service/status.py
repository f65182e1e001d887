"""The data of `/status` (and of the status page): per entry its next poll
and last error, per watched (dest, tag, platform) its digests and times, and
the cycle in progress. Every time is ISO 8601 UTC to the second."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Union

from ..cycle.privacy_gate import TargetAudience
from ..publish import Publisher
from ..publish.layout import tag_relpath
from ..state import EntryFailure, RepositoryVisibility, TagState
from ..watchlist import ImageEntry

if TYPE_CHECKING:  # only for annotations: the scheduler imports this module
    from .scheduler import Service

# The scheduler's job kinds, in the order a tie between their times is broken.
_JOB_KINDS = ("nudge", "retry", "poll")


def iso_utc(when: Union[None, float, dt.datetime]) -> Optional[str]:
    """An epoch time or a datetime as ISO 8601 UTC to the second
    (`2024-05-01T12:00:00Z`), the one time format of /status; None stays None."""
    if when is None:
        return None
    if not isinstance(when, dt.datetime):
        when = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def service_status(service: Service) -> Dict[str, object]:
    """The JSON of /status (and all the status page shows): per entry its next
    poll and the error of its last cycle, per watched (dest, tag, platform) the
    digests, last success, last change and last error; the cycle in progress.
    Every time is ISO 8601 UTC."""
    scheduler = service.scheduler
    jobs = {job.id: job.next_run_time for job in scheduler.get_jobs()} if scheduler.running else {}
    images = []
    for run in service.reconciler.targets:
        state = run.state
        rows_by_dest: Dict[str, List[TagState]] = {}
        entry_errors = state.entry_failures()
        for row in state.all():
            rows_by_dest.setdefault(row.dest, []).append(row)
        visibilities = state.visibilities()
        for entry in run.watchlist.images:
            image = _image_status(entry, jobs, rows_by_dest.get(entry.dest, []), entry_errors, run.publisher)
            image.update(_privacy_status(entry, run.audience, visibilities.get(entry.source.name)))
            images.append(image)
    order = {entry.dest: i for i, entry in enumerate(service.watchlist.images)}
    images.sort(key=lambda image: order.get(str(image["dest"]), len(order)))
    cycle = service.cycle
    return {
        "now": iso_utc(time.time()),
        "cycle": {"running": cycle is not None,
                  "started": iso_utc(cycle.started) if cycle else None,
                  "entries": list(cycle.entries) if cycle else [],
                  "images": [asdict(p) for p in service.progress.snapshot()] if cycle else []},
        "last_cycle": iso_utc(service.last_cycle),
        "cycles_done": service.cycles_done,
        "images": images,
    }


def _image_status(entry: ImageEntry, jobs: Mapping[str, Optional[dt.datetime]], rows: List[TagState],
                  entry_errors: Mapping[str, EntryFailure], publisher: Publisher) -> Dict[str, object]:
    """One watchlist entry for /status: its next poll, its error, its tags."""
    upcoming = [jobs.get(f"{kind}-{entry.index}") for kind in _JOB_KINDS]
    nxt = min((t for t in upcoming if t is not None), default=None)
    # Rows are keyed by dest: entries that share a source never show each other's tags.
    tags = [{**_tag_status(r, publisher), **signature_status(entry, r)} for r in rows]
    seen = {(t["tag"], t["platform"]) for t in tags}
    # Exact tags get a row before their first poll: the page lists everything watched.
    tags += [{"tag": tag, "platform": str(platform), "state": "waiting",
              "path": tag_relpath(entry.dest, tag, platform, first=i == 0), "digest": None,
              "published": None, "last_success": None, "last_changed": None, "last_failure": None,
              "last_error": None, "failures": 0, "signed_by": None, "signed_where": None}
             for tag in entry.tags for i, platform in enumerate(entry.platforms)
             if (tag, str(platform)) not in seen]
    tags.sort(key=lambda t: str(t["tag"]))  # stable: platforms keep their order
    failing = entry_errors.get(entry.dest)
    error = (failing.last_failure, failing.failure_reason) if failing else None
    return {
        "entry": entry.label, "source": entry.source.name, "dest": entry.dest,
        "interval_seconds": entry.interval, "next_poll": iso_utc(nxt),
        "error": {"at": iso_utc(error[0]), "reason": error[1]} if error else None,
        "tags": tags,
    }


def _privacy_status(entry: ImageEntry, audience: TargetAudience,
                    seen: Optional[RepositoryVisibility]) -> Dict[str, object]:
    """An entry's target (and whether anyone can read it) and what the last
    anonymous probe said of its source repository."""
    return {
        "target": audience.label, "target_public": audience.public, "private_ok": entry.private_ok,
        "source_public": seen.public if seen else None,
        "source_visibility": {"public": seen.public, "reason": seen.reason or None,
                              "checked_at": iso_utc(seen.checked_at)} if seen else None,
    }


def _tag_status(row: TagState, publisher: Publisher) -> Dict[str, object]:
    """One watched (dest, tag, platform) for /status."""
    failing = (row.last_failure or 0) > (row.last_success or 0)
    changed = publisher.tag_changed_at(row.tag_path)
    return {"tag": row.tag, "platform": row.platform,
            "state": "failing" if failing else "published" if row.published_digest else "waiting",
            "path": row.tag_path, "digest": row.manifest_digest, "published": row.published_digest,
            "last_success": iso_utc(row.last_success), "last_changed": iso_utc(changed),
            "last_failure": iso_utc(row.last_failure), "last_error": row.failure_reason if failing else None,
            "failures": row.failures}


# What `signed_by` says of a published tag no key is recorded for.
NO_POLICY = "no policy"
UNVERIFIED = "unverified"  # published before its entry had a signature policy


def published_signer(entry: Optional[ImageEntry], row: TagState) -> Optional[str]:
    """Who signed a published tag: the key's SHA-256 fingerprint, "no policy",
    or "unverified" (published before the policy); None while unpublished."""
    if row.signed_by:
        return row.signed_by
    if not row.published_digest:
        return None
    return NO_POLICY if entry is None or entry.signature is None else UNVERIFIED


def signature_status(entry: ImageEntry, row: TagState) -> Dict[str, object]:
    """The provenance fields of one tag in /status."""
    return {"signed_by": published_signer(entry, row), "signed_where": row.signed_where}
