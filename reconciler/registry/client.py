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

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional, Tuple

import httpx

from ..errors import (
    IntegrityError,
    NotFoundError,
    ReconcilerError,
    RegistryError,
    TransferError,
)
from . import USER_AGENT
from .addresses import HostRule, pin_connections
from .auth import Authenticator, TokenCache
from .bearer import RegistryAuth, request_headers
from .blobs import BlobFetch
from .credentials import Credentials
from .manifest import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Manifest,
    parse_manifest,
)
from .redirects import RedirectingSender
from .reference import DOCKER_HUB, DOCKER_HUB_API_HOST, is_valid_digest
from .refusals import refusal
from .retry import Backoff, RetryPolicy, parse_retry_after
from .stats import TransferStats
from .tags import MAX_TAG_PAGE, TagPager
from .throttle import HostThrottle
from .transport import RetryBudget, RetryingTransport, TokenHttp

__all__ = ["MAX_TAG_PAGE", "FetchedManifest", "ManifestHead", "RegistryClient", "RetryPolicy", "TransferStats",
           "parse_retry_after"]

log = logging.getLogger(__name__)



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
        self._hosts = HostRule(host, private_realms)
        if self._owns_http:
            pin_connections(self._http, self._hosts)
        self.stats = TransferStats()
        # The layers, outermost first: auth (bearer.RegistryAuth, per request,
        # over the shared Authenticator), retries, redirects; token requests
        # share the host's throttle and backoff.
        self._throttle = HostThrottle(clock, sleep)
        self._backoff = Backoff(registry, retry, self._throttle, self.stats, clock, sleep)
        self._auth = Authenticator(registry, self.base_url, TokenHttp(self._http, self._throttle), credentials,
                                   token_cache or TokenCache(clock), clock, private_realms, hosts=self._hosts)
        self._sender = RedirectingSender(registry, self.base_url, self._http, self._hosts)
        self._transport = RetryingTransport(registry, self._sender, retry, self._throttle, self._backoff, clock)
        self._slots = threading.BoundedSemaphore(max(1, max_concurrency))
        # Until one request has had its answer, others wait: they would all be
        # refused (401) and each ask for a token, where one challenge and one
        # token serve them all.
        self._first_contact = threading.Lock()
        self._contacted = False

    @property
    def rate_limit_remaining(self) -> Optional[int]:
        """The registry's last `RateLimit-Remaining`, if it sends one (Docker Hub)."""
        return self._transport.rate_limit.remaining

    @property
    def rate_limit_limit(self) -> Optional[int]:
        """The registry's last `RateLimit-Limit`, if it sends one."""
        return self._transport.rate_limit.limit

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

    def backoff(self, attempt: int, what: str) -> bool:
        """Sleep before retry `attempt + 1` (retry.Backoff)."""
        return self._backoff.wait(attempt, what)

    @property
    def slots(self) -> threading.BoundedSemaphore:
        """Held while a request (or a whole blob transfer) is in flight: `max_concurrency` per host."""
        return self._slots

    def request(self, method: str, url: str, repository: str, *, headers: Optional[Dict[str, str]] = None,
                stream: bool = False, what: str = "request") -> httpx.Response:
        """A request needing pull access to `repository` (see `_request`)."""
        return self._request(method, url, self._scopes(repository), headers=headers, stream=stream, what=what)

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
        """One logical request: the auth flow (bearer.RegistryAuth) answers 401s,
        the transport below it retries, on one budget of attempts."""
        self._throttle.wait()
        auth = RegistryAuth(self._auth, tuple(scopes), what, self._sender.on_registry, self.retry, self._backoff)
        flow = auth.sync_auth_flow(httpx.Request(method, url, headers={"User-Agent": USER_AGENT, **(headers or {})}))
        request = next(flow)
        budget = RetryBudget()
        while True:
            response = self._transport.send(method, url, request_headers(request), stream=stream, what=what,
                                            budget=budget)
            try:
                request = flow.send(response)
            except StopIteration:
                return response

    @staticmethod
    def _scopes(repository: str) -> Tuple[str]:
        return (f"repository:{repository}:pull",)

    def fail(self, response: httpx.Response, what: str, repository: str = "") -> ReconcilerError:
        """The specific error for a final answer that is not a success (see refusals.py)."""
        return refusal(self.registry, response, what, repository=repository,
                       on_registry=self._sender.on_registry(str(response.url)))

    # -- manifests ---------------------------------------------------------

    def head_manifest(self, repository: str, reference: str) -> Optional[ManifestHead]:
        """HEAD a manifest: the digest the tag points at now.

        Returns None when the HEAD fails other than with 404 (405, or 403
        from some mirrors and CDNs), so the caller falls back to GET. A HEAD
        does not count against Docker Hub's pull limit.
        """
        # A HEAD answered 404 means what a GET would say; any other failure (403 from
        # mirrors and CDNs, 405, 400) is asked again with GET, as docker does. (A 401
        # never comes back: it is answered, or raised, on the way.)
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        what = f"HEAD {repository}:{reference}"
        with self.slots:
            response = self._request("HEAD", url, self._scopes(repository), headers={"Accept": MANIFEST_ACCEPT}, what=what)
        self.stats.add(manifest_heads=1)
        if response.status_code != 200:
            if response.status_code == 404:
                raise self.fail(response, what, repository)
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
        asked = expected_digest if by_digest and expected_digest else reference
        try:
            response, raw = self._get_manifest_body(repository, asked, what)
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
        with self.slots:
            response = self._request("GET", url, self._scopes(repository), headers={"Accept": MANIFEST_ACCEPT},
                                     stream=True, what=what)
            try:
                if response.status_code != 200:
                    response.read()
                    raise self.fail(response, what, repository)
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

    # -- tags and blobs ----------------------------------------------------

    def list_tags(self, repository: str, *, page_size: int = 100, max_pages: int = 1000) -> List[str]:
        """Every tag of `repository`, following `Link` pagination (tags.TagPager).

        `n` is never above MAX_TAG_PAGE, and a first page refusing it is asked
        again with the registry's limit, or without `n`. A `Link` is followed
        as given, never rebuilt. Links must stay on the same scheme and host;
        a repeated page or more than `max_pages` pages is an error. Any
        failure raises IncompleteListingError (or, on the first page, the
        specific error: not found, unauthorized, rate limited, unreachable):
        a partial list is never returned.
        """
        return TagPager(self, repository, page_size, max_pages).run()

    def fetch_blob(self, repository: str, descriptor: Descriptor, sink: BinaryIO,
                   progress: Optional[Callable[[int], None]] = None) -> None:
        """Stream a blob into `sink` (a writable, seekable file), verifying its
        size and sha256 as it arrives. A broken transfer resumes with `Range`
        (a 206 with a matching `Content-Range`, else it restarts from zero).
        Raises IntegrityError when the bytes are not the promised ones; the
        bytes verified are the bytes as sent, whatever `Content-Encoding`
        says (blobs.py)."""
        BlobFetch(self, repository, descriptor, sink, progress).run()
