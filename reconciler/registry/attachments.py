"""What is attached to a manifest: a tag derived from its digest (cosign's
`sha256-<hex>.sig`), its OCI 1.1 referrers, and the small blobs they point
to. Knows nothing of signatures or policy: it fetches, bounded and verified.

Referrers come from the referrers API (`/v2/<repo>/referrers/<digest>`) or,
where a registry has none (distribution 2.8 answers 404), from the fallback
index tagged `sha256-<hex>` that clients maintain instead (OCI
distribution spec 1.1, "Referrers Tag Schema").
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .. import boundedjson
from ..errors import IntegrityError, NotFoundError, RegistryError
from .blobs import BlobFetch
from .manifest import OCI_INDEX, OCI_MANIFEST, Descriptor
from .manifests import FetchedManifest, get_manifest, read_bounded
from .reference import is_valid_digest
from .session import RegistrySession

log = logging.getLogger(__name__)

# A `.sig` tag must be an OCI manifest; an index is asked for too, so that one
# found there is reported as what it is, not as "not found". Without the OCI
# type in Accept, distribution 2.8 answers 404 for an OCI manifest.
ATTACHMENT_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"
# The answers meaning "no referrers API here" (ggcr's fallback rule).
_NO_REFERRERS_API = (400, 404, 405, 406)
# More referrers than this are not read: each costs a request.
MAX_REFERRERS = 32


@dataclass(frozen=True)
class Referrer:
    """One entry of a referrers listing."""

    digest: str
    size: int
    media_type: str
    artifact_type: Optional[str]


@dataclass(frozen=True)
class ReferrerList:
    """A digest's referrers and where they were listed."""

    source: str  # "the referrers API" or "the fallback tag <repo>:sha256-<hex>"
    referrers: Tuple[Referrer, ...]


def digest_tag(digest: str, suffix: str = "") -> str:
    """`sha256:<hex>` as a tag: `sha256-<hex>`, with `.suffix` when given."""
    return digest.replace(":", "-") + (f".{suffix}" if suffix else "")


def tagged_attachment(session: RegistrySession, repository: str, tag: str) -> Optional[FetchedManifest]:
    """The manifest at `tag` asked with the OCI types (verified as every
    manifest), or None when the registry has none (404)."""
    try:
        return get_manifest(session, repository, tag, accept=ATTACHMENT_ACCEPT)
    except NotFoundError:
        return None


def list_referrers(session: RegistrySession, repository: str, digest: str) -> ReferrerList:
    """The referrers of `digest`: from the API, else from the fallback tag
    (none when neither exists)."""
    url = f"{session.base_url}/v2/{repository}/referrers/{digest}"
    what = f"referrers of {repository}@{digest[:19]}"
    status, media_type, body = _get_bounded(session, url, repository, what)
    if status == 200 and media_type == OCI_INDEX:
        return ReferrerList("the referrers API", _parse_index(body, what))
    if status not in _NO_REFERRERS_API and status != 200:
        raise RegistryError(f"{session.registry}: {what}: HTTP {status}")
    fallback = digest_tag(digest)
    where = f"the fallback tag {repository}:{fallback}"
    index = tagged_attachment(session, repository, fallback)
    if index is None:
        return ReferrerList(where, ())
    return ReferrerList(where, _parse_index(index.raw, f"{repository}:{fallback}"))


def small_blob(session: RegistrySession, repository: str, digest: str, size: int, limit: int) -> bytes:
    """A blob of at most `limit` bytes, checked against its size and digest."""
    if size > limit or size < 0:
        raise IntegrityError(f"{session.registry}: blob {digest[:19]} of {repository} is {size} bytes, over "
                             f"the {limit} byte limit")
    sink = io.BytesIO()
    BlobFetch(session, repository, Descriptor("application/octet-stream", digest, size), sink).run()
    return sink.getvalue()


def _parse_index(body: bytes, what: str) -> Tuple[Referrer, ...]:
    try:
        data = boundedjson.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RegistryError(f"{what}: the referrers index is not JSON") from None
    entries = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise RegistryError(f"{what}: the referrers index has no manifests list")
    out: List[Referrer] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        digest, size, media_type = entry.get("digest"), entry.get("size"), entry.get("mediaType")
        artifact_type = entry.get("artifactType")
        if not (isinstance(digest, str) and is_valid_digest(digest) and isinstance(size, int)
                and isinstance(media_type, str)):
            continue  # an entry we could not open anyway
        out.append(Referrer(digest, size, media_type, artifact_type if isinstance(artifact_type, str) else None))
    if len(out) > MAX_REFERRERS:
        log.warning("%s: %d referrers; reading the first %d", what, len(out), MAX_REFERRERS)
    return tuple(out[:MAX_REFERRERS])


def _get_bounded(session: RegistrySession, url: str, repository: str, what: str) -> Tuple[int, str, bytes]:
    """One GET of a listing: its status, media type and body (at most MAX_MANIFEST_BYTES)."""
    with session.slots:
        response = session.request("GET", url, repository, headers={"Accept": OCI_INDEX}, stream=True, what=what)
        try:
            body = read_bounded(session, response, what)
        finally:
            response.close()
    session.stats.add(manifest_gets=1)
    media_type = (response.headers.get("content-type") or "").split(";", 1)[0].strip()
    return response.status_code, media_type, body
