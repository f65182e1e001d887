"""Registry authentication: Basic, and Bearer tokens from the registry's token service.

This module keeps the learned challenge and the rules of sharing tokens
(`Authenticator`); tokens.py caches the tokens, token_service.py asks the
realm for them, and bearer.py answers each request's 401s with this.

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

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import AuthenticationError, RegistryError, RegistryUnreachableError, TokenServiceUnavailableError
from .addresses import HostRule
from .challenge import Challenge, MalformedChallengeError, parse_challenges, pick_challenge
from .credentials import Credentials
from .token_service import TokenRefusedError, TokenService, TokenServiceBusyError, credentials_who
from .tokens import TokenCache, TokenKey, granted_scopes
from .transport import TokenHttp

# Re-exported: the token cache and the errors of token requests live in
# tokens.py and token_service.py; callers and tests import them from here.
__all__ = ["MAX_SCOPES_PER_TOKEN", "AuthState", "Authenticator", "TokenCache", "TokenKey", "TokenRefusedError",
           "TokenServiceBusyError", "granted_scopes", "pull_scopes"]

log = logging.getLogger(__name__)

# At most this many scopes asked in one token request: each granted repository
# is a claim in the token (Docker Hub's carry ~130 bytes each), and the token
# travels in every request's Authorization header, where 8 KB is a common
# limit of a header line (nginx's large_client_header_buffers).
MAX_SCOPES_PER_TOKEN = 20
# Refusals of shared tokens (for scopes they were asked for) after which a
# registry's tokens are no longer shared.
SHARED_REFUSALS_BEFORE_GIVING_UP = 3

# A repository name in the distribution spec's grammar (no `:`, so a scope we
# ask for always reads as type:name:actions).
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_NAME = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")


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
        self._base_url = base_url.rstrip("/") + "/v2/"
        self._tokens = TokenService(registry, http, credentials, cache,
                                    clock, hosts or HostRule(urlsplit(base_url).netloc, private_realms))
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
        return credentials_who(self._credentials)

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
        self._tokens.judge_realm(realm)
        asked = self._with_expected(realm, service, scopes) if share and self._share_tokens else scopes
        key: TokenKey = (realm, service, asked, self._identity)
        try:
            return key, self._tokens.fetch(key, scopes)
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
            return key, self._tokens.fetch(key, scopes)

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
        judged before each token request: TokenService.judge_realm)."""
        base = request_url or self._base_url
        resolved = urljoin(base, realm)
        parts, base_parts = urlsplit(resolved), urlsplit(base)
        if parts.scheme not in ("http", "https"):
            raise AuthenticationError(f"{self.registry}: token realm {resolved!r} is not an http(s) URL")
        if base_parts.scheme == "https" and parts.scheme == "http":
            raise AuthenticationError(
                f"{self.registry}: refusing plain-http token realm {resolved!r} for an https registry")
        return resolved
