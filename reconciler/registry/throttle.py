"""One backoff per registry host, shared by every thread that talks to it.

When the registry (or its token service) asks one request to wait with
`Retry-After`, every other request to that host waits too, instead of
each of sixteen threads hitting the 429 on its own.
"""

from __future__ import annotations

import threading
from typing import Callable


class HostThrottle:
    """A "not before" time for one registry host. Thread-safe.

    `clock` and `sleep` are injected so tests can run it without waiting.
    """

    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._clock = clock
        self._sleep = sleep
        self._not_before = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        """Ask every request to this host to wait `seconds` from now (never shortens a wait)."""
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + max(seconds, 0.0))

    def wait(self) -> float:
        """Sleep until the host is free again; returns the seconds slept."""
        slept = 0.0
        while True:
            with self._lock:
                target = self._not_before
                delay = target - self._clock()
            if delay <= 0:
                return slept
            self._sleep(delay)
            slept += delay
            with self._lock:
                # Sleep again only if another thread extended the wait meanwhile
                # (not merely because an injected clock did not move).
                if self._not_before <= target:
                    return slept
