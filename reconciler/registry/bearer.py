"""The registry's auth as an `httpx.Auth`: challenges, tokens and 401 rounds for one request.

Its `auth_flow` generator sends the header the learned challenge calls for
(auth.Authenticator), and answers each 401 of the registry's own origin with
a new one, at most twice (Harbor: a rejected token, then a bare retry, then a
fresh token). A 401 after a fresh login, or from a storage host a redirect
led to, is final. The retry layer below it (transport.py) sees only the
requests the flow yields.
"""

from __future__ import annotations

from typing import Callable, Dict, Generator, Tuple

import httpx

from ..errors import (
    AuthenticationError,
    RegistryUnreachableError,
    TokenServiceUnavailableError,
    TransferError,
)
from .auth import Authenticator, AuthState, TokenServiceBusyError
from .refusals import error_detail, retry_is_useless
from .retry import Backoff, RetryPolicy
from .transport import read_small

# At most this many 401s answered within one request (Harbor: a rejected
# token, then a bare retry, then a fresh token).
MAX_AUTH_ROUNDS = 2


class RegistryAuth(httpx.Auth):
    """The auth of one request needing `scopes` (one instance per request: the
    scopes differ; the tokens and the learned challenge live in the shared
    Authenticator)."""

    def __init__(self, authenticator: Authenticator, scopes: Tuple[str, ...], what: str, *, to_registry: bool,
                 on_registry: Callable[[str], bool], policy: RetryPolicy, backoff: Backoff) -> None:
        """`to_registry`: the request is for the registry's own origin (only
        then does it start with credentials); `on_registry` judges where a 401
        came from."""
        self._authenticator = authenticator
        self._to_registry = to_registry
        self._registry = authenticator.registry
        self._scopes = scopes
        self._what = what
        self._on_registry = on_registry
        self._policy = policy
        self._backoff = backoff

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Yield the request with the header to send; after a 401, again with the answer to it."""
        authenticator, scopes = self._authenticator, self._scopes
        state = self._authorized(lambda: authenticator.authorize(scopes)) if self._to_registry else AuthState()
        fresh = False  # `state` was obtained in answer to a 401 of this very request
        rounds = 0
        while True:
            _set_authorization(request, state)
            response = yield request
            if response.status_code != 401:
                return
            self._check_unanswerable(response, fresh, rounds)
            rejected = state
            # Called at once, in this round: the loop's later values are never seen.
            state = self._authorized(
                lambda: authenticator.handle_unauthorized(response, scopes, rejected))  # noqa: B023
            rounds += 1
            fresh = state.new_login

    def _check_unanswerable(self, response: httpx.Response, fresh: bool, rounds: int) -> None:
        """Close a 401; raise when it is not the registry's to answer, or answered enough."""
        read_small(response)  # the registry's reason, for the message
        response.close()
        if not self._on_registry(str(response.url)):
            # A storage host (a signed URL that expired or was refused): its
            # challenge is not the registry's to answer.
            raise TransferError(
                f"{self._registry}: {self._what}: {response.url.host}, where the registry redirected us, answered "
                "HTTP 401 (an expired or refused signed URL?); registry credentials are never sent there, "
                "so the download failed"
            )
        if fresh or rounds >= MAX_AUTH_ROUNDS:
            detail = error_detail(response)
            raise AuthenticationError(
                f"{self._registry} refused {self._authenticator.who} for {self._what} (HTTP 401 after a fresh login"
                f"{': ' + detail if detail else ''}): the repository does not exist, or the credentials "
                "may not pull it (Docker Hub answers both alike); check the repository name and the credentials"
            )

    def _authorized(self, get: Callable[[], AuthState]) -> AuthState:
        """An Authorization header, retrying a token service that is down,
        overloaded (honouring its `Retry-After`) or unreachable (but not one
        whose TLS certificate cannot be verified)."""
        attempt = 0
        while True:
            try:
                return get()
            except (TokenServiceUnavailableError, RegistryUnreachableError) as exc:
                attempt += 1
                if retry_is_useless(exc, attempt) or attempt >= self._policy.attempts:
                    raise
                busy = exc if isinstance(exc, TokenServiceBusyError) else None
                self._backoff.wait(attempt, f"the token for {self._what}", busy.status if busy else None,
                                   busy.retry_after if busy else None)


def _set_authorization(request: httpx.Request, state: AuthState) -> None:
    """Send `state`'s header, or none."""
    if state.header:
        request.headers["Authorization"] = state.header
    elif "authorization" in request.headers:
        del request.headers["Authorization"]


def request_headers(request: httpx.Request) -> Dict[str, str]:
    """The headers the flow chose, as given (not the `Host` httpx.Request adds)."""
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in request.headers.raw
            if key.lower() != b"host"}
