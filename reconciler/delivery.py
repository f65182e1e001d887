"""The time from a registry push to the worker nodes, per published image.

A delivery is one tag that moved to a new image: when the registry says it
was pushed (from a webhook, where the provider sends a time), when a cycle
saw its new digest, when the revision carrying it was published, and when
each stratum 1 first served that revision or a later one. Kept in memory, the
latest per tag and a bounded number in all (the figures are for the status
page and the metrics, not a history); thread-safe, as the runner records
and the HTTP thread reads.

With a `store` (the target's state database) every change is also written
there and read back at the start, so a restart between a hook and its
publish, or between a publish and a stratum 1 catching up, loses nothing and
tells nothing twice. A stratum 1 that caught up while the service was down
is seen at the first poll after the start: its time is that poll's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Set, Tuple

log = logging.getLogger("reconciler.service")

KEEP = 500  # deliveries kept (the newest); older ones are only in the metrics
# A push no publish took within a day never will (its tag is not watched, or its
# digest was already published): forgotten, so the kept pushes stay few.
PUSH_KEEP_S = 86400.0

PushKey = Tuple[str, Optional[str]]  # (the entry's dest, the tag; None when the hook names none)


@dataclass(frozen=True)
class Delivery:
    """One tag's new image on its way: every time is unix seconds (None: not known, or not yet)."""

    tag_path: str
    image: str  # registry/repository:tag
    digest: str
    pushed: Optional[float]  # the registry's push time, from a webhook
    seen: float  # the start of the cycle whose plan saw the new digest
    published: float  # the end of that cycle: its revision (CVMFS) or its links (local) in place
    revision: Optional[int]  # the CVMFS revision that carries it (None: local, or not readable)
    replicas: Tuple[Tuple[str, Optional[float]], ...] = ()  # (stratum 1 URL, first seen serving it)

    def replica_time(self, url: str) -> Optional[float]:
        """When `url` was first seen serving this delivery's revision (or a later one)."""
        return dict(self.replicas).get(url)


@dataclass
class ReplicaView:
    """What one stratum 1 served when last asked."""

    url: str
    revision: Optional[int] = None
    checked: Optional[float] = None
    error: Optional[str] = None


@dataclass
class Caught:
    """A delivery a stratum 1 caught up with: the figures the metrics observe."""

    delivery: Delivery
    url: str
    at: float


class DeliveryStore(Protocol):
    """Where a DeliveryLog keeps its figures across restarts (reconciler/state.py's StateDB)."""

    def deliveries(self) -> List[Delivery]: ...
    def record_delivery(self, delivery: Delivery) -> None: ...
    def forget_delivery(self, tag_path: str) -> None: ...
    def pushes(self) -> Dict[PushKey, Tuple[float, float]]: ...
    def record_push(self, key: PushKey, pushed: float, received: float) -> None: ...
    def forget_push(self, key: PushKey) -> None: ...


class MemoryOnly:
    """The store of a log kept in memory only: keeps nothing."""

    def deliveries(self) -> List[Delivery]:
        return []

    def record_delivery(self, delivery: Delivery) -> None:
        pass

    def forget_delivery(self, tag_path: str) -> None:
        pass

    def pushes(self) -> Dict[PushKey, Tuple[float, float]]:
        return {}

    def record_push(self, key: PushKey, pushed: float, received: float) -> None:
        pass

    def forget_push(self, key: PushKey) -> None:
        pass


@dataclass
class DeliveryLog:
    """The recent deliveries and the replicas' last answers (see the module doc)."""

    replica_urls: Sequence[str]
    keep: int = KEEP
    store: DeliveryStore = field(default_factory=MemoryOnly)
    _deliveries: "OrderedDict[str, Delivery]" = field(default_factory=OrderedDict)
    # (dest, tag or None) -> (the registry's push time, when the hook came)
    _pushes: Dict[PushKey, Tuple[float, float]] = field(default_factory=dict)
    _replicas: Dict[str, ReplicaView] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Serializes the writes to the store in the order of the changes; taken
    # before _lock and held while writing, so readers never wait for the database.
    _writing: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._replicas = {url: ReplicaView(url) for url in self.replica_urls}
        for delivery in self.store.deliveries()[-self.keep:]:
            # A stratum 1 no longer configured is not waited for (nor one added since: it
            # would "catch up" at its first answer, a time that means nothing).
            self._deliveries[delivery.tag_path] = replace(
                delivery, replicas=tuple((u, t) for u, t in delivery.replicas if u in self._replicas))
        self._pushes = self.store.pushes()

    @contextlib.contextmanager
    def _change(self) -> Iterator[List[Tuple[Callable[..., None], Tuple[object, ...]]]]:
        """Change the log under its lock, then make the writes the change
        listed to the store, outside that lock. A failing store costs only the
        restart's memory of the change."""
        writes: List[Tuple[Callable[..., None], Tuple[object, ...]]] = []
        with self._writing:
            with self._lock:
                yield writes
            for write, args in writes:
                try:
                    write(*args)
                except Exception as exc:  # sqlite3.Error, or a value SQLite refuses (a lone surrogate, 2**63)
                    log.warning("cannot keep delivery times in the state database (%s: %s); they are kept in "
                                "memory, and lost at a restart", type(exc).__name__, exc)

    def pushed(self, dest: str, tag: Optional[str], at: float, received: float) -> None:
        """A webhook, received at `received`, said the repository of the entry
        publishing to `dest` got a push at `at` (of `tag`, None when the hook
        does not say which)."""
        with self._change() as writes:
            for old in [k for k, (_, when) in self._pushes.items() if when < received - PUSH_KEEP_S]:
                del self._pushes[old]
                writes.append((self.store.forget_push, (old,)))
            key = (dest, tag)
            earlier = self._pushes.get(key)
            if earlier is None or at < earlier[0]:  # the first push not yet delivered
                self._pushes[key] = (at, received)
                writes.append((self.store.record_push, (key, at, received)))

    def take_pushes(self, published: Sequence[Tuple[str, str]], seen: float) -> Dict[PushKey, float]:
        """The push times of the (dest, tag) pairs a cycle that started at
        `seen` published, and of hooks naming no tag for those dests, received
        before it; forgotten here: each push is told once. A push of another
        tag of the same dest waits for that tag's publish."""
        wanted: Set[PushKey] = {(dest, tag) for dest, tag in published} | {(dest, None) for dest, _ in published}
        with self._change() as writes:
            taken = {key: at for key, (at, received) in self._pushes.items()
                     if key in wanted and received <= seen}
            for key in taken:
                del self._pushes[key]
                writes.append((self.store.forget_push, (key,)))
            return taken

    def published(self, tag_path: str, image: str, digest: str, *, pushed: Optional[float], seen: float,
                  published: float, revision: Optional[int]) -> Delivery:
        """Record a tag published with a new image; returns its delivery."""
        with self._change() as writes:
            replicas = tuple((url, self._served_at(url, revision, published)) for url in self.replica_urls)
            delivery = Delivery(tag_path, image, digest, pushed, seen, published, revision,
                                replicas if revision is not None else ())
            self._deliveries.pop(tag_path, None)
            self._deliveries[tag_path] = delivery
            writes.append((self.store.record_delivery, (delivery,)))
            while len(self._deliveries) > self.keep:
                gone, _ = self._deliveries.popitem(last=False)
                writes.append((self.store.forget_delivery, (gone,)))
            return delivery

    def _served_at(self, url: str, revision: Optional[int], now: float) -> Optional[float]:
        """`now` when the replica's last answer was already `revision` or later
        (asked while the cycle was still recording), else None."""
        view = self._replicas.get(url)
        if revision is None or view is None or view.revision is None or view.revision < revision:
            return None
        return now

    def served(self, url: str, revision: Optional[int], at: float, error: Optional[str] = None) -> List[Caught]:
        """A stratum 1's answer at `at`: the revision it serves (None and
        `error` when it could not be read). Returns the deliveries it newly caught up with."""
        caught: List[Caught] = []
        with self._change() as writes:
            view = self._replicas.setdefault(url, ReplicaView(url))
            view.checked, view.error = at, error
            if revision is None:
                return caught
            view.revision = revision
            for path, delivery in self._deliveries.items():
                if delivery.revision is None or delivery.revision > revision or delivery.replica_time(url) is not None:
                    continue
                if url not in dict(delivery.replicas):
                    continue
                updated = replace(delivery, replicas=tuple((u, at if u == url else t) for u, t in delivery.replicas))
                self._deliveries[path] = updated
                writes.append((self.store.record_delivery, (updated,)))
                caught.append(Caught(updated, url, at))
        return caught

    def waiting(self) -> bool:
        """True while a delivery waits for a stratum 1 (worth asking them again)."""
        with self._lock:
            return any(t is None for d in self._deliveries.values() for _, t in d.replicas)

    def deliveries(self) -> List[Delivery]:
        """The deliveries kept, newest last."""
        with self._lock:
            return list(self._deliveries.values())

    def replicas(self) -> List[ReplicaView]:
        """The stratum 1s' last answers (copies)."""
        with self._lock:
            return [replace(view) for view in self._replicas.values()]
