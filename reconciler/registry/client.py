"""An OCI distribution API client over httpx: the thin front of the registry layers.

One `RegistryClient` per registry host, shared by every thread that talks to
it. Its public methods are the distribution API (manifests.py, tags.py,
blobs.py); every request goes down the same layers, in the manner of
go-containerregistry's transport wrappers:

- bearer.RegistryAuth (an `httpx.Auth`): challenges, tokens and 401 rounds,
  over auth.Authenticator (the learned challenge, the shared token cache);
- transport.RetryingTransport: 408, 429 and 5xx, transport failures,
  `Retry-After` and the jittered backoff (retry.Backoff), holding the host's
  throttle (throttle.HostThrottle), which token requests wait on too;
- redirects.RedirectingSender: redirects that never leak `Authorization`
  off the registry's origin nor lead to an internal address.

Credentials go only to the registry's own origin: a 401 from anywhere else
(a storage host a blob was redirected to) is a failed download, never a
challenge to answer. Every refusal becomes one specific error (refusals.py):
a missing repository, denied access, a rate limit with when to retry, a
host DNS cannot resolve, a refused connection, a TLS failure. Manifests and
blobs are verified against their digests; blobs over the bytes as sent,
whatever `Content-Encoding` claims.
"""

from __future__ import annotations

import threading
import time
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional, Tuple

import httpx

from ..errors import ReconcilerError
from . import USER_AGENT
from .addresses import HostRule, pin_connections
from .attachments import ReferrerList, list_referrers, small_blob, tagged_attachment
from .auth import Authenticator, TokenCache
from .bearer import RegistryAuth, request_headers
from .blobs import BlobFetch
from .credentials import Credentials
from .manifest import Descriptor
from .manifests import FetchedManifest, ManifestHead, get_manifest, head_manifest
from .redirects import RedirectingSender
from .reference import DOCKER_HUB, DOCKER_HUB_API_HOST
from .refusals import refusal
from .retry import Backoff, RetryPolicy, parse_retry_after
from .stats import TransferStats
from .tags import MAX_TAG_PAGE, TagPager
from .throttle import HostThrottle
from .transport import RetryBudget, RetryingTransport, TokenHttp

# Re-exported: callers and tests import these from here.
__all__ = ["MAX_TAG_PAGE", "FetchedManifest", "ManifestHead", "RegistryClient", "RetryPolicy", "TransferStats",
           "parse_retry_after"]


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

    # -- the session the manifests, tags and blobs modules use (session.RegistrySession)

    def backoff(self, attempt: int, what: str) -> bool:
        """Sleep before retry `attempt + 1` (retry.Backoff)."""
        return self._backoff.wait(attempt, what)

    @property
    def slots(self) -> threading.BoundedSemaphore:
        """Held while a request (or a whole blob transfer) is in flight: `max_concurrency` per host."""
        return self._slots

    def request(self, method: str, url: str, repository: str, *, headers: Optional[Dict[str, str]] = None,
                stream: bool = False, what: str = "request") -> httpx.Response:
        """Send a request needing pull access to `repository`, with auth and
        retries. Returns any final response that is not 401, 429 or 5xx; the
        caller interprets (and, if streaming, closes) it."""
        scopes = self._scopes(repository)
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
        auth = RegistryAuth(self._auth, tuple(scopes), what, to_registry=self._sender.on_registry(url),
                            on_registry=self._sender.on_registry, policy=self.retry, backoff=self._backoff)
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
        """HEAD a manifest: the digest the tag points at now (manifests.head_manifest).

        Returns None when the HEAD fails other than with 404 (405, or 403
        from some mirrors and CDNs), so the caller falls back to GET. A HEAD
        does not count against Docker Hub's pull limit.
        """
        return head_manifest(self, repository, reference)

    def get_manifest(self, repository: str, reference: str, expected_digest: Optional[str] = None) -> FetchedManifest:
        """GET a manifest and verify its body: against the digest asked for, and
        against `Docker-Content-Digest` when the registry sends it
        (manifests.get_manifest; by `expected_digest` when given, so a tag
        moving in between is not an integrity error)."""
        return get_manifest(self, repository, reference, expected_digest)

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

    # -- attachments (cosign's digest tags, OCI 1.1 referrers) -------------

    def get_attachment(self, repository: str, tag: str) -> Optional[FetchedManifest]:
        """The OCI manifest at a digest-derived tag (`sha256-<hex>.sig`), or
        None when there is none (attachments.tagged_attachment)."""
        return tagged_attachment(self, repository, tag)

    def list_referrers(self, repository: str, digest: str) -> ReferrerList:
        """The referrers of a manifest: the API, else the `sha256-<hex>` fallback index."""
        return list_referrers(self, repository, digest)

    def fetch_small_blob(self, repository: str, digest: str, size: int, limit: int) -> bytes:
        """A blob of at most `limit` bytes, in memory, verified."""
        return small_blob(self, repository, digest, size, limit)
