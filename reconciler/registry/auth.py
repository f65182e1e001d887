"""Registry authentication: Basic, and Bearer tokens from the registry's token service.

The flow is the one of distribution's token spec: a request gets 401 with a
`WWW-Authenticate` challenge; for `Bearer` we ask the challenge's realm for a
token for the scopes we need (with Basic credentials, or an OAuth2 POST for
identity tokens), cache it per (realm, service, scopes, credential) until it
expires, and retry the request once with it.

Tokens are shared: a token is used for every repository it was granted, and
the registry client says which repositories a cycle will need
(`Authenticator.expect`), so one token request asks for many of them together (the
token spec repeats `scope`; distribution's docs/spec/auth/token.md, and the
token server grants the intersection of what is asked and allowed). A
thousand watched tags in two hundred Docker Hub repositories then cost ten
token requests, not two hundred.

Credentials and tokens go only to the registry's own origin (the client
checks that) and to the token realm that the registry's own challenge named,
and to that realm only if it is not on an internal address other than the
registry's own, judged as addresses in any spelling and by what its name
resolves to, unless the operator allowed it (`token_realms`; addresses.py).
A token is only ever asked to pull (`pull_scopes`), whatever a challenge
names: the configured credentials never ask for push, delete or the catalog.
A learned challenge is only a guess for the next request: every 401 teaches
it again (a realm can move; Harbor answers a rejected token with `Basic`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import AuthenticationError, RegistryError, RegistryUnreachableError, TokenServiceUnavailableError
from . import USER_AGENT
from .addresses import HostRule, host_port
from .challenge import Challenge, MalformedChallengeError, parse_challenges, pick_challenge
from .credentials import Credentials
from .refusals import unreachable
from .transport import TokenHttp

log = logging.getLogger(__name__)

MIN_TOKEN_LIFETIME_S = 60.0
CLIENT_ID = "reconciler"

# At most this many scopes asked in one token request: each granted repository
# is a claim in the token (Docker Hub's carry ~130 bytes each), and the token
# travels in every request's Authorization header, where 8 KB is a common
# limit of a header line (nginx's large_client_header_buffers).
MAX_SCOPES_PER_TOKEN = 20
# Refusals of shared tokens (for scopes they were asked for) after which a
# registry's tokens are no longer shared.
SHARED_REFUSALS_BEFORE_GIVING_UP = 3

TokenKey = Tuple[str, str, Tuple[str, ...], str]
# A repository name in the distribution spec's grammar (no `:`, so a scope we
# ask for always reads as type:name:actions).
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_NAME = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")


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
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
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


def _parse_issued_at(text: object, received: float) -> float:
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


def _scopes_text(scopes: Tuple[str, ...]) -> str:
    """Scopes for a message: a shared token request names up to 20."""
    if len(scopes) > 2:
        return f"{scopes[0]} and {len(scopes) - 1} more scopes"
    return " ".join(scopes) or "no scope"


def pull_scopes(scopes: Iterable[str]) -> Tuple[str, ...]:
    """Only what pulling needs of `scopes` (sorted, deduplicated): each
    repository scope that grants pull (`pull`, `*`, or a list naming it) as
    `repository:<name>:pull`; every other resource type
    (`registry:catalog:*`) and a scope without pull (`push` alone) dropped.

    A challenge's `scope` is the registry's word, and the configured
    credentials go with the token request: we never ask them for more than
    we use. When nothing is left the token is asked without that scope, as
    for the registry's base endpoint; a registry that needed more then
    refuses the request, which fails as any refusal does.
    """
    kept = set()
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and _REPOSITORY_NAME.match(name) and \
                {"pull", "*"} & {a.strip() for a in actions.split(",")}:
            kept.add(f"repository:{name}:pull")
    return tuple(sorted(kept))


@dataclass(frozen=True)
class AuthState:
    """What was sent with a request, so a 401 can be answered correctly."""

    header: Optional[str] = None
    token_key: Optional[TokenKey] = None
    # Credentials or a token obtained just now: refused again, there is nothing more to try.
    new_login: bool = False

    @property
    def token(self) -> Optional[str]:
        """The bearer token sent, if any."""
        return self.header[len("Bearer "):] if self.token_key is not None and self.header else None


class Authenticator:
    """Answers a registry's challenges for one registry host.

    `authorize(scopes)` returns the header to send before any 401 is seen
    (once the registry's challenge is known); `handle_unauthorized` turns a 401
    into a header for the single retry, or raises AuthenticationError.
    """

    def __init__(self, registry: str, base_url: str, http: TokenHttp, credentials: Optional[Credentials],
                 cache: TokenCache, clock: Callable[[], float] = time.time,
                 private_realms: Iterable[str] = (), hosts: Optional[HostRule] = None) -> None:
        self.registry = registry
        # Which realms may be asked (private_realms: host or host:port of token
        # services on a private address that the operator allows, an
        # on-premises auth service beside the registry).
        self._hosts = hosts or HostRule(urlsplit(base_url).netloc, private_realms)
        self._base_url = base_url.rstrip("/") + "/v2/"
        self._http = http
        self._credentials = credentials
        self._cache = cache
        self._clock = clock
        self._challenge: Optional[Challenge] = None
        self._lock = threading.Lock()
        self._expected: Dict[str, None] = {}  # scopes the coming requests need, in order
        # One token request at a time: a thread that waited finds the token just
        # fetched, or fails with the error of the request it waited for.
        self._fetching = threading.Lock()
        self._fetches = 0
        self._fetch_error: Optional[Tuple[Exception, FrozenSet[str]]] = None  # the last failure, for which scopes
        self._share_tokens = True  # False once sharing a token did not work with this registry
        self._shared_refusals = 0

    @property
    def _identity(self) -> str:
        return self._credentials.identity if self._credentials else "anonymous"

    @property
    def who(self) -> str:
        """Who we authenticate as, for messages (never the secret)."""
        if self._credentials and self._credentials.username:
            return f"user {self._credentials.username!r}"
        return "an identity token" if self._credentials else "anonymous access"

    def _can_answer_basic(self) -> bool:
        return self._credentials is not None and not self._credentials.identity_token

    def expect(self, scopes: Iterable[str]) -> None:
        """Scopes requests will need soon: a token request asks for them too."""
        with self._lock:
            self._expected.update(dict.fromkeys(pull_scopes(scopes)))

    def authorize(self, scopes: Iterable[str]) -> AuthState:
        """The Authorization header for a request needing `scopes`, if a challenge is known."""
        challenge = self._challenge
        if challenge is None:
            return AuthState()
        return self._answer(challenge, pull_scopes(scopes), request_url=None)

    def handle_unauthorized(self, response: httpx.Response, scopes: Iterable[str], sent: AuthState) -> AuthState:
        """Answer a 401 of the registry's own origin: pick the challenge (Bearer,
        else Basic), drop a rejected token, return the header for the retry.

        An empty AuthState means "retry without Authorization", so the registry
        challenges us as a new client: Harbor answers any request carrying a
        token it rejects with `Basic realm="harbor"`, and nvcr.io names, after
        a token expired, a realm that refuses anonymous refreshes; a request
        without a token gets the usual Bearer challenge back from both.
        """
        headers = response.headers.get_list("www-authenticate")
        if not headers:
            raise AuthenticationError(
                f"{self.registry} answered 401 without a WWW-Authenticate challenge for {response.request.url.path}"
            )
        try:
            challenges = parse_challenges(headers)
        except MalformedChallengeError as exc:
            raise AuthenticationError(f"{self.registry}: {exc}") from None
        chosen = pick_challenge(challenges)
        if chosen is None:
            schemes = ", ".join(c.scheme for c in challenges)
            raise AuthenticationError(f"{self.registry} asks for unsupported authentication scheme(s): {schemes}")
        wanted = set(scopes)
        challenge_scope = chosen.get("scope")
        if chosen.scheme == "bearer" and challenge_scope:
            # Only pull, whatever the challenge names (pull_scopes).
            wanted.update(challenge_scope.split())
        wanted = set(pull_scopes(wanted))
        share = True
        if sent.token_key is not None:
            # The registry rejected a token we held (expired, revoked, or too narrow).
            if set(sent.token_key[2]) - wanted and self._still_sharing_after_refusal():
                # Asked with other scopes: keep it for them; this request gets a token of its own.
                self._cache.uncover(sent.token_key, wanted, sent.token)
                share = False
            else:
                self._cache.invalidate(sent.token_key, sent.token)
            if chosen.scheme == "basic" and not self._can_answer_basic():
                return self._start_over()
        elif sent.header is not None and chosen.scheme == "basic":
            raise AuthenticationError(
                f"{self.registry} rejected the credentials of user {self._credentials.username!r}"
                if self._credentials else f"{self.registry} requires credentials"
            )
        try:
            answer = self._answer(chosen, tuple(sorted(wanted)), request_url=str(response.request.url), share=share)
        except AuthenticationError:
            if sent.token_key is None:
                raise
            log.info("%s: the challenge after a rejected token cannot be answered; asking again without one",
                     self.registry)
            return self._start_over()
        # Learned only once answered: a challenge we cannot meet must not block later requests.
        with self._lock:
            self._challenge = chosen
        return answer

    def _still_sharing_after_refusal(self) -> bool:
        """Count a shared token refused for a scope it was asked for. A token
        service that grants only part of what is asked, without saying so in
        the token (opaque), costs a 401 per repository: after a few, tokens
        are no longer shared (and a refused shared token is dropped whole)."""
        with self._lock:
            self._shared_refusals += 1
            if self._shared_refusals < SHARED_REFUSALS_BEFORE_GIVING_UP or not self._share_tokens:
                return self._share_tokens
            self._share_tokens = False
        log.info("%s: shared tokens were refused %d times; asking one repository at a time", self.registry,
                 self._shared_refusals)
        return False

    def _start_over(self) -> AuthState:
        """Forget the learned challenge: the retry goes without Authorization."""
        with self._lock:
            self._challenge = None
        return AuthState()

    def _answer(self, challenge: Challenge, scopes: Tuple[str, ...], request_url: Optional[str],
                share: bool = True) -> AuthState:
        if challenge.scheme == "basic":
            creds = self._credentials
            if creds is None or not self._can_answer_basic():
                raise AuthenticationError(
                    f"{self.registry} requires a username and password; configure them for this registry "
                    "in the watchlist or in Docker's config.json"
                )
            return AuthState(header=creds.basic_header(), new_login=True)
        realm = challenge.get("realm")
        if not realm:
            raise AuthenticationError(f"{self.registry}: Bearer challenge without a realm")
        realm = self._check_realm(realm, request_url)
        service = challenge.get("service") or ""
        found = self._cache.find(realm, service, self._identity, scopes)
        if found is not None:
            return AuthState(header=f"Bearer {found[1]}", token_key=found[0])
        fetches = self._fetches
        with self._fetching:
            found = self._cache.find(realm, service, self._identity, scopes)
            if found is not None:
                return AuthState(header=f"Bearer {found[1]}", token_key=found[0])
            if self._fetches != fetches and self._fetch_error is not None:
                error, failed_for = self._fetch_error
                if isinstance(error, (TokenServiceUnavailableError, RegistryUnreachableError)) or \
                        failed_for.issuperset(scopes):
                    raise error  # the request this thread waited for failed: not asked again at once
            self._fetches += 1
            try:
                key, token = self._new_token(realm, service, scopes, share)
            except Exception as exc:
                self._fetch_error = (exc, frozenset(scopes))
                raise
            self._fetch_error = None
        return AuthState(header=f"Bearer {token}", token_key=key, new_login=True)

    def _new_token(self, realm: str, service: str, scopes: Tuple[str, ...], share: bool) -> Tuple[TokenKey, str]:
        """A token for `scopes`, asked together with expected scopes no token covers yet."""
        self._judge_realm(realm)
        asked = self._with_expected(realm, service, scopes) if share and self._share_tokens else scopes
        key: TokenKey = (realm, service, asked, self._identity)
        try:
            return key, self._fetch_token(key, scopes)
        except (TokenServiceUnavailableError, RegistryUnreachableError):
            raise  # down or busy: retried as it is
        except RegistryError as exc:
            if asked == scopes or (isinstance(exc, TokenRefusedError) and exc.status == 401 and self._credentials):
                raise  # with credentials, a 401 refuses them: asking again would only count another failed login
            # The spec makes a partial grant no error, but a token service may refuse
            # a request of many scopes (a 400, a URL too long, a 403 for one of them;
            # GHCR's anonymous realm a 401 for a repository it does not know).
            log.info("%s: token service %s refused %d scopes at once (%s); asking one repository at a time",
                     self.registry, realm, len(asked), exc)
            self._share_tokens = False
            key = (realm, service, scopes, self._identity)
            return key, self._fetch_token(key, scopes)

    def _with_expected(self, realm: str, service: str, scopes: Tuple[str, ...]) -> Tuple[str, ...]:
        with self._lock:
            expected = list(self._expected)
        asked = set(scopes)
        for scope in expected:
            if len(asked) >= MAX_SCOPES_PER_TOKEN:
                break
            if scope not in asked and self._cache.find(realm, service, self._identity, (scope,)) is None:
                asked.add(scope)
        return tuple(sorted(asked))

    def _check_realm(self, realm: str, request_url: Optional[str]) -> str:
        """The realm as an absolute URL, if its scheme may be used (the host is
        judged before each token request: `_judge_realm`)."""
        base = request_url or self._base_url
        resolved = urljoin(base, realm)
        parts, base_parts = urlsplit(resolved), urlsplit(base)
        if parts.scheme not in ("http", "https"):
            raise AuthenticationError(f"{self.registry}: token realm {resolved!r} is not an http(s) URL")
        if base_parts.scheme == "https" and parts.scheme == "http":
            raise AuthenticationError(f"{self.registry}: refusing plain-http token realm {resolved!r} for an https registry")
        return resolved

    def _judge_realm(self, realm: str) -> None:
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

    def _fetch_token(self, key: TokenKey, needed: Iterable[str]) -> str:
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
            body = response.json()
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
        self._cache.put(key, token, _parse_issued_at(body.get("issued_at"), received), expires_in, covers)
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
