"""How hard to try: the retry policy, the backoff between attempts, and
`Retry-After` read in every spelling registries send."""

from __future__ import annotations

import email.utils
import logging
import random
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import RateLimitedError
from .refusals import retry_at_text
from .stats import TransferStats
from .throttle import HostThrottle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before a failure goes back to the next cycle."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    # A registry asking us to wait longer than this is left to the next cycle.
    max_retry_after: float = 120.0
    timeout: float = 60.0


def parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """Seconds to wait from a `Retry-After` value: delta-seconds, an HTTP-date,
    or (as Docker Hub's API once sent) a unix timestamp. None when unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
        if seconds > 1_000_000_000:  # an epoch timestamp, not a delay
            return max(0.0, seconds - now)
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


class Backoff:
    """Jittered exponential waits between attempts on one registry host,
    honouring `Retry-After` (which then holds every request to the host,
    through the shared HostThrottle)."""

    def __init__(self, registry: str, policy: RetryPolicy, throttle: HostThrottle, stats: TransferStats,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._registry = registry
        self._policy = policy
        self._throttle = throttle
        self._stats = stats
        self._clock = clock
        self._sleep = sleep

    def wait(self, attempt: int, what: str, status: Optional[int] = None, retry_after: Optional[str] = None) -> bool:
        """Sleep before retry `attempt + 1`. Returns True when the wait was the
        registry's `Retry-After`, which then holds every request to this host."""
        policy = self._policy
        delay = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
        delay *= random.uniform(0.75, 1.25)
        asked = parse_retry_after(retry_after, self._clock())
        if asked is not None:
            if asked > policy.max_retry_after:
                raise RateLimitedError(
                    f"{self._registry} asks to wait {asked:.0f}s before {what} (HTTP {status}): retry after "
                    f"{retry_at_text(asked, self._clock())}; left for the next cycle"
                )
            delay = max(asked, 0.0)
            self._throttle.hold(delay)
        self._stats.add(retries=1)
        log.info("retrying %s on %s in %.1fs (attempt %d of %d)", what, self._registry, delay, attempt + 1,
                 policy.attempts)
        self._sleep(delay)
        return asked is not None
