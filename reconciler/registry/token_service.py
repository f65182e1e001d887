"""Asking a registry's token service (its challenge's realm) for a Bearer token.

As distribution's token spec has it: a GET with the scopes (and Basic
credentials when we have them), or an OAuth2 POST for an identity token.
The realm's host is judged before each request (addresses.HostRule), and a
token is cached (tokens.TokenCache) as covering what it was granted.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, List, Optional, Tuple

import httpx

from .. import boundedjson
from ..errors import AuthenticationError, RegistryError, RegistryUnreachableError, TokenServiceUnavailableError
from . import USER_AGENT
from .addresses import HostRule, host_port
from .credentials import Credentials
from .refusals import unreachable
from .tokens import MIN_TOKEN_LIFETIME_S, TokenCache, TokenKey, granted_scopes, parse_issued_at
from .transport import TokenHttp

log = logging.getLogger(__name__)

CLIENT_ID = "reconciler"


class TokenRefusedError(AuthenticationError):
    """The token service answered 401 (credentials refused) or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TokenServiceBusyError(TokenServiceUnavailableError):
    """The token service answered 429 or 5xx; `retry_after` is its `Retry-After` header, if any."""

    def __init__(self, message: str, status: int, retry_after: Optional[str]) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _scopes_text(scopes: Tuple[str, ...]) -> str:
    """Scopes for a message: a shared token request names up to 20."""
    if len(scopes) > 2:
        return f"{scopes[0]} and {len(scopes) - 1} more scopes"
    return " ".join(scopes) or "no scope"


def credentials_who(credentials: Optional[Credentials]) -> str:
    """Who we authenticate as, for messages (never the secret)."""
    if credentials and credentials.username:
        return f"user {credentials.username!r}"
    return "an identity token" if credentials else "anonymous access"


class TokenService:
    """The token requests of one registry host (any realm its challenges name)."""

    def __init__(self, registry: str, http: TokenHttp, credentials: Optional[Credentials], cache: TokenCache,
                 clock: Callable[[], float], hosts: HostRule) -> None:
        self.registry = registry
        self._http = http
        self._credentials = credentials
        self._cache = cache
        self._clock = clock
        # Which realms may be asked (private_realms: host or host:port of token
        # services on a private address that the operator allows, an
        # on-premises auth service beside the registry).
        self._hosts = hosts

    @property
    def who(self) -> str:
        """Who we authenticate as, for messages (never the secret)."""
        return credentials_who(self._credentials)

    def judge_realm(self, realm: str) -> None:
        """Refuse a realm on an internal address other than the registry's own,
        unless the operator allowed it (addresses.HostRule). Judged just before
        each token request, by what the realm's host resolves to then."""
        inside = self._hosts.foreign_internal(realm)
        if inside:
            raise AuthenticationError(
                f"{self.registry}: token realm {realm!r} points at a private address other than the registry "
                f"({', '.join(str(ip) for ip in inside)}); no credentials were sent. If that token service is yours, "
                f"allow it for this registry in the watchlist: token_realms = [\"{host_port(realm)}\"] under "
                f'[registries."{self.registry}"]'
            )

    def fetch(self, key: TokenKey, needed: Iterable[str]) -> str:
        """Ask the realm for a token for the key's scopes; cache it as covering
        `needed` and those of the others it was granted."""
        realm, service, scopes, _ = key
        response = self._ask_realm(realm, service, scopes)
        received = self._clock()
        who = self.who
        if response.status_code in (401, 403):
            raise TokenRefusedError(
                response.status_code,
                f"{self.registry}: token service {realm} refused {who} for {_scopes_text(scopes)} "
                f"(HTTP {response.status_code}); check the credentials and that the repository exists",
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise TokenServiceBusyError(
                f"{self.registry}: token service {realm} answered HTTP {response.status_code}",
                response.status_code, response.headers.get("retry-after"))
        if response.status_code != 200:
            raise RegistryError(f"{self.registry}: token service {realm} answered HTTP {response.status_code}")
        try:
            body = boundedjson.loads(response.content)
        except ValueError:
            raise RegistryError(f"{self.registry}: token service {realm} returned something other than JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.registry}: token service {realm} returned no token")
        try:
            expires_in = float(body.get("expires_in") or MIN_TOKEN_LIFETIME_S)
        except (TypeError, ValueError):
            expires_in = MIN_TOKEN_LIFETIME_S
        granted = granted_scopes(token, scopes)
        covers = set(needed) | (set(scopes) if granted is None else granted)
        self._cache.put(key, token, parse_issued_at(body.get("issued_at"), received), expires_in, covers)
        log.debug("obtained token for %s scopes=%s (%s)", self.registry, " ".join(scopes), who)
        return token

    def _ask_realm(self, realm: str, service: str, scopes: Tuple[str, ...]) -> httpx.Response:
        """The token service's answer: an OAuth2 POST for an identity token
        (GET with Basic where POST is not served), else a GET, with Basic
        credentials when we have them. A failure to reach it raises."""
        creds = self._credentials
        params: List[Tuple[str, str]] = [("client_id", CLIENT_ID)]
        headers = {"User-Agent": USER_AGENT}
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        try:
            if creds is not None and creds.identity_token:
                response = self._http.post(realm, headers=headers, data={
                    "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "service": service, "scope": " ".join(scopes), "client_id": CLIENT_ID,
                })
                if response.status_code in (404, 405):
                    response = self._http.get(realm, params=params, headers=headers,
                                              auth=(creds.username or "<token>", creds.identity_token))
            elif creds is not None:
                params.append(("account", creds.username))
                response = self._http.get(realm, params=params, headers=headers, auth=(creds.username, creds.password))
            else:
                response = self._http.get(realm, params=params, headers=headers)
        except httpx.TransportError as exc:
            # DNS, refused, TLS: named for the token host (auth.docker.io is not the registry).
            error = unreachable(self.registry, realm, exc, f"token service {realm}")
            if isinstance(error, RegistryUnreachableError):
                raise error from None
            raise TokenServiceUnavailableError(str(error)) from None  # a timeout: worth retrying
        except httpx.HTTPError as exc:
            raise TokenServiceUnavailableError(
                f"{self.registry}: token service {realm} unreachable: {type(exc).__name__}") from None
        return response
