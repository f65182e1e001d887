"""The service's Prometheus metrics (`GET /metrics`), one registry per service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..cycle.outcome import CycleReport, Status
from ..reconcile import Reconciler
from .status import published_signer


class Metrics:
    """The Prometheus metrics of one service (its own registry: no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter("reconciler_polls", "Tags polled (HEAD requests) per image", ["image"],
                             registry=self.registry)
        self.publishes = Counter("reconciler_publishes", "Tags published with a new digest", ["image"],
                                 registry=self.registry)
        self.failures = Counter("reconciler_failures", "Failed tags or entries per image", ["image"],
                                registry=self.registry)
        self.bytes = Counter("reconciler_downloaded_bytes", "Blob bytes downloaded", registry=self.registry)
        self.cycles = Counter("reconciler_cycles", "Reconcile cycles run", registry=self.registry)
        self.hooks = Counter("reconciler_webhooks", "Webhooks received, by provider and outcome",
                             ["provider", "outcome"], registry=self.registry)
        self.duration = Histogram("reconciler_cycle_duration_seconds", "Duration of reconcile cycles",
                                  buckets=(0.5, 1, 5, 15, 60, 300, 900, 3600), registry=self.registry)
        self.refusals = Counter("reconciler_refusals", "Tags a policy of their target refused, by policy",
                                ["image", "policy"], registry=self.registry)
        self.source_public = Gauge("reconciler_source_public",
                                   "1 when an anonymous probe could pull the image's repository, 0 when it could not "
                                   "(absent: not probed, or the probe could not tell)", ["image"],
                                   registry=self.registry)
        self.rate_limit = Gauge("reconciler_registry_ratelimit_remaining",
                                "RateLimit-Remaining last seen per registry", ["registry"], registry=self.registry)
        self.signers = Gauge("reconciler_published_signer",
                             "1 per published tag, labelled with who signed it: the key's SHA-256 fingerprint, "
                             "'no policy' or 'unverified'", ["dest", "tag", "platform", "signed_by"],
                             registry=self.registry)

    def record(self, report: CycleReport, seconds: float, reconciler: Reconciler) -> None:
        """Count one finished cycle: its tags, bytes, failures, and the registries' rate limits."""
        self.cycles.inc()
        self.duration.observe(seconds)
        for o in report.outcomes:
            image = o.entry.source.name
            self.polls.labels(image).inc()
            if o.status is Status.PUBLISHED:
                self.publishes.labels(image).inc()
            elif o.status is Status.FAILED:
                self.failures.labels(image).inc()
                if o.refusal:
                    self.refusals.labels(image, o.refusal).inc()
            self.bytes.inc(o.downloaded)
        for entry, _ in report.entry_failures:
            self.failures.labels(entry.source.name).inc()
        self._record_source_public(reconciler)
        self._record_signers(reconciler)
        for host, client in reconciler.registry_clients().items():
            if client.rate_limit_remaining is not None:
                self.rate_limit.labels(host).set(client.rate_limit_remaining)

    def _record_source_public(self, reconciler: Reconciler) -> None:
        """The last probe's answer per watched source repository: one that left
        the watchlist, or whose last probe could not tell, drops out (a stale 1
        would say a repository is public long after anyone last looked)."""
        watched = {entry.source.name for entry in reconciler.current.images}
        self.source_public.clear()
        for run in reconciler.targets:
            for name, seen in run.state.visibilities().items():
                if seen.public is not None and name in watched:
                    self.source_public.labels(name).set(1 if seen.public else 0)

    def _record_signers(self, reconciler: Reconciler) -> None:
        """Who signed each published tag, from every target's state database (so also after a restart)."""
        entries = {entry.dest: entry for entry in reconciler.current.images}
        self.signers.clear()  # tags no longer published drop out
        for run in reconciler.targets:
            for row in run.state.all():
                signer = published_signer(entries.get(row.dest), row)
                if signer is not None:
                    self.signers.labels(row.dest, row.tag, row.platform, signer).set(1)
