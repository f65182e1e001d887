"""What the tag pager and the blob fetcher need of a registry connection.

`RegistryClient` is the one implementation; the protocol keeps tags.py and
blobs.py from reaching into the client's transport, auth or throttle.
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Protocol

import httpx

from ..errors import ReconcilerError
from .retry import RetryPolicy
from .stats import TransferStats


class RegistrySession(Protocol):
    """One registry host's requests: authorized, retried, redirected safely."""

    registry: str
    base_url: str
    retry: RetryPolicy
    stats: TransferStats

    @property
    def slots(self) -> threading.BoundedSemaphore:
        """Held while a manifest or tag-list request is in flight: the host's lookup limit."""

    @property
    def download_slots(self) -> threading.BoundedSemaphore:
        """Held while a whole blob transfer is in flight: the host's download limit."""

    def request(self, method: str, url: str, repository: str, *, headers: Optional[Dict[str, str]] = None,
                stream: bool = False, what: str = "request") -> httpx.Response:
        """Send with auth and retries; any final response that is not 401, 429 or 5xx."""

    def fail(self, response: httpx.Response, what: str, repository: str = "") -> ReconcilerError:
        """The specific error for a final answer that is not a success."""

    def backoff(self, attempt: int, what: str) -> bool:
        """Sleep before retry `attempt + 1`."""
