"""The plan stage: what a cycle would change, decided from reads only.

Every watched (tag, platform) starts with a HEAD. A tag whose digest is the
one recorded, its image complete in the tree, is unchanged and read no
further; any other is resolved (a GET only for a manifest or config the blob
store lacks) and compared with what is published.
The plan writes nothing: manifests and configs it had to download are kept in
memory, in `Plan.fetched`, for the fetch stage to store. So `--dry-run` is this
stage printed, and can run beside a service.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Set, Tuple

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from ..applier import compression_for
from ..blobstore import BlobStore
from ..fetch import current_digest, resolve_image
from ..publish.layout import tag_relpath
from ..registry.reference import is_valid_digest, is_valid_tag
from ..state import TagState
from ..watchlist import ImageEntry, Watchlist
from .outcome import CycleReport, ImageOutcome, Registries, Status, describe_failure, traceback_for
from .takeover import TakeoverPlan, plan_takeover

log = logging.getLogger(__name__)

# Requests in flight while planning (each registry client also bounds its own).
PLAN_WORKERS = 16

# Tags cosign (and OCI 1.1's referrers fallback) derive from a digest: a
# signature, an attestation, an SBOM, a referrers index. Never images, so
# never selected, however broad the tag_pattern (it is matched with re.search).
ATTACHMENT_TAG = re.compile(r"sha256-[0-9a-f]{64}(\.(sig|att|sbom))?")


class PublishedTags(Protocol):
    """What the plan reads of a publisher."""

    def current_tag(self, tag_path: str) -> Optional[str]:
        """The digest the tag link points at, if at a complete image."""

    def tag_links(self) -> Dict[str, str]:
        """Every tag link into the image store, and the digest it links to."""

    def foreign_links(self) -> Dict[str, str]:
        """Every link into an earlier tool's image directory, and that directory."""


class StateReader(Protocol):
    """What the plan reads of the state database."""

    def all(self) -> List[TagState]:
        """Every recorded tag link."""

    def gc_candidates(self, unreferenced_before: float, protected_dests: Set[str], limit: int) -> List[str]:
        """Images unreferenced for long enough to collect."""


@dataclass
class Plan:
    """What one cycle would do. `outcomes` hold each watched (dest, tag,
    platform) with its resolved image and status: `planned` (to build and
    publish), `unchanged` or `failed`."""

    entries: List[ImageEntry] = field(default_factory=list)  # the entries planned
    outcomes: List[ImageOutcome] = field(default_factory=list)
    entry_failures: List[Tuple[ImageEntry, str]] = field(default_factory=list)
    removals: List[TagState] = field(default_factory=list)  # published tags no longer watched
    gc_candidates: List[str] = field(default_factory=list)  # images unreferenced past the grace period
    fetched: Dict[str, bytes] = field(default_factory=dict)  # manifests and configs not in the blob store yet
    # An earlier tool's tag links (a repository taken over): replaced, kept, collected.
    takeover: TakeoverPlan = field(default_factory=TakeoverPlan)

    @property
    def unlisted_dests(self) -> Set[str]:
        """The dests of entries whose tags could not be listed: a partial view
        proves nothing, so nothing of theirs is removed or collected."""
        return {entry.dest for entry, _ in self.entry_failures}

    @property
    def changes(self) -> List[ImageOutcome]:
        """The outcomes still to build and publish."""
        return [o for o in self.outcomes if o.status is Status.PLANNED]

    def report(self) -> CycleReport:
        """A report of this plan, sharing its outcomes (`results.cycle_report` moves them on)."""
        return CycleReport(outcomes=self.outcomes, entry_failures=self.entry_failures, removed=list(self.removals),
                           entries=list(self.entries), takeovers=[self.takeover])


def version_order(tag: str, versions: Dict[str, Version]) -> Tuple[int, object, str]:
    """The sort key `newest` uses: tags that are not versions rank below every
    version (in name order among themselves); versions by PEP 440 order."""
    version = versions.get(tag)
    return (0, (), tag) if version is None else (1, version, tag)


def select_tags(entry: ImageEntry, available: Sequence[str]) -> List[str]:
    """Apply an entry's `tag_glob`, `tag_pattern`, `semver` and `newest` to a tag list
    (attachment tags, `sha256-<hex>.sig` and the like, are never selected)."""
    tags = [t for t in available if not ATTACHMENT_TAG.fullmatch(t)]
    if entry.tag_glob:
        # fnmatchcase: fnmatch without the OS's case folding, which on POSIX
        # (where cvmfs-singularity-sync runs fnmatch.filter) is none anyway.
        tags = [t for t in tags if any(fnmatch.fnmatchcase(t, g) for g in entry.tag_glob)]
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


def valid_tags(entry: ImageEntry, listed: Sequence[str]) -> List[str]:
    """The tags of a registry's listing that are tags by the OCI grammar; the
    others (a registry's bug, or a hostile one) are skipped with one warning
    naming the entry, so they can fail nothing else."""
    valid = [t for t in listed if isinstance(t, str) and is_valid_tag(t)]
    if len(valid) < len(listed):
        bad = [t for t in listed if not (isinstance(t, str) and is_valid_tag(t))]
        shown = ", ".join(repr(t)[:80] for t in bad[:3]) + (" …" if len(bad) > 3 else "")
        log.warning("%s: skipped %d invalid tag name%s in the registry's tag list (%s)", entry.label, len(bad),
                    "" if len(bad) == 1 else "s", shown)
    return valid


@dataclass
class _TagResolver:
    """Resolves one watched (tag, platform) against the registry, the state
    and the tree: from its HEAD alone when nothing moved, else in full."""

    registries: Registries
    reader: BlobStore  # read-only: what it downloads stays in memory
    published: PublishedTags
    recorded: Dict[Tuple[str, str, str], TagState]

    def watched_tags(self, entry: ImageEntry) -> List[str]:
        """The entry's exact tags, or its selection from the registry's list."""
        if not entry.lists_tags:
            return list(entry.tags)
        listed = self.registries.client(entry.source.registry).list_tags(entry.source.repository)
        return select_tags(entry, valid_tags(entry, listed))

    def resolve(self, outcome: ImageOutcome) -> None:
        """Set the outcome's resolved image, or mark it unchanged or failed."""
        host = outcome.entry.source.registry
        client = self.registries.client(host)
        try:
            ref = outcome.entry.source.with_tag(outcome.tag)
            seen = current_digest(client, ref)
            current = self.published.current_tag(outcome.tag_path)
            row = self.recorded.get((outcome.entry.dest, outcome.tag, str(outcome.platform)))
            if seen and row and row.seen_digest == seen and row.manifest_digest and current == row.manifest_digest:
                # The tag did not move and its image is published: nothing to read.
                outcome.unchanged_at = (seen, row.manifest_digest)
                outcome.unchanged()
                return
            outcome.resolved = resolve_image(client, self.reader, ref, outcome.platform, known_digest=seen,
                                             mirror=self.registries.mirror(host))
            for layer in outcome.resolved.layers:
                compression_for(layer.media_type)  # refuse unknown layer types before any download
        except Exception as exc:  # one image's failure is never the cycle's
            outcome.fail(exc)
            return
        if current == outcome.resolved.manifest_digest:
            outcome.unchanged()


def _expect_repositories(registries: Registries, planned: Sequence[ImageEntry]) -> None:
    """Tell each registry's client the repositories of the cycle: one token
    request may then serve many of them."""
    repositories: Dict[str, List[str]] = {}
    for entry in planned:
        registries.mirror(entry.source.registry)
        repositories.setdefault(entry.source.registry, []).append(entry.source.repository)
    for host, names in repositories.items():
        registries.client(host).expect_repositories(names)


def plan(watchlist: Watchlist, registries: Registries, store: BlobStore, published: PublishedTags,
         state: StateReader, *, now: float, entries: Optional[Sequence[ImageEntry]] = None) -> Plan:
    """Resolve every watched tag of `entries` (default: all of the watchlist's)
    and compare with what is published; also find the published tags no longer
    watched and the images to collect. Reads only: writes nothing anywhere.

    Tag listings, then tag resolutions, run concurrently (each registry client
    bounds its own requests by `max_concurrency`): a thousand tags far from the
    registry cost round trips in parallel, not in a row."""
    planned = list(entries or watchlist.images)
    out = Plan(entries=planned)
    reader = store.read_only()  # reads the store; what it downloads stays in memory
    _expect_repositories(registries, planned)
    rows = state.all()
    resolver = _TagResolver(registries, reader, published, {(r.dest, r.tag, r.platform): r for r in rows})
    with ThreadPoolExecutor(max_workers=PLAN_WORKERS) as pool:
        listings = [pool.submit(resolver.watched_tags, entry) for entry in planned]
        resolutions = []
        for entry, listing in zip(planned, listings):
            try:
                tags = listing.result()
            except Exception as exc:  # one entry's failure is never the cycle's
                reason = f"cannot list tags: {describe_failure(exc)}"
                log.error("%s: %s", entry.label, reason, exc_info=traceback_for(exc))
                out.entry_failures.append((entry, reason))
                continue
            if not tags:
                log.warning("%s: no tag matches the selection", entry.label)
            for tag in tags:
                for i, platform in enumerate(entry.platforms):
                    outcome = ImageOutcome(entry, tag, platform, tag_relpath(entry.dest, tag, platform, i == 0))
                    out.outcomes.append(outcome)
                    resolutions.append(pool.submit(resolver.resolve, outcome))
        for done in resolutions:
            done.result()
    out.fetched = reader.fetched()
    out.removals = _removals(watchlist, planned if entries else None, out, rows, published)
    out.takeover = plan_takeover(watchlist, planned, not entries, out.outcomes, out.unlisted_dests,
                                 published.foreign_links(), reader)
    out.gc_candidates = state.gc_candidates(now - watchlist.publish.gc_grace, out.unlisted_dests,
                                            watchlist.publish.gc_max_per_cycle)
    # An earlier tool's image directories are collected by path (ours by digest).
    out.takeover.old_images_to_remove = [c for c in out.gc_candidates if not is_valid_digest(c)]
    return out


def _removals(watchlist: Watchlist, entries: Optional[List[ImageEntry]], out: Plan,
              rows: List[TagState], published: PublishedTags) -> List[TagState]:
    """Published tags that are no longer watched: of the planned entries (by
    dest, so entries sharing a source never remove each other's tags) and of
    dests no entry has any more. A tag of an entry whose listing failed is
    never removed: a partial listing proves nothing.

    The published tree is the source of truth: a tag link of a planned entry's
    dest that the state database does not know (it was lost, or rebuilt) is
    found in the tree. Dests no entry has are taken from the database only,
    so a link someone else put beside ours is never touched."""
    watched = {o.tag_path for o in out.outcomes}
    unsure = out.unlisted_dests
    all_dests = {e.dest for e in watchlist.images}
    planned = all_dests if entries is None else {e.dest for e in entries}
    removals = [row for row in rows
                if (row.dest in planned or row.dest not in all_dests) and row.tag_path not in watched
                and row.dest not in unsure]
    known = {row.tag_path for row in rows}
    for tag_path in sorted(published.tag_links()):
        dest, _, tag = tag_path.rpartition(":")
        if not dest or tag_path in watched or tag_path in known or dest not in planned or dest in unsure:
            continue
        tag, _, platform = tag.partition("@")
        removals.append(TagState(source="", tag=tag, platform=platform.replace("-", "/"), dest=dest,
                                 tag_path=tag_path, seen_digest=None, manifest_digest=None, published_digest=None,
                                 last_success=None, last_failure=None, failure_reason=None, failures=0,
                                 next_due=None))
    return removals
