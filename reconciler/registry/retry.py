"""How hard to try: the retry policy, and `Retry-After` read in every spelling registries send."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Optional


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
