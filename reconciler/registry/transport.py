"""The retry layer: 408, 429 and 5xx answers, `Retry-After`, the per-host backoff and throttle.

Below it, redirects.RedirectingSender sends one request; above it, the
registry's auth (bearer.py) answers 401s. One logical request keeps one
RetryBudget across its auth rounds, so a 401 in between never buys it more
attempts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import httpx

from ..errors import RateLimitedError, TransferError
from .redirects import RedirectingSender
from .refusals import error_detail, retry_at_text, retry_is_useless, unreachable
from .retry import Backoff, RetryPolicy, parse_retry_after
from .throttle import HostThrottle

_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


def parse_rate_limit(value: Optional[str]) -> Optional[int]:
    """`20;w=21600` -> 20."""
    if not value:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


def _window(value: Optional[str]) -> str:
    """`100;w=21600` -> ` per 21600 s window`: how long a spent quota may take to refill."""
    match = re.search(r";\s*w=(\d+)", value or "")
    return f" per {match.group(1)} s window: it refills within that time" if match else ""


def read_small(response: httpx.Response) -> None:
    """Read an error body for its message; a broken one is left unread (the
    message then goes without the registry's reason)."""
    try:
        response.read()
    except httpx.HTTPError:
        pass


def _reason(response: httpx.Response) -> str:
    """` TOOMANYREQUESTS: …`: the registry's own words, for messages."""
    text = error_detail(response, limit=200)
    return f" {text}" if text else ""


def _failed_url(exc: httpx.TransportError, default: str) -> str:
    """The URL of the request that failed (httpx raises RuntimeError when it has none)."""
    try:
        return str(exc.request.url)
    except RuntimeError:
        return default


@dataclass
class RetryBudget:
    """The attempts one logical request has used, across its auth rounds."""

    attempt: int = 0
    # The host's throttle was just waited for (or a `Retry-After` slept):
    # the next send need not wait on it again.
    waited: bool = True


@dataclass
class RateLimitSeen:
    """The registry's last `RateLimit-Remaining` / `RateLimit-Limit` (Docker Hub's pull quota)."""

    remaining: Optional[int] = None
    limit: Optional[int] = None

    def record(self, response: httpx.Response) -> None:
        """Remember the quota a response reports, if it does."""
        remaining = parse_rate_limit(response.headers.get("ratelimit-remaining"))
        if remaining is not None:
            self.remaining = remaining
            self.limit = parse_rate_limit(response.headers.get("ratelimit-limit"))


class RetryingTransport:
    """Sends until an answer is neither a transport failure nor 408, 429 or 5xx."""

    def __init__(self, registry: str, sender: RedirectingSender, policy: RetryPolicy, throttle: HostThrottle,
                 backoff: Backoff, clock: Callable[[], float]) -> None:
        self._registry = registry
        self._sender = sender
        self._policy = policy
        self._throttle = throttle
        self._backoff = backoff
        self._clock = clock
        self.rate_limit = RateLimitSeen()

    def send(self, method: str, url: str, headers: Dict[str, str], *, stream: bool, what: str,
             budget: RetryBudget) -> httpx.Response:
        """The first answer worth giving back (any status but 408, 429 and 5xx,
        401 included: it is the auth layer's); raises when attempts run out."""
        while True:
            if not budget.waited:
                self._throttle.wait()  # another request may have been asked to hold off
            budget.waited = False
            try:
                response = self._sender.send(method, url, headers, stream)
            except httpx.TransportError as exc:
                budget.attempt += 1
                # The host that failed may be a storage host a redirect led to.
                error = unreachable(self._registry, _failed_url(exc, url), exc, what, budget.attempt)
                if retry_is_useless(error, budget.attempt) or budget.attempt >= self._policy.attempts:
                    raise error from None
                budget.waited = self._backoff.wait(budget.attempt, what)
                continue
            self.rate_limit.record(response)
            if response.status_code not in _RETRY_STATUSES:
                return response
            self._give_up_or_count(response, what, budget)
            budget.waited = self._backoff.wait(budget.attempt, what, response.status_code,
                                               response.headers.get("retry-after"))

    def _give_up_or_count(self, response: httpx.Response, what: str, budget: RetryBudget) -> None:
        """Close a retryable answer and count the attempt; raise when it is the last
        one, or when a spent quota will not come back within a cycle."""
        status = response.status_code
        if status == 429:
            read_small(response)  # a small JSON body with the registry's reason
        response.close()
        if status == 429 and not response.headers.get("retry-after") and \
                parse_rate_limit(response.headers.get("ratelimit-remaining")) == 0:
            # A spent quota (Docker Hub's pull limit) does not come back within a cycle.
            limit = response.headers.get("ratelimit-limit")
            raise RateLimitedError(
                f"{self._registry}: {what}: rate limit reached (HTTP 429{_reason(response)}, "
                f"RateLimit-Remaining 0 of {parse_rate_limit(limit) or '?'}{_window(limit)}); left for the next cycle"
            )
        budget.attempt += 1
        if budget.attempt < self._policy.attempts:
            return
        if status == 429:
            asked = parse_retry_after(response.headers.get("retry-after"), self._clock())
            later = f"; retry after {retry_at_text(asked, self._clock())}" if asked is not None else ""
            raise RateLimitedError(
                f"{self._registry}: {what} still rate limited (HTTP 429{_reason(response)}) after "
                f"{budget.attempt} attempts{later}; left for the next cycle")
        raise TransferError(
            f"{self._registry}: {what} still failing with HTTP {status} after {budget.attempt} attempts")


class TokenHttp:
    """Token-service requests, through the host's throttle: a token service
    that asked to wait (`Retry-After`, bearer.RegistryAuth) is not asked
    again sooner by another thread. Its answers, a redirect or an error
    included, go back to auth.py as they are: not followed, not retried here."""

    def __init__(self, http: httpx.Client, throttle: HostThrottle) -> None:
        self._http = http
        self._throttle = throttle

    def get(self, url: str, *, params: Sequence[Tuple[str, str]], headers: Dict[str, str],
            auth: Optional[Tuple[str, str]] = None) -> httpx.Response:
        """GET `url` (with `params` in order, `scope` repeated) once the host is free."""
        self._throttle.wait()
        if auth is None:
            return self._http.get(url, params=tuple(params), headers=headers)
        return self._http.get(url, params=tuple(params), headers=headers, auth=auth)

    def post(self, url: str, *, headers: Dict[str, str], data: Dict[str, str]) -> httpx.Response:
        """POST a form to `url` once the host is free."""
        self._throttle.wait()
        return self._http.post(url, headers=headers, data=data)
