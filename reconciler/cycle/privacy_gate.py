"""The privacy gate: between the plan and the downloads, no image that needs
credentials goes to a target anyone can read.

A CernVM-FS repository is world-readable by design and replicated to every
stratum 1, where nothing can be recalled: the check comes before a single
layer is downloaded. Each planned change's source repository is probed
anonymously at its exact digest (`registry/visibility.py`); the answer is
kept per repository in the state database and asked again once older than
its entry's interval. For a public target a change is refused when the
repository needs credentials (unless its entry sets `private_ok`, logged as a
warning at each publish) or when the probe could not tell: unknown is never
public. A refusal fails that change alone; the next poll checks again.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import PrivateImageError, StartError, VisibilityUnknownError
from ..publish.base import ReadAccess
from ..registry.client import RegistryClient
from ..registry.visibility import Visibility, probe_anonymously
from ..state import RepositoryVisibility, StateDB
from ..watchlist import CvmfsTarget, PublishConfig
from .outcome import ImageOutcome, Status

log = logging.getLogger(__name__)

PROBE_WORKERS = 8


@dataclass(frozen=True)
class TargetAudience:
    """Who can read a publish target: `public` (anyone, every stratum 1) or
    not; `label` names it in messages."""

    public: bool
    label: str


def target_audience(config: PublishConfig, access: ReadAccess, name: str) -> TargetAudience:
    """Who can read a target: as `[publish] visibility` says, checked against
    what the target itself says (`access`); without the key, a CernVM-FS
    repository is public unless it restricts its readers, a local directory
    restricted. StartError when the file calls restricted a target that says
    it is not. `name` is the publisher's own name for the target."""
    label = f"{config.label} ({name})"
    if config.visibility == "restricted" and access.restricted is False:
        raise StartError(f"{label} sets visibility = \"restricted\", but {access.detail}: anyone who mounts it can "
                         "read it. Give the repository a membership requirement, or remove the key (it is public)")
    if config.visibility is not None:
        return TargetAudience(config.visibility == "public", label)
    if isinstance(config.target, CvmfsTarget):
        return TargetAudience(access.restricted is not True, label)
    return TargetAudience(False, label)


class PrivacyGate:
    """For a public target: probes, then refuses. `anonymous(host)` gives a
    new client without credentials (closed after its probe); `record` is
    False for a read-only run (`--dry-run`), which probes but keeps nothing."""

    def __init__(self, audience: TargetAudience, anonymous: Callable[[str], RegistryClient], state: StateDB, *,
                 now: float, record: bool = True) -> None:
        self.audience = audience
        self.anonymous = anonymous
        self.state = state
        self.now = now
        self.record = record

    def check(self, changes: Sequence[ImageOutcome]) -> None:
        """Move each refused change of `changes` to failed, with its reason.
        A restricted target takes every image: nothing is probed."""
        if not self.audience.public:
            return
        planned = [o for o in changes if o.status is Status.PLANNED and o.digests]
        verdicts = self._verdicts(planned)
        for outcome in planned:
            seen = verdicts[outcome.entry.source.name]
            if seen.public:
                continue
            if seen.public is None:
                outcome.refuse("visibility-unknown", VisibilityUnknownError(
                    f"{seen.reason}; {self.audience.label} is public and takes only images known to be public: "
                    "checked again at the next poll"))
            elif outcome.entry.private_ok:
                log.warning("%s: published to %s although it needs credentials at its registry (%s): its entry "
                            "sets private_ok = true", outcome.name, self.audience.label, seen.reason)
            else:
                outcome.refuse("private", PrivateImageError(
                    f"{seen.reason}; not published to {self.audience.label}, which anyone can read (and every "
                    "stratum 1 replicates, beyond recall). Publish it to a restricted target instead "
                    "([publish.<name>] with visibility = \"restricted\", chosen by `publish` in its entry), make it "
                    "public at the registry, or, if its license allows everyone to read it, set private_ok = true "
                    "in its entry"))

    def _verdicts(self, planned: List[ImageOutcome]) -> Dict[str, RepositoryVisibility]:
        """Per source repository of `planned`: the kept answer while it is fresh, else a new probe."""
        kept = self.state.visibilities()
        verdicts: Dict[str, RepositoryVisibility] = {}
        to_probe: Dict[str, ImageOutcome] = {}
        for outcome in planned:
            name = outcome.entry.source.name
            old: Optional[RepositoryVisibility] = kept.get(name)
            if old is not None and old.public is not None and self.now - old.checked_at < outcome.entry.interval:
                verdicts[name] = old
            else:
                to_probe.setdefault(name, outcome)
        with ThreadPoolExecutor(max_workers=PROBE_WORKERS) as pool:
            answers = dict(zip(to_probe, pool.map(self._probe, to_probe.values())))
        for name, answer in answers.items():
            seen = RepositoryVisibility(name, answer.public, answer.reason, self.now)
            verdicts[name] = seen
            if self.record:
                self.state.record_visibility(seen)
            if answer.public is False:
                log.info("%s: %s", name, answer.reason)
        return verdicts

    def _probe(self, outcome: ImageOutcome) -> Visibility:
        source = outcome.entry.source
        digests = outcome.digests
        assert digests is not None  # only changes with a resolved image are probed
        try:
            with self.anonymous(source.registry) as client:
                return probe_anonymously(client, source.repository, digests[0])
        except Exception as exc:  # a probe that breaks is "cannot tell", never "public"
            log.error("%s: the anonymous probe failed: %s", source.name, exc)
            return Visibility(None, f"could not tell whether {source.name} is public: {type(exc).__name__}: {exc}")
