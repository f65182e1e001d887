"""The long-running reconciler (`reconcile` without --once).

APScheduler polls each watchlist entry at its interval, with jitter; a valid
webhook moves the matching entries' next poll to now, debounced and
de-duplicated. One runner thread executes the cycles, so a cycle never
overlaps itself: entries that come due while a cycle runs are collected and
handled by the next one. On SIGTERM the current cycle finishes (its
transaction is published or aborted, never left open) and the process exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from ..cycle.outcome import describe_failure
from ..progress import TerminalProgress
from ..reconcile import Reconciler
from ..watchlist import ImageEntry, Watchlist
from .delivery import REPLICA_POLL_S, DeliveryTracker
from .metrics import Metrics
from .status import iso_utc, service_status

log = logging.getLogger("reconciler.service")  # its name before the package split

JITTER = 0.1  # polls spread over ±10 % of the interval


@dataclass(frozen=True)
class CycleInfo:
    """The cycle in progress: since when, and which entries (their labels)."""

    started: float
    entries: Tuple[str, ...]




class Service:
    """Schedules cycles: at each entry's interval, and sooner when nudged."""

    def __init__(self, watchlist: Watchlist, reconciler: Reconciler, *, debounce: float = 2.0) -> None:
        self.reconciler = reconciler
        self.debounce = debounce
        self.metrics = Metrics()
        # Push to stratum 1 per published image: its own module, its own histograms;
        # its times kept in each target's state database, so they survive a restart.
        self.delivery = DeliveryTracker(watchlist, self.metrics.registry,
                                        stores={run.config.name: run.state for run in reconciler.targets})
        self.scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
        self._due: Set[int] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._runner = threading.Thread(target=self._run, name="reconcile-runner", daemon=True)
        self.last_cycle: Optional[float] = None
        self.cycles_done = 0
        # Replaced whole, never mutated, so the HTTP thread reads it without a lock.
        self.cycle: Optional[CycleInfo] = None
        # The status page shows the running cycle's bytes and files: collect them even
        # when no terminal draws them (an unstarted TerminalProgress draws nothing).
        if reconciler.progress is None:
            reconciler.progress = TerminalProgress()
        self.progress: TerminalProgress = reconciler.progress

    @property
    def watchlist(self) -> Watchlist:
        """The watchlist with its [[list]] files' entries as last read (each cycle)."""
        return self.reconciler.current

    # -- scheduling ------------------------------------------------------

    def start(self) -> None:
        """Start polling: every entry is due once at start, but one still backing
        off from failures before a restart (the state says until when) waits
        for its retry time, so restarts never hammer a failing registry."""
        self._add_polls(self.watchlist.images)
        if any(target.replicas for target in self.watchlist.publish_targets):
            self.scheduler.add_job(self._poll_replicas, IntervalTrigger(seconds=REPLICA_POLL_S), id="replicas",
                                   max_instances=1, coalesce=True)
        self.scheduler.start()
        self._runner.start()

    def _poll_replicas(self) -> None:
        try:
            self.delivery.poll_replicas()
        except Exception:  # a scheduler job must never die of one bad answer
            log.exception("cannot ask the stratum 1s which revision they serve; trying again in %.0fs",
                          REPLICA_POLL_S)

    def _add_polls(self, entries: Iterable[ImageEntry]) -> None:
        """A poll job for each entry, due now unless it backs off from failures."""
        now = dt.datetime.now(dt.timezone.utc)
        due = self.reconciler.retry_due()
        for entry in entries:
            first = max(now, _utc(due[entry.dest])) if entry.dest in due else now
            if first > now:
                log.info("%s: still backing off from failures before the restart; first poll at %s", entry.label,
                         iso_utc(first))
            trigger = IntervalTrigger(seconds=entry.interval, jitter=entry.interval * JITTER)
            self.scheduler.add_job(self.request, trigger, args=[[entry.index], "interval"], id=f"poll-{entry.index}",
                                   next_run_time=first, max_instances=1, coalesce=True, replace_existing=True)

    def _refresh(self) -> None:
        """Read the [[list]] files again; entries new since the last read get
        their poll jobs, entries gone lose theirs. List entries are numbered
        after the [[image]] blocks in list order, so an edit may renumber
        them: a job then polls the entry that now has its number."""
        before = {e.index: e for e in self.watchlist.images}
        after = {e.index: e for e in self.reconciler.refresh().images}
        if not self.scheduler.running:
            return
        self._add_polls(e for i, e in after.items() if i not in before or before[i].interval != e.interval)
        for index in set(before) - set(after):
            for kind in ("poll", "retry", "nudge"):
                if self.scheduler.get_job(f"{kind}-{index}") is not None:
                    self.scheduler.remove_job(f"{kind}-{index}")

    def request(self, indexes: Iterable[int], reason: str = "") -> None:
        """Make entries due now."""
        with self._cond:
            self._due.update(indexes)
            self._cond.notify()
        log.debug("due now (%s): %s", reason, sorted(indexes))

    def nudge(self, indexes: Iterable[int]) -> None:
        """A webhook hint: poll these entries after a short debounce. Hints that
        arrive while one is pending join it instead of scheduling another."""
        run_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.debounce)
        for index in indexes:
            job_id = f"nudge-{index}"
            if self.scheduler.get_job(job_id) is None:
                self.scheduler.add_job(self.request, "date", run_date=run_at, args=[[index], "webhook"], id=job_id,
                                       misfire_grace_time=3600)

    def _schedule_retries(self, entries: List[ImageEntry]) -> None:
        """An entry with anything failing is tried again when the state says
        (the record stage's backoff: 1, 2, 4 … minutes, at most its interval),
        not only at its next poll; an entry with nothing failing has no retry."""
        due = self.reconciler.retry_due()
        now = dt.datetime.now(dt.timezone.utc)
        for entry in entries:
            job_id = f"retry-{entry.index}"
            if entry.dest not in due:
                if self.scheduler.running and self.scheduler.get_job(job_id) is not None:
                    self.scheduler.remove_job(job_id)
                continue
            run_at = max(now, _utc(due[entry.dest]))
            log.info("%s: retrying in %.0fs", entry.label, (run_at - now).total_seconds())
            if self.scheduler.running:
                self.scheduler.add_job(self.request, "date", run_date=run_at, args=[[entry.index], "retry"],
                                       id=job_id, replace_existing=True, misfire_grace_time=3600)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop scheduling; the cycle in progress finishes (or aborts) first."""
        self.scheduler.shutdown(wait=False)
        cycle = self.cycle
        if cycle is not None and self._runner.is_alive():
            # Say why the exit waits: a large image can take minutes to apply and publish.
            log.info("waiting for the running cycle (%s, started %s) to finish; nothing is left "
                     "half-published", ", ".join(cycle.entries), iso_utc(cycle.started))
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._runner.is_alive():
            self._runner.join(timeout)
        self.delivery.close()

    @property
    def cycle_running(self) -> bool:
        """True while a cycle runs."""
        return self.cycle is not None

    @property
    def healthy(self) -> bool:
        return self._runner.is_alive() and self.scheduler.running

    # -- the runner ------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                due, self._due = self._due, set()
            if self.watchlist.lists:
                try:
                    self._refresh()
                except Exception:  # the lists keep their last good entries; the runner must go on
                    log.exception("cannot read the [[list]] files again; their last entries are kept")
            entries = [e for e in self.watchlist.images if e.index in due]
            started = time.monotonic()
            started_at = time.time()
            self.progress.reset()
            self.cycle = CycleInfo(time.time(), tuple(e.label for e in entries))
            try:
                report = self.reconciler.run_once(entries=entries)
            except Exception as exc:  # the service must survive any one cycle
                log.exception("reconcile cycle for %s failed", ", ".join(e.label for e in entries))
                for entry in entries:
                    self.metrics.failures.labels(entry.source.name).inc()
                self._record_cycle_failure(entries, f"the cycle failed: {describe_failure(exc)}")
                continue
            finally:
                self.cycle = None
                self.progress.reset()
                self.last_cycle = time.time()
                self.cycles_done += 1
            try:
                self._schedule_retries(entries)
                self.metrics.record(report, time.monotonic() - started, self.reconciler)
                self.delivery.cycle_done(report, started_at, time.time())
            except Exception:  # the runner must outlive a state database that cannot be read once
                log.exception("after the cycle of %s: cannot schedule retries or record metrics; they are polled "
                              "again at their intervals", ", ".join(e.label for e in entries))
            log.info("cycle done in %.1fs: %s", time.monotonic() - started, report.summary().splitlines()[0])

    def _record_cycle_failure(self, entries: List[ImageEntry], reason: str) -> None:
        """Back off every entry of a cycle that failed as a whole; schedule their retries."""
        try:
            self.reconciler.record_cycle_failure(entries, reason)
        except Exception:  # the state cannot be written: retry at the entries' next polls
            log.exception("cannot record the failure of %s in the state database; they are polled again "
                          "at their intervals", ", ".join(e.label for e in entries))
            return
        self._schedule_retries(entries)

    # -- status ----------------------------------------------------------

    def status(self) -> Dict[str, object]:
        """The JSON of /status (and all the status page shows): see status.service_status."""
        return service_status(self)


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
