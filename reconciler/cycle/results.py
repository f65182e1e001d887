"""What the fetch and build stages return, and the cycle's report made from
the plan and those results.

The stages do not touch the plan's outcomes: each returns what happened to
them (keyed by the outcome's state-database key), and `cycle_report` applies
it in one place, through the outcomes' own status moves. A failure is logged
by its stage when it happens (`report_failure`); applying it logs nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ..state import TagKey, TagState
from .outcome import CycleReport, ImageOutcome
from .plan import Plan


@dataclass
class FetchResult:
    """What the fetch stage did to the plan's outcomes."""

    downloaded: Dict[TagKey, int] = field(default_factory=dict)  # layer bytes downloaded, per outcome
    failures: Dict[TagKey, str] = field(default_factory=dict)  # the reason, per outcome that failed

    def remaining(self, changes: List[ImageOutcome]) -> List[ImageOutcome]:
        """Those of `changes` that did not fail here: still to build and publish."""
        return [o for o in changes if o.key not in self.failures]


@dataclass
class BuildResult:
    """What the build stage did: its outcomes published or failed, the removals
    that stood, the images collected and the transactions opened."""

    published: List[TagKey] = field(default_factory=list)
    failures: Dict[TagKey, str] = field(default_factory=dict)  # the reason, per outcome that failed
    removed: List[TagState] = field(default_factory=list)
    collected: List[str] = field(default_factory=list)
    transactions: int = 0


def cycle_report(plan: Plan, fetched: FetchResult, built: BuildResult) -> CycleReport:
    """The report of a cycle: the plan's outcomes moved on by what the fetch and
    build stages returned, with the build's removals, collections and transactions."""
    published = set(built.published)
    for outcome in plan.outcomes:
        key = outcome.key
        outcome.downloaded = fetched.downloaded.get(key, outcome.downloaded)
        if key in fetched.failures:
            outcome.failed(fetched.failures[key])
        elif key in built.failures:
            outcome.failed(built.failures[key])
        elif key in published:
            outcome.published()
    report = plan.report()
    report.removed = list(built.removed)
    report.collected = list(built.collected)
    report.transactions = built.transactions
    return report
