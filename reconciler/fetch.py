"""The fetch stage: resolve a tag to an image for one platform and make sure
its manifest, config and layers are in the blob store.

Three levels of change detection keep registry traffic to what changed: a
HEAD tells the tag's digest; a manifest is fetched only when that digest is
not already in the blob store; a blob is downloaded only when missing.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional, Tuple

from .blobstore import BlobStore
from .errors import ReconcilerError, UnsupportedManifestError
from .registry.client import RegistryClient
from .registry.manifest import (
    CONFIG_TYPES,
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    InvalidManifestError,
    Platform,
    parse_image_config,
    parse_manifest,
)
from .registry.reference import ImageReference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedImage:
    """A tag resolved to one platform's image, its manifest and config at hand."""

    reference: ImageReference
    tag_digest: str  # what the tag points at: an index or a manifest
    manifest_digest: str  # the chosen platform's image manifest
    manifest: ImageManifest
    config: ImageConfig
    platform: Platform

    @property
    def layers(self) -> Tuple[Descriptor, ...]:
        """The layer descriptors, bottom first."""
        return self.manifest.layers


def _fetch_blob(client: RegistryClient, mirror: Optional[RegistryClient], repository: str, blob: Descriptor,
                sink: BinaryIO, progress: Optional[Callable[[int], None]] = None) -> None:
    """A blob from the mirror if there is one, else (or when it fails) from the origin."""
    if mirror is not None:
        try:
            mirror.fetch_blob(repository, blob, sink, progress)
            return
        except ReconcilerError as exc:
            log.info("mirror %s could not serve %s of %s (%s); fetching it from %s", mirror.registry,
                     blob.digest[:19], repository, exc, client.registry)
            sink.seek(0)
            sink.truncate()
    client.fetch_blob(repository, blob, sink, progress)


def _manifest_bytes(client: RegistryClient, store: BlobStore, repository: str, reference: str,
                    digest: Optional[str]) -> Tuple[str, bytes]:
    """The manifest body from the store when its digest is known, else by GET."""
    if digest and store.has(digest):
        return digest, store.read_bytes(digest)
    fetched = client.get_manifest(repository, reference, expected_digest=digest)
    # Keep what parse needs: stored manifests are parsed from their own mediaType field.
    parse_manifest(fetched.raw, fetched.media_type)
    store.put_bytes(fetched.digest, fetched.raw)
    return fetched.digest, fetched.raw


def current_digest(client: RegistryClient, ref: ImageReference) -> Optional[str]:
    """The digest the reference points at now: its own when it names one, else
    what a HEAD says (None when the registry would not tell: GET it instead)."""
    if ref.digest:
        return ref.digest
    head = client.head_manifest(ref.repository, ref.reference)
    return head.digest if head else None


def resolve_image(client: RegistryClient, store: BlobStore, ref: ImageReference, platform: Platform, *,
                  known_digest: Optional[str], mirror: Optional[RegistryClient] = None) -> ResolvedImage:
    """From what `current_digest` said (`known_digest`), read (or GET) the
    manifest, pick the platform and load its config (a blob: from the mirror
    when there is one)."""
    repo = ref.repository
    tag_digest, raw = _manifest_bytes(client, store, repo, ref.reference, known_digest)
    manifest = parse_manifest(raw, None)
    manifest_digest = tag_digest
    if isinstance(manifest, ImageIndex):
        entry = manifest.select(platform)
        manifest_digest, raw = _manifest_bytes(client, store, repo, entry.digest, entry.digest)
        manifest = parse_manifest(raw, None)
        if isinstance(manifest, ImageIndex):
            raise UnsupportedManifestError(f"{ref}: index entry for {platform} is itself an index")
    assert isinstance(manifest, ImageManifest)
    if manifest.config.media_type not in CONFIG_TYPES:
        raise UnsupportedManifestError(
            f"{ref}: config media type {manifest.config.media_type!r} is not a container image (an artifact?)"
        )
    store.ensure(manifest.config.digest, manifest.config.size,
                 lambda sink: _fetch_blob(client, mirror, repo, manifest.config, sink))
    config = parse_image_config(store.read_bytes(manifest.config.digest))
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidManifestError(
            f"{ref}: manifest has {len(manifest.layers)} layers but the config lists {len(config.diff_ids)} diff_ids"
        )
    return ResolvedImage(ref, tag_digest, manifest_digest, manifest, config, platform)


def fetch_layers(client: RegistryClient, store: BlobStore, image: ResolvedImage, *,
                 progress: Optional[Callable[[int], None]] = None, workers: int = 4,
                 mirror: Optional[RegistryClient] = None) -> int:
    """Download every layer of `image` that the store lacks, concurrently.

    With a `mirror`, blobs (content-addressed, verified all the same) come from
    it first; any failure there falls back to the origin. Tags are never
    resolved at a mirror: mirrors can serve stale tags.
    Returns the number of blob bytes downloaded."""
    repo = image.reference.repository

    def one(layer: Descriptor) -> int:
        stored = store.ensure(layer.digest, layer.size,
                              lambda sink: _fetch_blob(client, mirror, repo, layer, sink, progress))
        return layer.size if stored.downloaded else 0

    unique = list({layer.digest: layer for layer in image.layers}.values())
    if not unique:
        return 0
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
        return sum(pool.map(one, unique))
