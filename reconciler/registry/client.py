"""An OCI distribution API client over httpx.

One `RegistryClient` per registry host, shared by every thread that talks to
it. It answers auth challenges, retries transient failures with jittered
exponential backoff (honouring `Retry-After`, and making every request to
the host wait when one is asked to), follows redirects without leaking
`Authorization` to other hosts, verifies every manifest and blob against its
digest, and resumes broken blob transfers with `Range`.

Credentials go only to the registry's own origin: a 401 from anywhere else
(a storage host a blob was redirected to) is a failed download, never a
challenge to answer.

Every refusal becomes one specific error (refusals.py): a missing
repository, denied access, a rate limit with when to retry, a host DNS
cannot resolve, a refused connection, a TLS failure. Blobs are verified
over the bytes as sent, whatever `Content-Encoding` claims.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from ..errors import (
    AuthenticationError,
    IncompleteListingError,
    IntegrityError,
    NotFoundError,
    RateLimitedError,
    ReconcilerError,
    RegistryError,
    RegistryUnreachableError,
    TokenServiceUnavailableError,
    TransferError,
)
from . import USER_AGENT
from .addresses import HostRule, host_port, pin_connections
from .auth import Authenticator, AuthState, TokenCache, TokenServiceBusyError
from .credentials import Credentials
from .links import next_link
from .manifest import MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Descriptor, Manifest, parse_manifest
from .reference import DOCKER_HUB, DOCKER_HUB_API_HOST, is_valid_digest
from .refusals import error_codes, error_detail, refusal, retry_at_text, retry_is_useless, unreachable
from .throttle import HostThrottle

log = logging.getLogger(__name__)

_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 10
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# A HEAD answered 404 means what a GET would say; any other failure (403 from
# mirrors and CDNs, 405, 400) is asked again with GET, as docker does. (A 401
# never comes back: it is answered, or raised, on the way.)
# At most this many 401s answered within one request (Harbor: a rejected
# token, then a bare retry, then a fresh token).
_MAX_AUTH_ROUNDS = 2
# The largest tag page we ask for: the OCI distribution spec's implementers
# note (most registries serve at least 1000), and what ECR and distribution
# >= 3.1 refuse beyond (HTTP 400).
MAX_TAG_PAGE = 1000
# Error codes of a registry refusing the `n` we asked for: distribution's
# PAGINATION_NUMBER_INVALID, the spec's TAG_LIMIT_EXCEEDED, ECR's UNSUPPORTED
# ("maxResults ... less than or equal to 1000").
_PAGE_SIZE_REFUSALS = {"PAGINATION_NUMBER_INVALID", "TAG_LIMIT_EXCEEDED", "UNSUPPORTED"}


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


def _parse_rate_limit(value: Optional[str]) -> Optional[int]:
    """`20;w=21600` -> 20."""
    if not value:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


def _window(value: Optional[str]) -> str:
    """`100;w=21600` -> ` per 21600 s window`: how long a spent quota may take to refill."""
    match = re.search(r";\s*w=(\d+)", value or "")
    return f" per {match.group(1)} s window: it refills within that time" if match else ""


def _tag_limit(response: httpx.Response, asked: Optional[int]) -> Optional[int]:
    """The page size to ask next after `asked` was refused: the registry's
    `OCI-Tag-Limit` when it is smaller, else None (ask without `n`: the
    spec's note says such a request gets every tag, or the limit)."""
    limit = (response.headers.get("oci-tag-limit") or "").strip()
    if limit.isdigit() and 0 < int(limit) < (asked or MAX_TAG_PAGE + 1):
        return int(limit)
    return None


def _content_coding(response: httpx.Response) -> Optional[str]:
    """The response's Content-Encoding, lower case, or None for none or identity."""
    codings = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c and c != "identity"]
    return ", ".join(codings) or None


def _read_small(response: httpx.Response) -> None:
    """Read an error body for its message; a broken one is left unread (the
    message then goes without the registry's reason)."""
    try:
        response.read()
    except httpx.HTTPError:
        pass


def _failed_url(exc: httpx.TransportError, default: str) -> str:
    """The URL of the request that failed (httpx raises RuntimeError when it has none)."""
    try:
        return str(exc.request.url)
    except RuntimeError:
        return default


@dataclass(frozen=True)
class ManifestHead:
    """What a HEAD on a manifest told us."""

    digest: Optional[str]
    media_type: Optional[str]
    size: Optional[int]


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest body, verified against its digest."""

    digest: str
    media_type: str
    raw: bytes = field(repr=False)

    def parse(self) -> Manifest:
        """The parsed manifest or index."""
        return parse_manifest(self.raw, self.media_type)


@dataclass
class TransferStats:
    """Counters of what this client asked the registry for. Thread-safe."""

    manifest_heads: int = 0
    manifest_gets: int = 0
    blob_gets: int = 0
    blob_bytes: int = 0
    tag_pages: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class _ShortBody(Exception):
    """The body ended before the promised size: resume it."""


class RegistryClient:
    """The distribution API of one registry host."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        credentials: Optional[Credentials] = None,
        http: Optional[httpx.Client] = None,
        max_concurrency: int = 4,
        retry: RetryPolicy = RetryPolicy(),
        token_cache: Optional[TokenCache] = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        private_realms: Iterable[str] = (),
    ) -> None:
        """`private_realms`: host or host:port of token services on a private
        address (other than the registry's) that may be asked for tokens."""
        self.registry = registry
        host = DOCKER_HUB_API_HOST if registry == DOCKER_HUB else registry
        self.base_url = f"{'http' if insecure else 'https'}://{host}"
        self.retry = retry
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=httpx.Timeout(retry.timeout, connect=15.0), follow_redirects=False)
        self._origin = urlsplit(self.base_url)[:2]
        self._hosts = HostRule(host, private_realms)
        if self._owns_http:
            pin_connections(self._http, self._hosts)
        self._auth = Authenticator(registry, self.base_url, self._http, credentials, token_cache or TokenCache(clock), clock,
                                   private_realms, hosts=self._hosts)
        self._slots = threading.BoundedSemaphore(max(1, max_concurrency))
        # Until one request has had its answer, others wait: they would all be
        # refused (401) and each ask for a token, where one challenge and one
        # token serve them all.
        self._first_contact = threading.Lock()
        self._contacted = False
        self._sleep = sleep
        self._clock = clock
        self._throttle = HostThrottle(clock, sleep)
        self.stats = TransferStats()
        self.rate_limit_remaining: Optional[int] = None
        self.rate_limit_limit: Optional[int] = None

    def close(self) -> None:
        """Close the HTTP connections this client opened."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect_repositories(self, repositories: Iterable[str]) -> None:
        """Repositories this client is about to read: one token request asks
        for several of them, where the token service grants that."""
        self._auth.expect(scope for repository in repositories for scope in self._scopes(repository))

    # -- transport ---------------------------------------------------------

    def _backoff(self, attempt: int, what: str, status: Optional[int] = None, retry_after: Optional[str] = None) -> bool:
        """Sleep before retry `attempt + 1`. Returns True when the wait was the
        registry's `Retry-After`, which then holds every request to this host."""
        delay = min(self.retry.max_delay, self.retry.base_delay * (2 ** (attempt - 1)))
        delay *= random.uniform(0.75, 1.25)
        asked = parse_retry_after(retry_after, self._clock())
        if asked is not None:
            if asked > self.retry.max_retry_after:
                raise RateLimitedError(
                    f"{self.registry} asks to wait {asked:.0f}s before {what} (HTTP {status}): retry after "
                    f"{retry_at_text(asked, self._clock())}; left for the next cycle"
                )
            delay = max(asked, 0.0)
            self._throttle.hold(delay)
        self.stats.add(retries=1)
        log.info("retrying %s on %s in %.1fs (attempt %d of %d)", what, self.registry, delay, attempt + 1, self.retry.attempts)
        self._sleep(delay)
        return asked is not None

    def _on_registry(self, url: str) -> bool:
        """Whether `url` is on the registry's own origin (the only one that gets credentials)."""
        return urlsplit(url)[:2] == self._origin

    def _judge_redirect(self, url: str, target: str) -> None:
        """Refuse a redirect off the registry's origin to an internal address
        (in any spelling, or a name resolving to one) that is not the
        registry's own nor allowed in `token_realms`, unless the registry is
        itself on an internal address: a registry on the internet must not
        lead the service to its own network (127.0.0.1, 169.254.169.254).
        The rule of token realms (addresses.HostRule), judged by what the
        target resolves to now; no credentials follow a redirect either way."""
        inside = self._hosts.foreign_internal(target, inward_ok=True)
        if inside:
            path = ascii(urlsplit(url).path)[1:-1]  # a redirect's path is the registry's text
            raise RegistryError(
                f"{self.registry}: refusing the redirect of {path} to {host_port(target)}: a private "
                f"address ({', '.join(str(ip) for ip in inside)}), and the registry is on a public one; if that host "
                f'serves this registry\'s storage, allow it in the watchlist: token_realms = ["{host_port(target)}"] '
                f'under [registries."{self.registry}"]'
            )

    def _send_once(self, method: str, url: str, headers: Dict[str, str], stream: bool) -> httpx.Response:
        """One request, following redirects: never to http from https, never
        to another host's internal address (`_judge_redirect`), and never
        carrying Authorization off the registry's origin (S3, GCS and Azure
        SAS URLs reject it, and it is not theirs to see). The response's
        `url` is the one that answered."""
        for _ in range(_MAX_REDIRECTS + 1):
            request = self._http.build_request(method, url, headers=headers)
            response = self._http.send(request, stream=stream, follow_redirects=False)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECT_STATUSES or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                raise RegistryError(f"{self.registry}: refusing redirect from https to {urlsplit(target).scheme} ({urlsplit(target).netloc})")
            if not self._on_registry(target):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                self._judge_redirect(url, target)
            url = target
        raise RegistryError(f"{self.registry}: more than {_MAX_REDIRECTS} redirects for {urlsplit(url).path}")

    def _request(self, method: str, url: str, scopes: Iterable[str], *, headers: Optional[Dict[str, str]] = None,
                 stream: bool = False, what: str = "request") -> httpx.Response:
        """Send with auth and retries. Returns any final response that is not
        401, 429 or 5xx; the caller interprets (and, if streaming, closes) it."""
        if not self._contacted:
            with self._first_contact:
                if not self._contacted:
                    try:
                        return self._send(method, url, scopes, headers=headers, stream=stream, what=what)
                    finally:
                        self._contacted = True
        return self._send(method, url, scopes, headers=headers, stream=stream, what=what)

    def _send(self, method: str, url: str, scopes: Iterable[str], *, headers: Optional[Dict[str, str]],
              stream: bool, what: str) -> httpx.Response:
        scopes = tuple(scopes)
        self._throttle.wait()
        on_registry = self._on_registry(url)
        auth = self._authorized(lambda: self._auth.authorize(scopes), what) if on_registry else AuthState()
        fresh = False  # `auth` was obtained in answer to a 401 of this very request
        rounds = 0
        attempt = 0
        waited = True
        while True:
            if not waited:
                self._throttle.wait()  # another request may have been asked to hold off
            waited = False
            sent = {"User-Agent": USER_AGENT, **(headers or {})}
            if auth.header:
                sent["Authorization"] = auth.header
            try:
                response = self._send_once(method, url, sent, stream)
            except httpx.TransportError as exc:
                attempt += 1
                # The host that failed may be a storage host a redirect led to.
                failed_url = _failed_url(exc, url)
                error = unreachable(self.registry, failed_url, exc, what, attempt)
                if retry_is_useless(error, attempt) or attempt >= self.retry.attempts:
                    raise error from None
                waited = self._backoff(attempt, what)
                continue
            self._record_rate_limit(response)
            if response.status_code == 401:
                _read_small(response)  # the registry's reason, for the message
                response.close()
                if not self._on_registry(str(response.url)):
                    # A storage host (a signed URL that expired or was refused): its
                    # challenge is not the registry's to answer.
                    raise TransferError(
                        f"{self.registry}: {what}: {response.url.host}, where the registry redirected us, answered "
                        "HTTP 401 (an expired or refused signed URL?); registry credentials are never sent there, "
                        "so the download failed"
                    )
                if fresh or rounds >= _MAX_AUTH_ROUNDS:
                    detail = error_detail(response)
                    raise AuthenticationError(
                        f"{self.registry} refused {self._auth.who} for {what} (HTTP 401 after a fresh login"
                        f"{': ' + detail if detail else ''}): the repository does not exist, or the credentials "
                        "may not pull it (Docker Hub answers both alike); check the repository name and the credentials"
                    )
                rejected = auth
                auth = self._authorized(lambda: self._auth.handle_unauthorized(response, scopes, rejected), what)
                rounds += 1
                fresh = auth.new_login
                continue
            if response.status_code in _RETRY_STATUSES:
                if response.status_code == 429:
                    _read_small(response)  # a small JSON body with the registry's reason
                response.close()
                if response.status_code == 429 and not response.headers.get("retry-after") and \
                        _parse_rate_limit(response.headers.get("ratelimit-remaining")) == 0:
                    # A spent quota (Docker Hub's pull limit) does not come back within a cycle.
                    raise RateLimitedError(
                        f"{self.registry}: {what}: rate limit reached (HTTP 429{self._reason(response)}, "
                        f"RateLimit-Remaining 0 of {_parse_rate_limit(response.headers.get('ratelimit-limit')) or '?'}"
                        f"{_window(response.headers.get('ratelimit-limit'))}); left for the next cycle"
                    )
                attempt += 1
                if attempt >= self.retry.attempts:
                    if response.status_code == 429:
                        asked = parse_retry_after(response.headers.get("retry-after"), self._clock())
                        later = f"; retry after {retry_at_text(asked, self._clock())}" if asked is not None else ""
                        raise RateLimitedError(
                            f"{self.registry}: {what} still rate limited (HTTP 429{self._reason(response)}) after "
                            f"{attempt} attempts{later}; left for the next cycle")
                    raise TransferError(f"{self.registry}: {what} still failing with HTTP {response.status_code} after {attempt} attempts")
                waited = self._backoff(attempt, what, response.status_code, response.headers.get("retry-after"))
                continue
            return response

    def _authorized(self, get: Callable[[], AuthState], what: str) -> AuthState:
        """An Authorization header, retrying a token service that is down,
        overloaded (honouring its `Retry-After`) or unreachable (but not one
        whose TLS certificate cannot be verified)."""
        attempt = 0
        while True:
            try:
                return get()
            except (TokenServiceUnavailableError, RegistryUnreachableError) as exc:
                attempt += 1
                if retry_is_useless(exc, attempt) or attempt >= self.retry.attempts:
                    raise
                busy = exc if isinstance(exc, TokenServiceBusyError) else None
                self._backoff(attempt, f"the token for {what}", busy.status if busy else None,
                              busy.retry_after if busy else None)

    def _record_rate_limit(self, response: httpx.Response) -> None:
        remaining = _parse_rate_limit(response.headers.get("ratelimit-remaining"))
        if remaining is not None:
            self.rate_limit_remaining = remaining
            self.rate_limit_limit = _parse_rate_limit(response.headers.get("ratelimit-limit"))

    @staticmethod
    def _scopes(repository: str) -> Tuple[str]:
        return (f"repository:{repository}:pull",)

    @staticmethod
    def _reason(response: httpx.Response) -> str:
        """` TOOMANYREQUESTS: …`: the registry's own words, for messages."""
        text = error_detail(response, limit=200)
        return f" {text}" if text else ""

    def _fail(self, response: httpx.Response, what: str, repository: str = "") -> ReconcilerError:
        """The specific error for a final answer that is not a success (see refusals.py)."""
        return refusal(self.registry, response, what, repository=repository,
                       on_registry=self._on_registry(str(response.url)))

    # -- manifests ---------------------------------------------------------

    def head_manifest(self, repository: str, reference: str) -> Optional[ManifestHead]:
        """HEAD a manifest: the digest the tag points at now.

        Returns None when the HEAD fails other than with 404 (405, or 403
        from some mirrors and CDNs), so the caller falls back to GET. A HEAD
        does not count against Docker Hub's pull limit.
        """
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        what = f"HEAD {repository}:{reference}"
        with self._slots:
            response = self._request("HEAD", url, self._scopes(repository), headers={"Accept": MANIFEST_ACCEPT}, what=what)
        self.stats.add(manifest_heads=1)
        if response.status_code != 200:
            if response.status_code == 404:
                raise self._fail(response, what, repository)
            log.info("%s: %s answered HTTP %d; asking with GET instead", self.registry, what, response.status_code)
            return None
        digest = response.headers.get("docker-content-digest")
        if digest is not None and not is_valid_digest(digest):
            digest = None
        length = response.headers.get("content-length")
        media_type = (response.headers.get("content-type") or "").split(";", 1)[0].strip() or None
        return ManifestHead(digest, media_type, int(length) if length and length.isdigit() else None)

    def get_manifest(self, repository: str, reference: str, expected_digest: Optional[str] = None) -> FetchedManifest:
        """GET a manifest and verify its body: against the digest asked for, and
        against `Docker-Content-Digest` when the registry sends it.

        With `expected_digest` (what a HEAD said the tag points at) the
        manifest is fetched by that digest, so a tag moving in between is not
        an integrity error: the next cycle sees the move. A registry that
        answers 404 by digest (pull-through caches that know only the tag) is
        asked by tag, the body still checked against `expected_digest`."""
        what = f"manifest {repository}@{reference}" if reference.startswith("sha256:") else f"manifest {repository}:{reference}"
        by_digest = bool(expected_digest and is_valid_digest(expected_digest) and not reference.startswith("sha256:"))
        try:
            response, raw = self._get_manifest_body(repository, expected_digest if by_digest else reference, what)
        except NotFoundError:
            if not by_digest:
                raise
            log.info("%s: %s not found by digest %s; asking by tag", self.registry, what, expected_digest)
            response, raw = self._get_manifest_body(repository, reference, what)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        for claimed, source in (
            (reference if reference.startswith("sha256:") else None, "the requested digest"),
            (expected_digest, "the digest the tag pointed at"),
            (response.headers.get("docker-content-digest"), "Docker-Content-Digest"),
        ):
            if claimed and claimed.startswith("sha256:") and claimed != digest:
                raise IntegrityError(f"{self.registry}: {what}: body hashes to {digest}, not {claimed} ({source})")
        media_type = (response.headers.get("content-type") or "").split(";", 1)[0].strip()
        return FetchedManifest(digest, media_type, raw)

    def _get_manifest_body(self, repository: str, reference: str, what: str) -> Tuple[httpx.Response, bytes]:
        """One manifest GET: the (closed) response and its body, at most MAX_MANIFEST_BYTES."""
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        with self._slots:
            response = self._request("GET", url, self._scopes(repository), headers={"Accept": MANIFEST_ACCEPT},
                                     stream=True, what=what)
            try:
                if response.status_code != 200:
                    response.read()
                    raise self._fail(response, what, repository)
                body = bytearray()
                try:
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > MAX_MANIFEST_BYTES:
                            raise RegistryError(f"{self.registry}: {what} is larger than {MAX_MANIFEST_BYTES} bytes")
                except httpx.TransportError as exc:
                    raise TransferError(f"{self.registry}: {what}: transfer broken: {type(exc).__name__}") from None
            finally:
                response.close()
        self.stats.add(manifest_gets=1)
        return response, bytes(body)

    # -- tags --------------------------------------------------------------

    def list_tags(self, repository: str, *, page_size: int = 100, max_pages: int = 1000) -> List[str]:
        """Every tag of `repository`, following `Link` pagination.

        Registries page in their own ways, all of which work here: `n`/`last`
        with a `Link` (distribution), an opaque token in the `Link` (Quay's
        `next_page`, GHCR, ECR), everything in one page whatever `n` says
        (Docker Hub, GCR), pages capped below `n`, and `n` refused above a
        limit (ECR and distribution >= 3.1 above 1000; the spec's
        `OCI-Tag-Limit`): `n` is never above MAX_TAG_PAGE, and a first page
        refusing it is asked again with the registry's limit, or without `n`.
        A `Link` is followed as given, never rebuilt.

        Links must stay on the same scheme and host; a repeated page or more
        than `max_pages` pages is an error. Any failure raises
        IncompleteListingError (or, on the first page, the specific error:
        not found, unauthorized, rate limited, unreachable): a partial list is
        never returned.
        """
        base = f"{self.base_url}/v2/{repository}/tags/list"
        size: Optional[int] = max(1, min(page_size, MAX_TAG_PAGE))
        url: Optional[str] = f"{base}?{urlencode({'n': size})}"
        origin = urlsplit(base)[:2]
        seen: set = set()
        tags: List[str] = []
        known: set = set()
        pages = 0
        size_refused = False
        while url:
            if url in seen:
                raise IncompleteListingError(f"{self.registry}: tag listing of {repository} loops back to a page already read")
            if pages >= max_pages:
                raise IncompleteListingError(f"{self.registry}: tag listing of {repository} exceeds {max_pages} pages")
            seen.add(url)
            what = f"tag list of {repository} (page {pages + 1})"
            try:
                with self._slots:
                    response = self._request("GET", url, self._scopes(repository), what=what)
            except (RegistryError, IntegrityError) as exc:
                if pages == 0 and isinstance(exc, (NotFoundError, AuthenticationError, RateLimitedError,
                                                   RegistryUnreachableError)):
                    raise
                raise IncompleteListingError(f"{self.registry}: {what} failed, listing incomplete: {exc}") from None
            pages += 1
            self.stats.add(tag_pages=1)
            if response.status_code != 200:
                if pages == 1 and not size_refused and self._refuses_page_size(response):
                    # Ask the first page again, as the registry allows; the page it
                    # refused proves nothing about the tags.
                    size_refused, pages = True, 0
                    size = _tag_limit(response, size)
                    log.info("%s: %s refused n=%s (HTTP %d); asking with %s", self.registry, what,
                             urlsplit(url).query, response.status_code, f"n={size}" if size else "no n")
                    url = f"{base}?{urlencode({'n': size})}" if size else base
                    continue
                error = self._fail(response, what, repository)
                if pages == 1 and isinstance(error, (NotFoundError, AuthenticationError)):
                    raise error
                raise IncompleteListingError(f"{error}; listing incomplete") from None
            try:
                body = response.json()
                page = body.get("tags") or []
                if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                    raise ValueError("tags is not a list of strings")
            except (ValueError, AttributeError) as exc:
                raise IncompleteListingError(f"{self.registry}: {what} is not a tag list: {exc}") from None
            new_tags = [t for t in page if t not in known]
            known.update(new_tags)
            tags.extend(new_tags)
            target = next_link(response.headers.get_list("link"))
            if target:
                # Relative to the URL that answered, which a redirect (registry.k8s.io)
                # may have moved to another host; the link may stay there or come back.
                answered = str(response.url)
                url = urljoin(answered, target)
                if urlsplit(url)[:2] not in (urlsplit(answered)[:2], origin):
                    raise IncompleteListingError(
                        f"{self.registry}: tag listing of {repository} links to another host ({urlsplit(url).netloc}); refused"
                    )
            elif size and new_tags and len(page) == size:
                # No Link but exactly a full page: there may be more; continue after the
                # last tag. (A registry that ignores n, as distribution 2.8 and Docker Hub
                # do, returns more than n and needs no second request; one that ignores
                # `last` too answers a page already seen, which ends the listing.)
                url = f"{base}?{urlencode({'n': size, 'last': page[-1]})}"
            else:
                url = None
        return tags

    @staticmethod
    def _refuses_page_size(response: httpx.Response) -> bool:
        """A 400/413 that refuses the `n` we asked for (not the repository)."""
        if response.status_code not in (400, 413):
            return False
        if response.status_code == 413 or response.headers.get("oci-tag-limit"):
            return True
        return any(code.upper() in _PAGE_SIZE_REFUSALS for code, _ in error_codes(response))

    # -- blobs -------------------------------------------------------------

    def fetch_blob(self, repository: str, descriptor: Descriptor, sink: BinaryIO,
                   progress: Optional[Callable[[int], None]] = None) -> None:
        """Stream a blob into `sink` (a writable, seekable file), verifying its
        size and sha256 as it arrives. A broken transfer resumes with `Range`
        (a 206 with a matching `Content-Range`, else it restarts from zero).
        Raises IntegrityError when the bytes are not the promised ones.

        The bytes verified and stored are the bytes as sent, whatever
        `Content-Encoding` says: a blob's digest is over what the registry
        stores, and servers label gzip layers `gzip` or `x-gzip` (Apache's
        mime magic, S3 object metadata) without having compressed anything.
        httpx would decode `gzip` (not `x-gzip`) if we read decoded bytes.
        A server that really compresses on the fly, though asked for
        identity, sends bytes that do not match: that is a clear error."""
        url = f"{self.base_url}/v2/{repository}/blobs/{descriptor.digest}"
        what = f"blob {descriptor.digest[:19]} of {repository}"
        hasher = hashlib.sha256()
        written = 0
        breaks = 0
        encodings: List[str] = []  # Content-Encoding labels seen on the bytes we kept
        with self._slots:
            while True:
                # identity: a CDN compressing on the fly would change the byte
                # counts that Range resume relies on.
                headers = {"Accept-Encoding": "identity"}
                if written:
                    headers["Range"] = f"bytes={written}-"
                response = self._request("GET", url, self._scopes(repository), headers=headers, stream=True, what=what)
                try:
                    if response.status_code == 206 and written:
                        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                        if not match or int(match.group(1)) != written:
                            raise TransferError(f"{self.registry}: {what}: resume answered with a mismatched Content-Range")
                    elif response.status_code == 200:
                        if written:
                            log.info("%s: registry ignored Range; restarting %s from zero", self.registry, what)
                            sink.seek(0)
                            sink.truncate()
                            hasher, written, encodings = hashlib.sha256(), 0, []
                    else:
                        response.read()
                        raise self._fail(response, what, repository)
                    self.stats.add(blob_gets=1)
                    encoding = _content_coding(response)
                    if encoding and encoding not in encodings:
                        encodings.append(encoding)
                    try:
                        # Raw chunks as they arrive (never decoded, no re-chunking): bytes
                        # received before a connection breaks are kept, so the resume
                        # starts after them.
                        for chunk in response.iter_raw():
                            written += len(chunk)
                            if written > descriptor.size:
                                raise IntegrityError(f"{self.registry}: {what} is longer than its declared "
                                                     f"{descriptor.size} bytes{self._encoding_note(response, encodings)}")
                            hasher.update(chunk)
                            sink.write(chunk)
                            self.stats.add(blob_bytes=len(chunk))
                            if progress:
                                progress(len(chunk))
                        if written < descriptor.size:
                            if encoding:
                                # Not a broken transfer: a body of another length, as a
                                # server compressing on the fly sends. Resuming it would
                                # splice two encodings.
                                raise IntegrityError(
                                    f"{self.registry}: {what}: the body ended at {written} of {descriptor.size} "
                                    f"bytes{self._encoding_note(response, encodings)}")
                            raise _ShortBody()
                    except (httpx.TransportError, _ShortBody) as exc:
                        breaks += 1
                        if breaks >= self.retry.attempts:
                            raise TransferError(
                                f"{self.registry}: {what} broke off {breaks} times (at {written} of {descriptor.size} bytes)"
                            ) from None
                        log.info("%s: %s broke off at %d of %d bytes (%s); resuming", self.registry, what, written,
                                 descriptor.size, type(exc).__name__)
                        self._backoff(breaks, what)
                        continue
                finally:
                    response.close()
                break
        actual = "sha256:" + hasher.hexdigest()
        if actual != descriptor.digest:
            raise IntegrityError(f"{self.registry}: {what} hashes to {actual}, not "
                                 f"{descriptor.digest}{self._encoding_note(None, encodings)}; discarded")

    def _encoding_note(self, response: Optional[httpx.Response], encodings: List[str]) -> str:
        """Why the bytes may be wrong when a server labelled them with a Content-Encoding."""
        if not encodings:
            return ""
        host = f"{response.url.host} " if response is not None else ""
        return (f" ({host}sent them with Content-Encoding: {', '.join(encodings)} although identity was asked: a "
                "server compressing blobs on the fly changes their bytes; have it serve blobs unmodified)")
