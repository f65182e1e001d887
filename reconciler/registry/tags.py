"""Tag listing: a pager over `/v2/<name>/tags/list` that copes with every registry's paging.

Registries page in their own ways, all of which work here: `n`/`last` with a
`Link` (distribution), an opaque token in the `Link` (Quay's `next_page`,
GHCR, ECR), everything in one page whatever `n` says (Docker Hub, GCR),
pages capped below `n`, and `n` refused above a limit (ECR and distribution
>= 3.1 above 1000; the spec's `OCI-Tag-Limit`). A partial list is never
returned: any failure raises.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Set, Tuple
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from .. import boundedjson
from ..errors import (
    AuthenticationError,
    IncompleteListingError,
    IntegrityError,
    NotFoundError,
    RateLimitedError,
    RegistryError,
    RegistryUnreachableError,
)
from .links import next_link
from .refusals import error_codes
from .session import RegistrySession

log = logging.getLogger(__name__)

# The largest tag page we ask for: the OCI distribution spec's implementers
# note (most registries serve at least 1000), and what ECR and distribution
# >= 3.1 refuse beyond (HTTP 400).
MAX_TAG_PAGE = 1000
# Error codes of a registry refusing the `n` we asked for: distribution's
# PAGINATION_NUMBER_INVALID, the spec's TAG_LIMIT_EXCEEDED, ECR's UNSUPPORTED
# ("maxResults ... less than or equal to 1000").
_PAGE_SIZE_REFUSALS = {"PAGINATION_NUMBER_INVALID", "TAG_LIMIT_EXCEEDED", "UNSUPPORTED"}


def _tag_limit(response: httpx.Response, asked: Optional[int]) -> Optional[int]:
    """The page size to ask next after `asked` was refused: the registry's
    `OCI-Tag-Limit` when it is smaller, else None (ask without `n`: the
    spec's note says such a request gets every tag, or the limit)."""
    limit = (response.headers.get("oci-tag-limit") or "").strip()
    if limit.isdigit() and 0 < int(limit) < (asked or MAX_TAG_PAGE + 1):
        return int(limit)
    return None


def refuses_page_size(response: httpx.Response) -> bool:
    """A 400/413 that refuses the `n` we asked for (not the repository)."""
    if response.status_code not in (400, 413):
        return False
    if response.status_code == 413 or response.headers.get("oci-tag-limit"):
        return True
    return any(code.upper() in _PAGE_SIZE_REFUSALS for code, _ in error_codes(response))


def _page_tags(response: httpx.Response, registry: str, what: str) -> List[str]:
    """The `tags` of one page's body, or IncompleteListingError."""
    try:
        body = boundedjson.loads(response.content)
        page = body.get("tags") or []
        if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
            raise ValueError("tags is not a list of strings")
    except (ValueError, AttributeError) as exc:
        raise IncompleteListingError(f"{registry}: {what} is not a tag list: {exc}") from None
    return page


class TagPager:
    """One listing of one repository's tags (used once: it keeps the pages seen)."""

    def __init__(self, session: RegistrySession, repository: str, page_size: int, max_pages: int) -> None:
        self._session = session
        self._registry = session.registry
        self._repository = repository
        self._max_pages = max_pages
        self._base = f"{session.base_url}/v2/{repository}/tags/list"
        self._origin = urlsplit(self._base)[:2]
        self._size: Optional[int] = max(1, min(page_size, MAX_TAG_PAGE))
        self._seen: Set[str] = set()
        self._known: Set[str] = set()
        self._tags: List[str] = []
        self._pages = 0
        self._size_refused = False

    def run(self) -> List[str]:
        """Every tag, in the registry's order, each once."""
        url: Optional[str] = f"{self._base}?{urlencode({'n': self._size})}"
        while url:
            if url in self._seen:
                raise IncompleteListingError(
                    f"{self._registry}: tag listing of {self._repository} loops back to a page already read")
            if self._pages >= self._max_pages:
                raise IncompleteListingError(
                    f"{self._registry}: tag listing of {self._repository} exceeds {self._max_pages} pages")
            self._seen.add(url)
            what = f"tag list of {self._repository} (page {self._pages + 1})"
            response = self._get(url, what)
            if response.status_code != 200:
                url = self._after_refusal(response, url, what)
                continue
            page = _page_tags(response, self._registry, what)
            new_tags = [t for t in page if t not in self._known]
            self._known.update(new_tags)
            self._tags.extend(new_tags)
            url = self._next_url(response, page, new_tags)
        return self._tags

    def _get(self, url: str, what: str) -> httpx.Response:
        """One page's response; a failure after the first page is an incomplete listing."""
        session = self._session
        try:
            with session.slots:
                response = session.request("GET", url, self._repository, what=what)
        except (RegistryError, IntegrityError) as exc:
            if self._pages == 0 and isinstance(exc, (NotFoundError, AuthenticationError, RateLimitedError,
                                                     RegistryUnreachableError)):
                raise
            raise IncompleteListingError(f"{self._registry}: {what} failed, listing incomplete: {exc}") from None
        self._pages += 1
        session.stats.add(tag_pages=1)
        return response

    def _after_refusal(self, response: httpx.Response, url: str, what: str) -> str:
        """The URL to ask again when the first page refused our `n`; else raise the refusal."""
        if self._pages == 1 and not self._size_refused and refuses_page_size(response):
            # Ask the first page again, as the registry allows; the page it
            # refused proves nothing about the tags.
            self._size_refused, self._pages = True, 0
            self._size = _tag_limit(response, self._size)
            log.info("%s: %s refused n=%s (HTTP %d); asking with %s", self._registry, what,
                     urlsplit(url).query, response.status_code, f"n={self._size}" if self._size else "no n")
            return f"{self._base}?{urlencode({'n': self._size})}" if self._size else self._base
        error = self._session.fail(response, what, self._repository)
        if self._pages == 1 and isinstance(error, (NotFoundError, AuthenticationError)):
            raise error
        raise IncompleteListingError(f"{error}; listing incomplete") from None

    def _next_url(self, response: httpx.Response, page: List[str], new_tags: List[str]) -> Optional[str]:
        """The next page's URL: the `Link`, or after the last tag of a full page; None at the end."""
        target = next_link(response.headers.get_list("link"))
        if target:
            # Relative to the URL that answered, which a redirect (registry.k8s.io)
            # may have moved to another host; the link may stay there or come back.
            answered = str(response.url)
            url = urljoin(answered, target)
            allowed: Tuple[Tuple[str, str], ...] = (urlsplit(answered)[:2], self._origin)
            if urlsplit(url)[:2] not in allowed:
                raise IncompleteListingError(
                    f"{self._registry}: tag listing of {self._repository} links to another host "
                    f"({urlsplit(url).netloc}); refused"
                )
            return url
        if self._size and new_tags and len(page) == self._size:
            # No Link but exactly a full page: there may be more; continue after the
            # last tag. (A registry that ignores n, as distribution 2.8 and Docker Hub
            # do, returns more than n and needs no second request; one that ignores
            # `last` too answers a page already seen, which ends the listing.)
            return f"{self._base}?{urlencode({'n': self._size, 'last': page[-1]})}"
        return None
