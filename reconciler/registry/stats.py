"""Counters of what a registry client asked its registry for (for the status page and tests)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


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
