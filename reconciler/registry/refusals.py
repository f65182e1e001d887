"""What a registry's refusal means, as one specific error a site admin can act on.

A registry (or the network in front of it) can refuse in ways that need
different answers: a repository that does not exist, credentials that may
not pull it, a rate limit (and when to come back), a host name DNS does not
know, nothing listening on the port, a certificate that cannot be verified,
plain http where https was expected. Each gets its own exception class and
a message that names the host and says what to do.

Messages carry the registry's own error codes and text (the distribution
spec's `errors` body), never a credential: no request header is ever quoted.
"""

from __future__ import annotations

import datetime as _dt
import socket
import ssl
from typing import Iterator, List, Optional, Set, Tuple
from urllib.parse import urlsplit

import httpx

from .. import boundedjson
from ..errors import (
    AccessDeniedError,
    HostNotFoundError,
    ManifestNotFoundError,
    NotFoundError,
    RateLimitedError,
    ReconcilerError,
    RegistryConnectionRefusedError,
    RegistryError,
    RegistryTLSError,
    RepositoryNotFoundError,
    TransferError,
)

# OpenSSL's reasons when the peer answers a ClientHello with plain http
# (the wording moved between OpenSSL versions).
_PLAIN_HTTP_REASONS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
# What Go's net/http and nginx answer when plain http reaches their TLS port.
_HTTPS_PORT_PHRASES = ("http request to an https server", "plain http request was sent to https port")
_MAX_DETAIL = 300


def error_codes(response: httpx.Response) -> List[Tuple[str, str]]:
    """The (code, message) pairs of a distribution-spec error body; [] when the
    body is not one (HTML from a proxy, empty, not read yet)."""
    try:
        body = boundedjson.loads(response.content)
    except (ValueError, httpx.ResponseNotRead, UnicodeDecodeError):
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [(str(e.get("code") or ""), str(e.get("message") or "")) for e in errors if isinstance(e, dict)]


def _detail(codes: List[Tuple[str, str]], limit: int = _MAX_DETAIL) -> str:
    text = "; ".join(f"{code}: {message}" if message else code for code, message in codes if code or message)
    return text[:limit]


def error_detail(response: httpx.Response, limit: int = _MAX_DETAIL) -> str:
    """`CODE: message; …` of an error body (read), at most `limit` characters: the registry's own words."""
    return _detail(error_codes(response), limit)


def _body_text(response: httpx.Response) -> str:
    try:
        return response.content[:2000].decode("utf-8", "replace").lower()
    except httpx.ResponseNotRead:
        return ""


def retry_at_text(seconds: float, now: float) -> str:
    """`2026-11-28T09:00:00Z (in 3600 s)`: when a wait ends, for messages."""
    at = _dt.datetime.fromtimestamp(now + seconds, _dt.timezone.utc).replace(microsecond=0)
    return f"{at.isoformat().replace('+00:00', 'Z')} (in {seconds:.0f} s)"


def refusal(registry: str, response: httpx.Response, what: str, *, repository: str = "",
            on_registry: bool = True) -> ReconcilerError:
    """The error for a final answer that is not a success (the body read)."""
    status = response.status_code
    codes = error_codes(response)
    names = {code.upper() for code, _ in codes}
    detail = _detail(codes)
    source = "" if on_registry else f" from {response.url.host}"
    head = f"{registry}: {what}: HTTP {status}{source}" + (f" ({detail})" if detail else "")
    if status == 404:
        if "NAME_UNKNOWN" in names:
            return RepositoryNotFoundError(
                f"{head}: the registry has no repository {repository or '(this one)'!r}; "
                "check the source in the watchlist")
        if "MANIFEST_UNKNOWN" in names:
            return ManifestNotFoundError(f"{head}: {repository or 'the repository'} has no such tag or manifest")
        if "BLOB_UNKNOWN" in names:
            return NotFoundError(f"{head}: the registry lost a blob that its manifest names; it is retried next cycle")
        return NotFoundError(f"{head} (not found: check the repository name and tag, and that the credentials "
                             "may see it)")
    if status == 403 or "DENIED" in names:
        return AccessDeniedError(f"{head}: access denied; the credentials in use may not pull "
                                 f"{repository or 'this repository'} (check the account's permissions)")
    # No 401 or 429 comes here: the client answers or retries them, and raises when that fails.
    if "TOOMANYREQUESTS" in names:
        return RateLimitedError(f"{head}: rate limited; retried next cycle")
    if status == 400 and any(p in _body_text(response) for p in _HTTPS_PORT_PHRASES):
        return RegistryError(f"{registry}: {urlsplit(str(response.url)).netloc} serves https on that port, but the "
                             f"watchlist says insecure = true (plain http) for it; remove insecure = true")
    return RegistryError(head)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes (or, without one, its context), each once."""
    seen: Set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def unreachable(registry: str, url: str, exc: httpx.TransportError, what: str,
                attempts: Optional[int] = None) -> TransferError:
    """The error for a request that got no HTTP answer: DNS, refused, TLS, timeout.

    httpx raises ConnectError for the first three; the socket or ssl error
    that says which is in its cause chain (httpcore wraps them once more)."""
    parts = urlsplit(url)
    host = parts.hostname or parts.netloc
    port = parts.port or (443 if parts.scheme == "https" else 80)
    tried = f" (after {attempts} attempts)" if attempts and attempts > 1 else ""
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return HostNotFoundError(
                f"{registry}: {what}: cannot resolve host {host} (DNS): {cause.strerror or cause}{tried}; "
                "check the name and this machine's DNS")
        if isinstance(cause, ssl.SSLCertVerificationError):
            return RegistryTLSError(
                f"{registry}: {what}: the TLS certificate of {host} cannot be verified "
                f"({cause.verify_message or cause.reason}); if it is signed by a private CA, point SSL_CERT_FILE "
                "at a bundle that includes it (insecure = true is only for registries that serve plain http)")
        if isinstance(cause, ssl.SSLError):
            if (cause.reason or "").upper() in _PLAIN_HTTP_REASONS:
                return RegistryTLSError(
                    f"{registry}: {what}: {host}:{port} answered in plain http, not TLS; if this registry serves "
                    f'plain http, set insecure = true under [registries."{registry}"] in the watchlist')
            return RegistryTLSError(f"{registry}: {what}: the TLS handshake with {host}:{port} failed "
                                    f"({cause.reason or cause})")
        if isinstance(cause, ConnectionRefusedError):
            return RegistryConnectionRefusedError(
                f"{registry}: {what}: {host}:{port} refused the connection{tried}; is the registry running, "
                "and is the port right?")
    if isinstance(exc, httpx.TimeoutException):
        return TransferError(f"{registry}: {what}: {host} did not answer in time ({type(exc).__name__}){tried}")
    return TransferError(f"{registry}: {what} failed{tried}: {type(exc).__name__}: {exc}")


def retry_is_useless(error: BaseException, attempt: int = 1) -> bool:
    """A transport failure that no (further) retry within the cycle can mend: TLS
    configuration at once; a name that does not resolve after a second try (a
    resolver blip passes, a wrong or offline host does not, and five tries with
    backoff made a dry run against an unreachable Docker Hub take 15 s a tag)."""
    if isinstance(error, HostNotFoundError):
        return attempt >= 2
    return isinstance(error, RegistryTLSError)
