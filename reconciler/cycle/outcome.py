"""The records the stages of a cycle pass along, and how a failure is told.

An `ImageOutcome` is one watched (entry, tag, platform): the plan creates it
and sets its resolved image and first status. The fetch and build stages only
return what happened to it (`results.py`), and `results.cycle_report` moves its
status on (`Status`: `planned` -> `published` or `failed`, through its methods
only). A `CycleReport` collects them with the cycle's removals, collections and
entry failures.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Dict, FrozenSet, List, Optional, Protocol, Tuple

from ..errors import ReconcilerError
from ..fetch import ResolvedImage
from ..registry.client import RegistryClient
from ..registry.manifest import Descriptor, Platform
from ..safetext import inert
from ..state import TagKey, TagState
from ..watchlist import ImageEntry

if TYPE_CHECKING:
    from .takeover import TakeoverPlan

log = logging.getLogger(__name__)


class Registries(Protocol):
    """Where the stages get registry clients (cached by whoever implements it)."""

    def client(self, host: str) -> RegistryClient:
        """The client of a registry host, with its credentials."""

    def mirror(self, host: str) -> Optional[RegistryClient]:
        """The client of the host's blob mirror, or None."""


class Status(str, Enum):
    """Where an outcome stands. The plan leaves it `planned` (to build and
    publish), `unchanged` or `failed`; the fetch and build stages move a
    planned one on to `published` or `failed` (in their results, applied by
    `results.cycle_report`). Nothing else:
    `ImageOutcome` refuses any other move (a bug, not an operator's error)."""

    PLANNED = "planned"
    UNCHANGED = "unchanged"
    PUBLISHED = "published"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)  # `f"{status:9}"` pads the word on every Python


_MOVES: Dict[Status, FrozenSet[Status]] = {
    Status.PLANNED: frozenset({Status.UNCHANGED, Status.PUBLISHED, Status.FAILED}),
    Status.PUBLISHED: frozenset(),  # a transaction that failed as a whole is settled in the build result first
    # An unchanged tag whose manifests the blob store could not keep fails, as any other.
    Status.UNCHANGED: frozenset({Status.FAILED}),
    Status.FAILED: frozenset(),
}


@dataclass
class ImageOutcome:
    """What happened to one (entry, tag, platform) this cycle."""

    entry: ImageEntry
    tag: str
    platform: Platform
    tag_path: str
    status: Status = Status.PLANNED  # moved on only by the methods below
    resolved: Optional[ResolvedImage] = None  # read for a change; not for a tag known unchanged
    # (tag digest, image digest) of a tag found unchanged from its HEAD alone.
    unchanged_at: Optional[Tuple[str, str]] = None
    reason: str = ""
    downloaded: int = 0
    refusal: str = ""  # when a policy of the target refused it: which ("private", "visibility-unknown", "signature")
    # Who signed it (the key's SHA-256 SPKI fingerprint) and where the
    # signature was found, once the signature gate accepted it.
    signed_by: Optional[str] = None
    signed_where: Optional[str] = None

    @property
    def name(self) -> str:
        suffix = "" if self.tag_path.endswith(f":{self.tag}") else f" [{self.platform}]"
        return f"{self.entry.source.name}:{self.tag}{suffix}"

    @property
    def digests(self) -> Optional[Tuple[str, str]]:
        """What the tag points at (an index or a manifest) and the platform's image manifest."""
        if self.resolved is not None:
            return self.resolved.tag_digest, self.resolved.manifest_digest
        return self.unchanged_at

    @property
    def digest(self) -> Optional[str]:
        """The image manifest's digest, once known."""
        return self.digests[1] if self.digests else None

    @property
    def key(self) -> TagKey:
        """Its row in the state database."""
        return TagKey(self.entry.dest, self.tag, str(self.platform), self.entry.source.name, self.tag_path)

    @property
    def blobs(self) -> List[Descriptor]:
        """The config and layers it needs in the blob store."""
        return [self.resolved.manifest.config, *self.resolved.layers] if self.resolved else []

    def _move(self, to: Status) -> None:
        if to not in _MOVES[self.status]:
            raise AssertionError(f"{self.name}: an outcome {self.status} cannot become {to}")
        self.status = to

    def unchanged(self) -> None:
        """The tag already links to its image: nothing to do."""
        self._move(Status.UNCHANGED)

    def published(self) -> None:
        """Its image is built and its tag set (visible once the transaction publishes)."""
        self._move(Status.PUBLISHED)

    def fail(self, exc: BaseException, where: Optional[Path] = None) -> None:
        """Mark it failed with a one-line reason, and log that."""
        self._move(Status.FAILED)
        self.reason = report_failure(self.name, exc, where)

    def refuse(self, policy: str, exc: BaseException) -> None:
        """Mark it failed because a policy of its target refuses it (`policy` names which)."""
        self.fail(exc)
        self.refusal = policy

    def failed(self, reason: str) -> None:
        """Mark it failed with a reason already logged (by the stage it failed in)."""
        self._move(Status.FAILED)
        self.reason = reason


@dataclass
class CycleReport:
    """The outcome of one cycle."""

    outcomes: List[ImageOutcome] = field(default_factory=list)
    entry_failures: List[Tuple[ImageEntry, str]] = field(default_factory=list)
    removed: List[TagState] = field(default_factory=list)
    entries: List[ImageEntry] = field(default_factory=list)  # the entries the cycle planned
    collected: List[str] = field(default_factory=list)
    transactions: int = 0
    takeovers: List["TakeoverPlan"] = field(default_factory=list)  # an earlier tool's tag links, per target
    target: str = ""  # the publish target it covers ("[publish.NAME] (where)") when there are several
    parts: List["CycleReport"] = field(default_factory=list)  # the targets' own reports, merged into this one

    @property
    def failed(self) -> bool:
        return bool(self.entry_failures) or any(o.status is Status.FAILED for o in self.outcomes)

    def merge(self, other: "CycleReport") -> None:
        """Add another target's report of the same cycle to this one."""
        self.outcomes.extend(other.outcomes)
        self.entry_failures.extend(other.entry_failures)
        self.removed.extend(other.removed)
        self.entries.extend(other.entries)
        self.collected.extend(other.collected)
        self.transactions += other.transactions
        self.takeovers.extend(other.takeovers)
        self.parts.append(other)

    def summary(self) -> str:
        """A human-readable summary, one line per change or failure. Each line is
        made inert: reasons carry registry-supplied text."""
        counts: Dict[Status, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        lines = [", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing watched"]
        if any(part.target for part in self.parts):
            # Several targets: each one's lines under its name, so an admin sees where each change went.
            for part in self.parts:
                details = part._details()
                if details:
                    lines += [f"  {part.target}:"] + ["  " + line for line in details]
        else:
            lines += self._details()
        return "\n".join(inert(line) for line in lines)

    def _details(self) -> List[str]:
        """One line per change or failure of this report's own outcomes."""
        lines: List[str] = []
        for o in self.outcomes:
            if o.status in (Status.PUBLISHED, Status.PLANNED):
                lines.append(f"  {o.status:9} {o.name} -> {o.tag_path} ({(o.digest or '')[:19]})")
        for row in self.removed:
            lines.append(f"  removed   {row.tag_path}")
        for digest in self.collected:
            lines.append(f"  collected {digest[:19]} (unreferenced past the grace period)")
        for entry, reason in self.entry_failures:
            lines.append(f"  FAILED    {entry.label}: {reason}")
        for takeover in self.takeovers:
            if takeover.found:
                lines += takeover.lines()
        for o in self.outcomes:
            if o.status is Status.FAILED:
                lines.append(f"  FAILED    {o.name}: {o.reason}")
        return lines


def traceback_for(exc: BaseException) -> bool:
    """Log a traceback only for what no operator caused: an unexpected exception
    type (a bug), never a ReconcilerError or an OSError (they say what to do)."""
    return not isinstance(exc, (ReconcilerError, OSError)) and log.isEnabledFor(logging.DEBUG)


def report_failure(name: str, exc: BaseException, where: Optional[Path] = None) -> str:
    """Log the failure of the outcome called `name` and return its one-line reason."""
    reason = describe_failure(exc, where)
    log.error("%s: %s", name, reason, exc_info=traceback_for(exc))
    return reason


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
