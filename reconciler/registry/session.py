"""What the tag pager and the blob fetcher need of a registry connection.

`RegistryClient` is the one implementation; the protocol keeps tags.py and
blobs.py from reaching into the client's transport, auth or throttle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Dict, Optional, Protocol

import httpx

from ..errors import ReconcilerError
from .retry import RetryPolicy


@dataclass
class TransferStats:
    """Counters of what this client asked the registry for. Thread-safe."""

    manifest_heads: int = 0
    manifest_gets: int = 0
    blob_gets: int = 0
    blob_bytes: int = 0
    tag_pages: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class RegistrySession(Protocol):
    """One registry host's requests: authorized, retried, redirected safely."""

    registry: str
    base_url: str
    retry: RetryPolicy
    stats: TransferStats

    @property
    def slots(self) -> threading.BoundedSemaphore:
        """Held while a request (or a whole blob transfer) is in flight: the host's concurrency limit."""

    def request(self, method: str, url: str, repository: str, *, headers: Optional[Dict[str, str]] = None,
                stream: bool = False, what: str = "request") -> httpx.Response:
        """Send with auth and retries; any final response that is not 401, 429 or 5xx."""

    def fail(self, response: httpx.Response, what: str, repository: str = "") -> ReconcilerError:
        """The specific error for a final answer that is not a success."""

    def backoff(self, attempt: int, what: str) -> bool:
        """Sleep before retry `attempt + 1`."""
