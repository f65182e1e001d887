"""Manifests: a HEAD for the digest a tag points at, a GET verified against every digest claimed.

A manifest body is at most MAX_MANIFEST_BYTES and must hash to the digest
asked for, to the digest a HEAD said the tag pointed at, and to
`Docker-Content-Digest` when the registry sends it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Optional, Tuple

import httpx

from ..errors import IntegrityError, NotFoundError, RegistryError, TransferError
from .manifest import MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Manifest, parse_manifest
from .reference import is_valid_digest
from .session import RegistrySession

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


def head_manifest(session: RegistrySession, repository: str, reference: str) -> Optional[ManifestHead]:
    """HEAD a manifest: the digest the tag points at now.

    Returns None when the HEAD fails other than with 404 (405, or 403
    from some mirrors and CDNs), so the caller falls back to GET. A HEAD
    does not count against Docker Hub's pull limit.
    """
    # A HEAD answered 404 means what a GET would say; any other failure (403 from
    # mirrors and CDNs, 405, 400) is asked again with GET, as docker does. (A 401
    # never comes back: it is answered, or raised, on the way.)
    url = f"{session.base_url}/v2/{repository}/manifests/{reference}"
    what = f"HEAD {repository}:{reference}"
    with session.slots:
        response = session.request("HEAD", url, repository, headers={"Accept": MANIFEST_ACCEPT}, what=what)
    session.stats.add(manifest_heads=1)
    if response.status_code != 200:
        if response.status_code == 404:
            raise session.fail(response, what, repository)
        log.info("%s: %s answered HTTP %d; asking with GET instead", session.registry, what, response.status_code)
        return None
    digest = response.headers.get("docker-content-digest")
    if digest is not None and not is_valid_digest(digest):
        digest = None
    length = response.headers.get("content-length")
    media_type = (response.headers.get("content-type") or "").split(";", 1)[0].strip() or None
    return ManifestHead(digest, media_type, int(length) if length and length.isdigit() else None)

def get_manifest(session: RegistrySession, repository: str, reference: str,
             expected_digest: Optional[str] = None, accept: str = MANIFEST_ACCEPT) -> FetchedManifest:
    """GET a manifest and verify its body: against the digest asked for, and
    against `Docker-Content-Digest` when the registry sends it.

    With `expected_digest` (what a HEAD said the tag points at) the
    manifest is fetched by that digest, so a tag moving in between is not
    an integrity error: the next cycle sees the move. A registry that
    answers 404 by digest (pull-through caches that know only the tag) is
    asked by tag, the body still checked against `expected_digest`.
    `accept`: the media types asked for (a registry answers 404 for a
    manifest of a type not listed)."""
    separator = "@" if reference.startswith("sha256:") else ":"
    what = f"manifest {repository}{separator}{reference}"
    by_digest = bool(expected_digest and is_valid_digest(expected_digest) and not reference.startswith("sha256:"))
    asked = expected_digest if by_digest and expected_digest else reference
    try:
        response, raw = _get_manifest_body(session, repository, asked, what, accept)
    except NotFoundError:
        if not by_digest:
            raise
        log.info("%s: %s not found by digest %s; asking by tag", session.registry, what, expected_digest)
        response, raw = _get_manifest_body(session, repository, reference, what, accept)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    for claimed, source in (
        (reference if reference.startswith("sha256:") else None, "the requested digest"),
        (expected_digest, "the digest the tag pointed at"),
        (response.headers.get("docker-content-digest"), "Docker-Content-Digest"),
    ):
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise IntegrityError(f"{session.registry}: {what}: body hashes to {digest}, not {claimed} ({source})")
    media_type = (response.headers.get("content-type") or "").split(";", 1)[0].strip()
    return FetchedManifest(digest, media_type, raw)

def _get_manifest_body(session: RegistrySession, repository: str, reference: str,
                   what: str, accept: str = MANIFEST_ACCEPT) -> Tuple[httpx.Response, bytes]:
    """One manifest GET: the (closed) response and its body, at most MAX_MANIFEST_BYTES."""
    url = f"{session.base_url}/v2/{repository}/manifests/{reference}"
    with session.slots:
        response = session.request("GET", url, repository, headers={"Accept": accept},
                                 stream=True, what=what)
        try:
            if response.status_code != 200:
                response.read()
                raise session.fail(response, what, repository)
            body = read_bounded(session, response, what)
        finally:
            response.close()
    session.stats.add(manifest_gets=1)
    return response, body


def read_bounded(session: RegistrySession, response: httpx.Response, what: str) -> bytes:
    """A streamed response's body, at most MAX_MANIFEST_BYTES (a manifest, a
    listing): RegistryError past that, TransferError when the body breaks."""
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"{session.registry}: {what} is larger than {MAX_MANIFEST_BYTES} bytes")
    except httpx.TransportError as exc:
        raise TransferError(f"{session.registry}: {what}: transfer broken: {type(exc).__name__}") from None
    return bytes(body)
