"""Taking over a repository an earlier tool published (cvmfs-singularity-sync,
DUCC): what a cycle does to that tool's tag links, decided with the plan.

- A watched tag path holding the old tool's link is replaced by ours only in
  the transaction that publishes our complete image for it (the build stage's
  `set_tag`, after the build): while our image fails, the old link stays.
- An old link no entry watches is kept or removed as `[publish] foreign_tags`
  says; never one of an entry whose tags could not be listed (a partial
  listing proves nothing), nor one at a dest another entry owns.
- The old image directories go by the GC (`record` marks them, `build` checks
  the links again): once no link refers to them, after `gc_grace`, at most
  `gc_max_per_cycle` a cycle with ours.

`--dry-run` prints this plan with what the cycle would cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Protocol, Sequence, Set

from ..watchlist import ImageEntry, Watchlist
from .outcome import ImageOutcome, Status

log = logging.getLogger(__name__)


class BlobPresence(Protocol):
    """What the cost estimate reads of the blob store."""

    def has(self, digest: str) -> bool:
        """True when the blob is in the store."""


@dataclass
class TakeoverPlan:
    """What a cycle does to an earlier tool's tag links, and what the cycle costs."""

    replaced: List[str] = field(default_factory=list)  # watched: ours replaces the old link
    kept: List[str] = field(default_factory=list)  # not watched, left as they are
    waiting: List[str] = field(default_factory=list)  # watched, but ours failed this cycle: the old link stays
    collected: List[str] = field(default_factory=list)  # not watched, removed (foreign_tags = "collect")
    policy: str = "keep"
    target: str = ""  # the name of its [publish.<name>] target ("" for the one [publish])
    old_images_to_remove: List[str] = field(default_factory=list)  # unreferenced past gc_grace, this cycle
    images_to_build: int = 0
    bytes_to_download: int = 0

    @property
    def found(self) -> bool:
        """True when the tree holds anything of an earlier tool's this cycle acts on or keeps."""
        return bool(self.replaced or self.kept or self.waiting or self.collected or self.old_images_to_remove)

    def lines(self) -> List[str]:
        """The plan for an admin, one line per tag."""
        where = f" of [publish.{self.target}]" if self.target else ""
        waiting = f", {len(self.waiting)} waiting for ours" if self.waiting else ""
        out = [f"takeover{where}: {len(self.replaced)} tags of an earlier tool replaced{waiting}, "
               f"{len(self.kept)} kept, {len(self.collected)} collected ([publish] foreign_tags = \"{self.policy}\"), "
               f"{len(self.old_images_to_remove)} of its image directories removed; "
               f"{self.images_to_build} images to build, {self.bytes_to_download} bytes to download"]
        out += [f"  replace   {path}" for path in self.replaced]
        out += [f"  wait      {path} (ours failed this cycle; the old link stays)" for path in self.waiting]
        out += [f"  keep      {path}" for path in self.kept]
        out += [f"  collect   {path}" for path in self.collected]
        out += [f"  remove    {path} (no link has referred to it for gc_grace)" for path in self.old_images_to_remove]
        return out


def plan_takeover(watchlist: Watchlist, planned: Sequence[ImageEntry], all_planned: bool,
                  outcomes: Sequence[ImageOutcome], unsure: Set[str], foreign_links: Dict[str, str],
                  store: BlobPresence) -> TakeoverPlan:
    """Sort the earlier tool's links (`foreign_links`: tag path -> its image
    directory) into replaced, waiting (watched, ours failed), kept and collected,
    and count the cycle's cost.
    `planned`: the entries of this cycle (`all_planned`: every entry of the
    watchlist); `unsure`: the dests whose tags could not be listed."""
    out = TakeoverPlan(policy=watchlist.publish.foreign_tags, target=watchlist.publish.name)
    by_path = {o.tag_path: o for o in outcomes}
    all_dests = {e.dest for e in watchlist.images}
    planned_dests = all_dests if all_planned else {e.dest for e in planned}
    for tag_path in sorted(foreign_links):
        outcome = by_path.get(tag_path)
        if outcome is not None:
            (out.replaced if outcome.status is Status.PLANNED else out.waiting).append(tag_path)
            continue
        dest = tag_path.rpartition(":")[0]
        ours_to_judge = (dest in planned_dests or dest not in all_dests) and dest not in unsure
        if out.policy == "collect" and dest and ours_to_judge:
            out.collected.append(tag_path)
        else:
            out.kept.append(tag_path)
    images: Set[str] = set()
    layers: Dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status is Status.PLANNED and outcome.resolved is not None:
            images.add(outcome.resolved.manifest_digest)
            for layer in outcome.resolved.layers:
                if not store.has(layer.digest):
                    layers[layer.digest] = layer.size
    out.images_to_build = len(images)
    out.bytes_to_download = sum(layers.values())
    if out.kept:  # said each cycle: keeping them is a setting (or a failed listing), not an oversight
        log.info("%d tag links of an earlier tool are kept though no entry watches them ([publish] foreign_tags = "
                 "\"%s\"), e.g. %s", len(out.kept), out.policy, out.kept[0])
    return out
