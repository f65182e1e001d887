"""Bearer tokens: a cache keyed by what was asked, each token usable for the scopes it covers.

A token asked for many repositories (auth.Authenticator shares them) covers
what its JWT `access` claim grants (`granted_scopes`), or, when opaque, what
was asked; a registry refusing it for one scope takes only that scope away.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Set, Tuple

from .. import boundedjson

MIN_TOKEN_LIFETIME_S = 60.0

# (realm, service, scopes asked, credential identity)
TokenKey = Tuple[str, str, Tuple[str, ...], str]


@dataclass
class _CachedToken:
    value: str = field(repr=False)
    expires_at: float
    refresh_at: float
    covers: FrozenSet[str]  # the scopes it may be sent for


class TokenCache:
    """Bearer tokens keyed by (realm, service, scopes asked, credential
    identity), each usable for the scopes it covers. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tokens: Dict[TokenKey, _CachedToken] = {}
        self._lock = threading.Lock()

    def find(self, realm: str, service: str, identity: str, scopes: Iterable[str]) -> Optional[Tuple[TokenKey, str]]:
        """A valid token of this realm, service and identity covering all of
        `scopes` (the one asked for exactly these first), with its key."""
        wanted = tuple(sorted(set(scopes)))
        exact: TokenKey = (realm, service, wanted, identity)
        now = self._clock()
        with self._lock:
            cached = self._tokens.get(exact)
            if cached is not None and now < cached.refresh_at and cached.covers.issuperset(wanted):
                return exact, cached.value
            for key, cached in self._tokens.items():
                if key[0] == realm and key[1] == service and key[3] == identity and now < cached.refresh_at \
                        and cached.covers.issuperset(wanted):
                    return key, cached.value
        return None

    def put(self, key: TokenKey, value: str, issued_at: float, expires_in: float,
            covers: Optional[Iterable[str]] = None) -> None:
        """Store a token (covering `covers`, by default the scopes asked for);
        its lifetime is never taken as less than 60 s."""
        lifetime = max(expires_in, MIN_TOKEN_LIFETIME_S)
        expires_at = issued_at + lifetime
        # Renew a little early so a token does not expire between check and use.
        refresh_at = expires_at - min(30.0, lifetime * 0.1)
        with self._lock:
            now = self._clock()
            for stale in [k for k, t in self._tokens.items() if t.expires_at <= now]:
                del self._tokens[stale]  # keys vary with what was asked together: do not let them pile up
            self._tokens[key] = _CachedToken(value, expires_at, refresh_at,
                                             frozenset(key[2] if covers is None else covers))

    def uncover(self, key: TokenKey, scopes: Iterable[str], value: Optional[str] = None) -> None:
        """The registry refused the token for `scopes`: keep it for the others
        (only if it is still `value`, when given)."""
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and (value is None or cached.value == value):
                cached.covers = cached.covers.difference(scopes)

    def invalidate(self, key: TokenKey, value: Optional[str] = None) -> None:
        """Forget the token for `key` (only if it is still `value`, when given)."""
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and (value is None or cached.value == value):
                del self._tokens[key]


def granted_scopes(token: str, asked: Iterable[str]) -> Optional[FrozenSet[str]]:
    """Which of the `asked` repository scopes a token grants, read from its
    `access` claim when it is a JWT as distribution's token server, Docker Hub
    and Harbor issue (docs/spec/auth/jwt.md); None when the token is opaque.
    Only a hint for sharing the token: the registry still decides."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = boundedjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    access = payload.get("access") if isinstance(payload, dict) else None
    if not isinstance(access, list):
        return None
    allowed: Dict[Tuple[str, str], Set[str]] = {}
    for claim in access:
        if isinstance(claim, dict) and isinstance(claim.get("actions"), list):
            allowed.setdefault((str(claim.get("type")), str(claim.get("name"))), set()).update(
                str(a) for a in claim["actions"])
    granted = set()
    for scope in asked:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        have = allowed.get((kind, name), set())
        if "*" in have or set(actions.split(",")) <= have:
            granted.add(scope)
    return frozenset(granted)


def parse_issued_at(text: object, received: float) -> float:
    """`issued_at` as epoch seconds; the local time when absent, unparsable or skewed."""
    if not isinstance(text, str) or not text:
        return received
    try:
        value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return received
    # A clock in the future, or a token "issued" long ago: trust our own clock.
    if value > received + 5 or value < received - 3600:
        return received
    return value
