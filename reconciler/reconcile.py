"""One reconcile cycle: watchlist -> plan -> gate -> fetch -> build and publish -> state.

`Reconciler` wires the stages of `reconciler.cycle` (see there) and owns what
outlives a cycle: the locks, the state databases, the blob store, the registry
clients and the recovery at start. Every watched (tag, platform) is resolved
with HEAD requests; only those whose digest differs from what is published are
checked by the gates (may this target take it?), fetched (all downloads happen
before the publisher's transaction opens) and then applied, all in one
transaction. A failure is confined to its image: the others publish, it is
reported and retried next cycle.

A watchlist may name several publish targets ([publish.<name>]): each has its
own publisher, lock and state database (`TargetRun`) and its own transaction
per cycle; the blob store, the registry clients and the state directory's lock
are shared.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Set
from urllib.parse import urlsplit

from .applier import ApplyOptions
from .blobstore import BlobStore, ReadOnlyBlobStore
from .cycle.build import BuildStage
from .cycle.fetch_stage import FetchStage
from .cycle.outcome import CycleReport, describe_failure, traceback_for
from .cycle.plan import Plan, plan
from .cycle.privacy_gate import PrivacyGate, TargetAudience, target_audience
from .cycle.record import BACKOFF_BASE_S, record, record_cycle_failure
from .cycle.results import cycle_report
from .cycle.signature_gate import check_signatures
from .errors import PublishError, StartError
from .lists.refresh import ListSources
from .locking import ProcessLock
from .publish import Publisher, make_publisher
from .registry.client import RegistryClient, RetryPolicy
from .registry.credentials import Credentials, CredentialStore, DockerConfig, read_secret
from .state import StateDB
from .watchlist import ImageEntry, PublishConfig, Watchlist

if TYPE_CHECKING:
    from .progress import TerminalProgress


log = logging.getLogger(__name__)

@dataclass
class TargetRun:
    """One publish target's part of the reconciler: the watchlist as that
    target sees it (its entries only), its publisher and state database, and
    who can read it."""

    config: PublishConfig
    watchlist: Watchlist
    publisher: Publisher
    state: StateDB
    audience: TargetAudience

    def orphans(self) -> Set[str]:
        """Dests this target's state knows that no entry of it has any more."""
        return {row.dest for row in self.state.all()} - {entry.dest for entry in self.watchlist.images}

    def entries_of(self, entries: Optional[Sequence[ImageEntry]]) -> Optional[List[ImageEntry]]:
        """Those of `entries` published here (None: all of this target's)."""
        if entries is None:
            return None
        return [e for e in entries if e.publish == self.config.name]


class Reconciler:
    """Converges each publish target's tree on a watchlist.

    Unless `read_only`, it starts by making this process the only writer: it
    locks the state directory and each publish target (BusyError when another
    reconciler holds any), checks that each target can be written
    (StartError) and only then recovers what an interrupted run left. A
    `read_only` reconciler (`--dry-run`) takes no lock and writes nothing: it
    can plan beside a running service. `publisher` replaces the publisher of a
    watchlist's only target (tests).
    """

    def __init__(self, watchlist: Watchlist, *, publisher: Optional[Publisher] = None,
                 apply_options: Optional[ApplyOptions] = None, workers: int = 4,
                 retry: RetryPolicy = RetryPolicy(), clock: Callable[[], float] = time.time,
                 progress: Optional["TerminalProgress"] = None, read_only: bool = False,
                 backoff_base: float = BACKOFF_BASE_S) -> None:
        self.watchlist = watchlist
        # The watchlist with its [[list]] files' entries, read again at each
        # full cycle (`refresh`); an unreadable list stops the start here.
        self._lists = ListSources(watchlist)
        self.current = self._lists.merged()
        self.read_only = read_only
        self.apply_options = apply_options or ApplyOptions()
        self.workers = workers
        self.retry = retry
        self.clock = clock
        self.backoff_base = backoff_base  # the first retry of a failure, doubled at each next one
        self.progress = progress
        self._clients: Dict[str, RegistryClient] = {}
        self._clients_lock = threading.Lock()  # stages ask for clients from their worker threads
        self._credentials = CredentialStore(docker_config=DockerConfig())
        self._secrets = self._read_secrets()  # now: a missing password file is a configuration error
        self._locks: List[ProcessLock] = []
        self.targets: List[TargetRun] = []
        configs = watchlist.publish_targets
        if publisher is not None and len(configs) != 1:
            raise ValueError("a given publisher replaces the only target's; this watchlist has several")
        blobs = watchlist.state_dir / "blobs"
        if read_only:
            self.store: BlobStore = ReadOnlyBlobStore(blobs)
            for config in configs:
                target_publisher = publisher or make_publisher(config, state_dir=watchlist.target_state_dir(config))
                state = StateDB.read_only(watchlist.target_state_dir(config) / "state.db")
                self.targets.append(self._target_run(config, target_publisher, state))
            return
        try:
            self._lock(ProcessLock(watchlist.state_dir / "lock", f"the state directory {watchlist.state_dir}"))
            self.store = BlobStore(blobs, max_bytes=watchlist.blob_cache_max)
            for config in configs:
                self.targets.append(self._open_target(config, publisher))
        except (OSError, sqlite3.Error) as exc:
            self._close_targets()
            raise StartError(f"cannot open the state directory {watchlist.state_dir}: {describe_failure(exc)}; "
                             "check its owner and free space") from None
        except BaseException:
            self._close_targets()
            raise
        self._check_single_target_leftovers()
        for run in self.targets:
            self._recover(run)
        self._warn_probe_addresses()

    def _check_single_target_leftovers(self) -> None:
        """When a watchlist went from one [publish] table to named targets, what
        the single target kept in the state directory itself is not theirs: an
        open transaction's marker there would be taken for someone else's. (A
        node's state directory, `reconcile --target`, is its target's own.)"""
        if self.watchlist.node or any(not run.config.name for run in self.targets):
            return
        state_dir = self.watchlist.state_dir
        marker = state_dir / "cvmfs-transaction.json"
        if marker.exists():
            self.close()
            raise StartError(f"{marker} records a transaction opened when the watchlist had one [publish] table; "
                             "run once more with that watchlist to close it, or move the file to "
                             f"{state_dir / 'targets' / '<name>'}/ of the target that publishes that repository")
        if (state_dir / "state.db").exists():
            log.warning("%s is the state of the single [publish] table this watchlist had; the named targets keep "
                        "theirs under %s (backoffs and GC marks start afresh; tags are found in the published "
                        "trees)", state_dir / "state.db", state_dir / "targets")

    def _warn_probe_addresses(self) -> None:
        """The privacy probe asks a registry's `address` in its place: say so
        where a public target relies on it."""
        if not any(run.audience.public for run in self.targets):
            return
        for host, config in self.watchlist.registries.items():
            if config.address:
                log.warning('registries."%s".address: the anonymous probe asks %s whether an image is public; it '
                            "must answer as %s would (a mirror that pulls with credentials of its own makes private "
                            "images look public)", host, config.address, host)

    def _open_target(self, config: PublishConfig, publisher: Optional[Publisher]) -> TargetRun:
        """A target's publisher, checked and locked, and its state database."""
        state_dir = self.watchlist.target_state_dir(config)
        target_publisher = publisher or make_publisher(config, state_dir=state_dir)
        target_publisher.check_ready()
        self._lock(ProcessLock(target_publisher.lock_path(), target_publisher.target_name))
        state = StateDB(state_dir / "state.db")
        try:
            run = self._target_run(config, target_publisher, state)
        except BaseException:
            state.close()
            raise
        state.forget_entry_failures_except({entry.dest for entry in run.watchlist.images})
        return run

    def _target_run(self, config: PublishConfig, publisher: Publisher, state: StateDB) -> TargetRun:
        audience = target_audience(config, publisher.read_access(), publisher.target_name)
        return TargetRun(config, self.current.for_target(config), publisher, state, audience)

    def _recover(self, run: TargetRun) -> None:
        try:
            run.publisher.recover()
        except PublishError as exc:  # cvmfs_server missing, the repository unknown: nothing can work
            self.close()
            raise StartError(str(exc)) from None
        except OSError as exc:  # e.g. a leftover of another user's run that we may not delete
            self.close()
            raise StartError(f"cannot clean up what an interrupted run left under {run.publisher.root}: "
                             f"{describe_failure(exc)}") from None
        except BaseException:
            self.close()
            raise

    @property
    def publisher(self) -> Publisher:
        """The first target's publisher (the only one's, in most watchlists)."""
        return self.targets[0].publisher

    @property
    def state(self) -> StateDB:
        """The first target's state database (the only one's, in most watchlists)."""
        return self.targets[0].state

    def _lock(self, lock: ProcessLock) -> None:
        lock.acquire()
        self._locks.append(lock)

    def _release_locks(self) -> None:
        while self._locks:
            self._locks.pop().release()

    def _close_targets(self) -> None:
        for run in self.targets:
            run.state.close()
        self._release_locks()

    def _read_secrets(self) -> Dict[str, Credentials]:
        out = {}
        for host, config in self.watchlist.registries.items():
            if config.username:
                secret = read_secret(owner=f"{self.watchlist.path.name}: registries.\"{host}\"",
                                     password_file=config.password_file, password_env=config.password_env)
                out[host] = Credentials(config.username, secret)
        return out

    def close(self) -> None:
        """Close clients and the state databases, then release the locks."""
        for client in self._clients.values():
            client.close()
        self._close_targets()

    def mirror(self, host: str) -> Optional[RegistryClient]:
        """The (cached) client of a registry's configured blob mirror, anonymous."""
        url = self.watchlist.registry(host).mirror
        if not url:
            return None
        key = f"mirror:{host}"
        with self._clients_lock:
            if key not in self._clients:
                parts = urlsplit(url)
                self._clients[key] = RegistryClient(parts.netloc, insecure=parts.scheme == "http", retry=self.retry)
            return self._clients[key]

    def registry_clients(self) -> Dict[str, RegistryClient]:
        """The registry clients made so far, by host."""
        with self._clients_lock:
            return dict(self._clients)

    def client(self, host: str) -> RegistryClient:
        """The (cached) client for a registry host, with its configured credentials."""
        with self._clients_lock:
            if host not in self._clients:
                # config.json's credentials are looked up for the host that
                # receives them: the registry's `address` when it has one.
                address = self.watchlist.registry(host).address or host
                self._clients[host] = self._new_client(host, self._secrets.get(host)
                                                       or self._credentials.lookup(address))
            return self._clients[host]

    def anonymous(self, host: str) -> RegistryClient:
        """A new client for a registry host without any credentials: what anyone
        may pull. Never cached: a token it got earlier would answer for the
        registry's past (a repository made private keeps serving it)."""
        return self._new_client(host, None)

    def _new_client(self, host: str, credentials: Optional[Credentials]) -> RegistryClient:
        config = self.watchlist.registry(host)
        # `address`: another host serves this registry (a test registry, a full mirror).
        return RegistryClient(config.address or host, insecure=config.insecure, credentials=credentials,
                              max_concurrency=config.max_concurrency, max_lookups=config.max_lookups,
                              retry=self.retry, private_realms=config.token_realms)

    # -- the cycle ---------------------------------------------------------

    def refresh(self) -> Watchlist:
        """Read the [[list]] files again (a list that cannot be read keeps its
        last good entries); the watchlist with every entry, also `current`,
        and each target's part of it."""
        self.current = self._lists.merged()
        for run in self.targets:
            # The whole target's part, also when a cycle plans a few entries:
            # the plan removes the tags of dests no entry has, lists' included.
            run.watchlist = self.current.for_target(run.config)
        return self.current

    def run_once(self, *, entries: Optional[Sequence[ImageEntry]] = None) -> CycleReport:
        """Plan, check, fetch, apply and publish once, target by target (one
        transaction each); returns the report of all of them (a `read_only`
        reconciler only plans and checks: the report lists what it would do).
        Without `entries`: every entry, the [[list]] files read again first."""
        if entries is None:
            self.refresh()
        report = CycleReport()
        for run in self.targets:
            planned = run.entries_of(entries)
            if planned is not None and not planned:
                if not run.orphans():
                    continue
                # None of its entries is due, but it still publishes tags no entry
                # of its has (an entry moved to another target, or deleted): a
                # full cycle of the target removes them.
                planned = None
            try:
                part = self._run_target(run, planned)
            except Exception as exc:
                if len(self.targets) == 1:
                    raise  # the target's failure is the cycle's: the caller tells it as before
                # One target that cannot work (its repository, its gateway) never stops the others.
                part = self._target_failed(run, planned, exc)
            if len(self.targets) > 1:
                part.target = run.audience.label
            report.merge(part)
        return report

    def _target_failed(self, run: TargetRun, planned: Optional[Sequence[ImageEntry]],
                       exc: Exception) -> CycleReport:
        """The report of a target whose cycle failed as a whole: each of its
        planned entries failed with the reason, and backed off."""
        mine = list(planned if planned is not None else run.watchlist.images)
        reason = f"the cycle of {run.audience.label} failed: {describe_failure(exc)}"
        log.error("%s", reason, exc_info=traceback_for(exc))
        if not self.read_only and mine:
            record_cycle_failure(run.state, mine, reason, now=self.clock(), backoff_base=self.backoff_base)
        return CycleReport(entries=mine, entry_failures=[(entry, reason) for entry in mine])

    def retry_due(self) -> Dict[str, float]:
        """Per dest with anything failing, when it is due again (every target's)."""
        due: Dict[str, float] = {}
        for run in self.targets:
            due.update(run.state.retry_due())
        return due

    def _run_target(self, run: TargetRun, entries: Optional[Sequence[ImageEntry]]) -> CycleReport:
        if run.publisher.needs_recovery and not self.read_only:
            run.publisher.recover()  # e.g. close a transaction the last cycle could not abort
        planned = self._plan(run, entries)
        PrivacyGate(run.audience, self.anonymous, run.state, now=self.clock(),
                    record=not self.read_only).check(planned.changes)
        check_signatures(planned, self)  # before any layer is downloaded; refusals fail alone
        if self.read_only:
            return planned.report()
        fetch = FetchStage(self.store, self, cancel=threading.Event(), workers=self.workers, progress=self.progress,
                           cache_bound=self.watchlist.blob_cache_max, config_name=self.watchlist.path.name)
        # Every blob of this cycle stays in the store until the cycle is over.
        with fetch.pinned(planned):
            fetched = fetch.fetch(planned)
            built = self._builder(run).publish(fetched.remaining(planned.changes), planned.removals,
                                               planned.gc_candidates, planned.takeover.collected)
            report = cycle_report(planned, fetched, built)
            record(run.state, run.publisher, report, clock=self.clock, backoff_base=self.backoff_base)
        return report

    def _plan(self, run: TargetRun, entries: Optional[Sequence[ImageEntry]]) -> Plan:
        return plan(run.watchlist, self, self.store, run.publisher, run.state, now=self.clock(), entries=entries)

    def record_cycle_failure(self, entries: Sequence[ImageEntry], reason: str) -> None:
        """Record, with the same backoff as any failure, that a cycle of `entries` failed as a whole."""
        for run in self.targets:
            mine = run.entries_of(entries)
            if mine:
                record_cycle_failure(run.state, mine, reason, now=self.clock(), backoff_base=self.backoff_base)

    def _builder(self, run: TargetRun) -> BuildStage:
        pub = run.config
        return BuildStage(run.publisher, self.store, apply_options=self.apply_options, bind_points=pub.bind_points,
                          gc_grace=pub.gc_grace, progress=self.progress)
