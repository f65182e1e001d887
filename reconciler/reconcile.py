"""One reconcile cycle: watchlist -> plan -> fetch -> build and publish -> state.

`Reconciler` wires the stages of `reconciler.cycle` (see there) and owns what
outlives a cycle: the locks, the state database, the blob store, the registry
clients and the recovery at start. Every watched (tag, platform) is resolved
with HEAD requests; only those whose digest differs from what is published are
fetched (all downloads happen before the publisher's transaction opens) and
then applied, all in one transaction. A failure is confined to its image: the
others publish, it is reported and retried next cycle.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from .applier import ApplyOptions
from .blobstore import BlobStore, ReadOnlyBlobStore
from .cycle.build import BuildStage
from .cycle.fetch_stage import FetchStage
from .cycle.outcome import CycleReport, describe_failure
from .cycle.plan import Plan, plan
from .cycle.record import BACKOFF_BASE_S, record, record_cycle_failure
from .cycle.results import cycle_report
from .errors import PublishError, StartError
from .locking import ProcessLock
from .publish import Publisher, make_publisher
from .registry.client import RegistryClient, RetryPolicy
from .registry.credentials import Credentials, CredentialStore, DockerConfig, read_secret
from .state import StateDB
from .watchlist import ImageEntry, Watchlist

if TYPE_CHECKING:
    from .progress import TerminalProgress


class Reconciler:
    """Converges a publisher's tree on a watchlist.

    Unless `read_only`, it starts by making this process the only writer: it
    locks the state directory and the publish target (BusyError when another
    reconciler holds either), checks that the target can be written
    (StartError) and only then recovers what an interrupted run left. A
    `read_only` reconciler (`--dry-run`) takes no lock and writes nothing: it
    can plan beside a running service.
    """

    def __init__(self, watchlist: Watchlist, *, publisher: Optional[Publisher] = None,
                 apply_options: Optional[ApplyOptions] = None, workers: int = 4,
                 retry: RetryPolicy = RetryPolicy(), clock: Callable[[], float] = time.time,
                 progress: Optional["TerminalProgress"] = None, read_only: bool = False,
                 backoff_base: float = BACKOFF_BASE_S) -> None:
        self.watchlist = watchlist
        self.read_only = read_only
        self.publisher = publisher or make_publisher(watchlist.publish, state_dir=watchlist.state_dir)
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
        blobs = watchlist.state_dir / "blobs"
        if read_only:
            self.store: BlobStore = ReadOnlyBlobStore(blobs)
            self.state = StateDB.read_only(watchlist.state_dir / "state.db")
            return
        try:
            self._lock(ProcessLock(watchlist.state_dir / "lock", f"the state directory {watchlist.state_dir}"))
            self.publisher.check_ready()
            self._lock(ProcessLock(self.publisher.lock_path(), self.publisher.target_name))
            self.store = BlobStore(blobs, max_bytes=watchlist.blob_cache_max)
            self.state = StateDB(watchlist.state_dir / "state.db")
            self.state.forget_entry_failures_except({entry.dest for entry in watchlist.images})
        except (OSError, sqlite3.Error) as exc:
            self._release_locks()
            raise StartError(f"cannot open the state directory {watchlist.state_dir}: {describe_failure(exc)}; "
                             "check its owner and free space") from None
        except BaseException:
            self._release_locks()
            raise
        try:
            self.publisher.recover()
        except PublishError as exc:  # cvmfs_server missing, the repository unknown: nothing can work
            self.close()
            raise StartError(str(exc)) from None
        except OSError as exc:  # e.g. a leftover of another user's run that we may not delete
            self.close()
            raise StartError(f"cannot clean up what an interrupted run left under {self.publisher.root}: "
                             f"{describe_failure(exc)}") from None
        except BaseException:
            self.close()
            raise

    def _lock(self, lock: ProcessLock) -> None:
        lock.acquire()
        self._locks.append(lock)

    def _release_locks(self) -> None:
        while self._locks:
            self._locks.pop().release()

    def _read_secrets(self) -> Dict[str, Credentials]:
        out = {}
        for host, config in self.watchlist.registries.items():
            if config.username:
                secret = read_secret(owner=f"{self.watchlist.path.name}: registries.\"{host}\"",
                                     password_file=config.password_file, password_env=config.password_env)
                out[host] = Credentials(config.username, secret)
        return out

    def close(self) -> None:
        """Close clients and the state database, then release the locks."""
        for client in self._clients.values():
            client.close()
        self.state.close()
        self._release_locks()

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
                config = self.watchlist.registry(host)
                creds = self._secrets.get(host) or self._credentials.lookup(host)
                self._clients[host] = RegistryClient(host, insecure=config.insecure, credentials=creds,
                                                     max_concurrency=config.max_concurrency, retry=self.retry,
                                                     private_realms=config.token_realms)
            return self._clients[host]

    # -- the cycle ---------------------------------------------------------

    def _plan(self, entries: Optional[Sequence[ImageEntry]]) -> Plan:
        return plan(self.watchlist, self, self.store, self.publisher, self.state, now=self.clock(), entries=entries)

    def run_once(self, *, entries: Optional[Sequence[ImageEntry]] = None) -> CycleReport:
        """Plan, fetch, apply and publish once; returns the report (a
        `read_only` reconciler only plans: the report lists what it would do)."""
        if self.publisher.needs_recovery and not self.read_only:
            self.publisher.recover()  # e.g. close a transaction the last cycle could not abort
        planned = self._plan(entries)
        if self.read_only:
            return planned.report()
        fetch = FetchStage(self.store, self, cancel=threading.Event(), workers=self.workers, progress=self.progress,
                           cache_bound=self.watchlist.blob_cache_max, config_name=self.watchlist.path.name)
        # Every blob of this cycle stays in the store until the cycle is over.
        with fetch.pinned(planned):
            fetched = fetch.fetch(planned)
            built = self._builder().publish(fetched.remaining(planned.changes), planned.removals,
                                            planned.gc_candidates, planned.takeover.collected)
            report = cycle_report(planned, fetched, built)
            record(self.state, self.publisher, report, clock=self.clock, backoff_base=self.backoff_base)
        return report

    def record_cycle_failure(self, entries: Sequence[ImageEntry], reason: str) -> None:
        """Record, with the same backoff as any failure, that a cycle of `entries` failed as a whole."""
        record_cycle_failure(self.state, entries, reason, now=self.clock(), backoff_base=self.backoff_base)

    def _builder(self) -> BuildStage:
        pub = self.watchlist.publish
        return BuildStage(self.publisher, self.store, apply_options=self.apply_options, bind_points=pub.bind_points,
                          gc_grace=pub.gc_grace, progress=self.progress)
