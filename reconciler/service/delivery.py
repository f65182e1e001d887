"""The service's side of delivery times (reconciler/delivery.py): webhook
push times in, cycles recorded, the stratum 1s asked which revision they
serve, and what `/status`, the status page and `/metrics` show of it.

The stratum 0's revision is read after each cycle that published, from its
own `.cvmfspublished` (the URL in the repository's server.conf on this
publisher); the stratum 1s of `[publish] replicas` are asked right after
such a cycle and then every REPLICA_POLL_S while a delivery waits for one of
them (a scheduler job), so an idle service sends nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import httpx
from prometheus_client import CollectorRegistry, Histogram

from ..cycle.outcome import CycleReport, Status
from ..delivery import Caught, Delivery, DeliveryLog, DeliveryStore, MemoryOnly
from ..errors import PublishError
from ..publish.replicas import ServedRevision, read_served, stratum0_url
from ..watchlist import CvmfsTarget, ImageEntry, Watchlist
from ..webhooks import RepositoryHint, matching_entries
from .status import iso_utc

log = logging.getLogger("reconciler.service")

REPLICA_POLL_S = 15.0  # how often the stratum 1s are asked while a delivery waits for them
_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


class DeliveryMetrics:
    """The histograms of delivery times, on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.push_to_publish = Histogram(
            "reconciler_push_to_publish_seconds", "From the registry's push (webhook) to the published revision",
            buckets=_BUCKETS, registry=registry)
        self.seen_to_publish = Histogram(
            "reconciler_seen_to_publish_seconds", "From the cycle that saw a new digest to its published revision",
            buckets=_BUCKETS, registry=registry)
        self.publish_to_replica = Histogram(
            "reconciler_publish_to_replica_seconds", "From the published revision to a stratum 1 serving it",
            ["replica"], buckets=_BUCKETS, registry=registry)
        self.push_to_replica = Histogram(
            "reconciler_push_to_replica_seconds", "From the registry's push (webhook) to a stratum 1 serving it",
            ["replica"], buckets=_BUCKETS, registry=registry)

    def delivered(self, delivery: Delivery) -> None:
        """A tag published with a new image."""
        self.seen_to_publish.observe(max(0.0, delivery.published - delivery.seen))
        if delivery.pushed is not None:
            self.push_to_publish.observe(max(0.0, delivery.published - delivery.pushed))

    def caught(self, caught: Caught) -> None:
        """A stratum 1 serving a delivery's revision."""
        self.publish_to_replica.labels(caught.url).observe(max(0.0, caught.at - caught.delivery.published))
        if caught.delivery.pushed is not None:
            self.push_to_replica.labels(caught.url).observe(max(0.0, caught.at - caught.delivery.pushed))


@dataclass
class _Target:
    """One publish target's deliveries: its stratum 0 (cvmfs) and stratum 1s."""

    name: str
    log: DeliveryLog
    stratum0: Optional[str]
    lag_max: float


class DeliveryTracker:
    """Delivery times of one service, per publish target (see the module doc)."""

    def __init__(self, watchlist: Watchlist, registry: CollectorRegistry, *,
                 http: Optional[httpx.Client] = None, clock: Callable[[], float] = time.time,
                 stratum0: Optional[str] = None, stores: Optional[Mapping[str, DeliveryStore]] = None) -> None:
        """`stratum0`: the URL cvmfs targets read published revisions from
        (default: each repository's CVMFS_STRATUM0 on this publisher); local
        targets have none. `stores`: per target name, where its times are kept
        across restarts (its state database); without one, in memory only."""
        stores = stores or {}
        self.targets: Dict[str, _Target] = {}
        for config in watchlist.publish_targets:
            url: Optional[str] = None
            if isinstance(config.target, CvmfsTarget):
                url = stratum0 or stratum0_url(config.target.repository)
            self.targets[config.name] = _Target(config.name, DeliveryLog(config.replicas, store=stores.get(
                config.name, MemoryOnly())), url, config.replica_lag_max)
        self.metrics = DeliveryMetrics(registry)
        self.clock = clock
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=httpx.Timeout(10.0), follow_redirects=True)
        self._last_poll = 0.0
        self._poll_lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP connections this tracker opened."""
        if self._owns_http:
            self._http.close()

    # -- in: webhooks and cycles -------------------------------------------

    def hook(self, hints: Iterable[RepositoryHint], entries: Sequence[ImageEntry], received: float) -> None:
        """Push times of a webhook's hints (where the provider sends one) for
        the `entries` (the watchlist's now) they match."""
        by_index = {e.index: e for e in entries}
        names = [(e.index, e.source.registry, e.source.repository) for e in entries]
        for hint in hints:
            if hint.pushed_at is None:
                continue
            for index in matching_entries([hint], names):
                target = self.targets.get(by_index[index].publish)
                if target is not None:
                    target.log.pushed(by_index[index].dest, hint.tag, min(hint.pushed_at, received), received)

    def cycle_done(self, report: CycleReport, started: float, ended: float) -> List[Delivery]:
        """Record the tags a cycle published; the revision carrying them is read from each target's stratum 0."""
        out: List[Delivery] = []
        for target in self.targets.values():
            published = [o for o in report.outcomes
                         if o.status is Status.PUBLISHED and o.digest and o.entry.publish == target.name]
            if not published:
                continue
            revision = self._stratum0_revision(target)
            # A push is told to the tags this cycle published of its entry (a hook naming no tag: all of them).
            pushes = target.log.take_pushes([(o.entry.dest, o.tag) for o in published], started)
            for o in published:
                assert o.digest is not None
                pushed = pushes.get((o.entry.dest, o.tag), pushes.get((o.entry.dest, None)))
                delivery = target.log.published(o.tag_path, o.name, o.digest, pushed=pushed, seen=started,
                                                published=ended, revision=revision)
                self.metrics.delivered(delivery)
                out.append(delivery)
        if out:
            self.poll_replicas(force=True)
        return out

    def _stratum0_revision(self, target: _Target) -> Optional[int]:
        if target.stratum0 is None:
            return None
        try:
            return read_served(self._http, target.stratum0).revision
        except PublishError as exc:
            log.warning("cannot read the revision just published from the stratum 0: %s; its delivery to the "
                        "stratum 1s is not followed", exc)
            return None

    # -- the stratum 1s ------------------------------------------------------

    def poll_replicas(self, *, force: bool = False) -> List[Caught]:
        """Ask every stratum 1 which revision it serves, when a delivery waits
        for one (and, unless `force`, at most every REPLICA_POLL_S)."""
        waiting = [t for t in self.targets.values() if t.log.replica_urls and t.log.waiting()]
        if not waiting:
            return []
        with self._poll_lock:
            now = self.clock()
            if not force and now - self._last_poll < REPLICA_POLL_S:
                return []
            self._last_poll = now
            caught: List[Caught] = []
            for target in waiting:
                for url in target.log.replica_urls:
                    served: Optional[ServedRevision] = None
                    error: Optional[str] = None
                    try:
                        served = read_served(self._http, url)
                    except PublishError as exc:
                        error = str(exc)
                    caught += target.log.served(url, served.revision if served else None, self.clock(), error)
            for c in caught:
                self.metrics.caught(c)
                log.info("%s: served by the stratum 1 %s %.0fs after its publish", c.delivery.image, c.url,
                         c.at - c.delivery.published)
            return caught

    # -- out: /status ----------------------------------------------------------

    def status(self) -> Dict[str, object]:
        """The `delivery` part of /status: the stratum 1s and each recent
        delivery's times, of every target (named in each, "" for the one [publish])."""
        now = self.clock()
        replicas: List[Dict[str, object]] = []
        images: List[Dict[str, object]] = []
        for target in self.targets.values():
            deliveries = target.log.deliveries()
            for view in target.log.replicas():
                behind = [d.published for d in deliveries
                          if d.revision is not None and d.replica_time(view.url) is None]
                oldest = min(behind) if behind else None
                replicas.append({"target": target.name, "url": view.url, "revision": view.revision,
                                 "checked": iso_utc(view.checked), "error": view.error,
                                 "behind_since": iso_utc(oldest),
                                 "lagging": oldest is not None and now - oldest > target.lag_max})
            images += [self._delivery_status(target, d, now) for d in reversed(deliveries)]
        images.sort(key=lambda d: str(d["published"]), reverse=True)
        return {"stratum0": {t.name: t.stratum0 for t in self.targets.values() if t.stratum0},
                "replicas": replicas, "images": images}

    def _delivery_status(self, target: _Target, d: Delivery, now: float) -> Dict[str, object]:
        def since(start: Optional[float], end: Optional[float]) -> Optional[float]:
            return round(end - start, 3) if start is not None and end is not None else None

        replicas: List[Dict[str, object]] = []
        for url, served in d.replicas:
            waited = (served if served is not None else now) - d.published
            replicas.append({"url": url, "served": iso_utc(served), "after_publish_seconds": since(d.published, served),
                             "after_push_seconds": since(d.pushed, served),
                             "lagging": served is None and waited > target.lag_max})
        return {"target": target.name, "path": d.tag_path, "image": d.image, "digest": d.digest,
                "revision": d.revision, "pushed": iso_utc(d.pushed), "seen": iso_utc(d.seen),
                "published": iso_utc(d.published), "push_to_publish_seconds": since(d.pushed, d.published),
                "seen_to_publish_seconds": since(d.seen, d.published), "replicas": replicas}
