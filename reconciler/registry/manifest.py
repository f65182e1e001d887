"""Manifests, indexes and image configs (OCI and Docker v2 schema 2).

Parsing is strict: a manifest is checked for its schema version, a media type
that agrees with the one the registry announced, and well-formed descriptors,
so later stages can rely on what they get.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from .. import boundedjson
from ..errors import PlatformNotFoundError, RegistryError, UnsupportedManifestError
from .reference import is_valid_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
# Indexes first: a registry that gets no index type in Accept may pick a
# platform or down-convert, and the digest it reports then changes.
MANIFEST_ACCEPT = ", ".join(INDEX_TYPES + IMAGE_MANIFEST_TYPES)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class InvalidManifestError(RegistryError):
    """A manifest or config that is not what the spec says it must be."""


@dataclass(frozen=True)
class Platform:
    """os/architecture[/variant], as in an index entry."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """Parse `linux/amd64` or `linux/arm64/v8`."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} must look like os/architecture[/variant], e.g. linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def normalized(self) -> "Platform":
        """arm64's default variant is v8; amd64 has none."""
        variant = self.variant
        if self.architecture == "arm64" and variant == "v8":
            variant = ""
        return Platform(self.os, self.architecture, variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or a child manifest."""

    media_type: str
    digest: str
    size: int
    platform: Optional[Platform] = None
    annotations: Dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    urls: Tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: object, where: str) -> "Descriptor":
        """Parse and validate a descriptor object; `where` names it in errors."""
        if not isinstance(data, dict):
            raise InvalidManifestError(f"{where}: expected a JSON object")
        media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifestError(f"{where}.mediaType: expected a string")
        if not isinstance(digest, str) or not is_valid_digest(digest):
            raise InvalidManifestError(f"{where}.digest: expected sha256:<64 hex>, got {str(digest)[:80]!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifestError(f"{where}.size: expected a non-negative integer")
        platform = None
        p = data.get("platform")
        if isinstance(p, dict):
            platform = Platform(str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", "") or ""))
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise InvalidManifestError(f"{where}.annotations: expected an object")
        urls = data.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidManifestError(f"{where}.urls: expected a list of strings")
        return cls(media_type, digest, size, platform, {str(k): str(v) for k, v in annotations.items()}, tuple(urls))

    @property
    def is_attestation(self) -> bool:
        """Build attestations (BuildKit) that share an index with real images."""
        if self.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            return True
        return self.platform is not None and self.platform.os == "unknown" and self.platform.architecture == "unknown"


@dataclass(frozen=True)
class ImageManifest:
    """An image manifest: one config and its layers, in order."""

    media_type: str
    config: Descriptor
    layers: Tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageIndex:
    """An OCI index or Docker manifest list: one manifest per platform."""

    media_type: str
    manifests: Tuple[Descriptor, ...]

    def select(self, platform: Platform) -> Descriptor:
        """The entry for `platform`, skipping attestations.

        Without a requested variant, an entry without variant wins over one
        with; with a variant, it must match (arm64's v8 is its default).
        """
        want = platform.normalized()
        candidates = []
        for entry in self.manifests:
            if entry.is_attestation or entry.platform is None or entry.media_type not in IMAGE_MANIFEST_TYPES:
                continue
            have = entry.platform.normalized()
            if (have.os, have.architecture) != (want.os, want.architecture):
                continue
            if want.variant and have.variant != want.variant:
                continue
            candidates.append(entry)
        if not candidates:
            offered = ", ".join(sorted({str(e.platform) for e in self.manifests
                                        if e.platform and not e.is_attestation}))
            raise PlatformNotFoundError(f"no manifest for platform {platform} (the index offers: {offered or 'none'})")
        candidates.sort(key=lambda e: bool(e.platform and e.platform.normalized().variant))
        return candidates[0]


Manifest = Union[ImageManifest, ImageIndex]


def _load_json(raw: bytes, what: str) -> Dict[str, Any]:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidManifestError(f"{what} is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        data = boundedjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifestError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        # json recurses once per nested array or object: "[[[[…" deeper than
        # Python's recursion limit would otherwise escape as a RecursionError.
        raise InvalidManifestError(f"{what} nests arrays or objects too deeply to be a manifest") from None
    if not isinstance(data, dict):
        raise InvalidManifestError(f"{what} is not a JSON object")
    return data


def parse_manifest(raw: bytes, content_type: Optional[str]) -> Manifest:
    """Parse a manifest or index body, cross-checking the announced media type."""
    content_type = (content_type or "").split(";", 1)[0].strip().lower()
    if content_type in DOCKER_SCHEMA1:
        raise UnsupportedManifestError(
            "Docker schema 1 manifests are unsupported (deprecated since 2017); rebuild and push the image with a "
            "current client"
        )
    data = _load_json(raw, "manifest")
    if data.get("schemaVersion") == 1:
        raise UnsupportedManifestError(
            "Docker schema 1 manifests are unsupported (deprecated since 2017); rebuild and push the image with a "
            "current client"
        )
    if data.get("schemaVersion") != 2:
        raise InvalidManifestError(f"manifest schemaVersion is {data.get('schemaVersion')!r}, expected 2")
    media_type = data.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        raise InvalidManifestError("manifest mediaType is not a string")
    generic = ("application/json", "text/plain")
    if media_type and content_type and content_type not in generic and media_type != content_type:
        raise InvalidManifestError(f"manifest mediaType {media_type!r} disagrees with Content-Type {content_type!r}")
    kind = media_type or content_type
    if not kind or kind in ("application/json", "text/plain"):
        # OCI allows mediaType to be absent: tell an index from a manifest by its fields.
        kind = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    if kind in INDEX_TYPES:
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise InvalidManifestError("index.manifests: expected a list")
        return ImageIndex(kind, tuple(Descriptor.from_json(e, f"index.manifests[{i}]") for i, e in enumerate(entries)))
    if kind in IMAGE_MANIFEST_TYPES:
        config = Descriptor.from_json(data.get("config"), "manifest.config")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise InvalidManifestError("manifest.layers: expected a list")
        return ImageManifest(kind, config, tuple(Descriptor.from_json(layer, f"manifest.layers[{i}]")
                                                 for i, layer in enumerate(layers)))
    raise UnsupportedManifestError(f"unsupported manifest media type {kind!r}")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config that conversion needs."""

    diff_ids: Tuple[str, ...]
    env: Tuple[str, ...] = ()
    entrypoint: Optional[Tuple[str, ...]] = None
    cmd: Optional[Tuple[str, ...]] = None
    labels: Dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    working_dir: str = ""
    user: str = ""
    platform: Optional[Platform] = None


def _str_list(value: object, where: str) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidManifestError(f"{where}: expected a list of strings")
    return tuple(value)


def parse_image_config(raw: bytes) -> ImageConfig:
    """Parse an image config blob (OCI or Docker)."""
    data = _load_json(raw, "image config")
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidManifestError("image config rootfs: expected {\"type\": \"layers\", \"diff_ids\": [...]}")
    diff_ids = _str_list(rootfs.get("diff_ids"), "image config rootfs.diff_ids") or ()
    for d in diff_ids:
        if not is_valid_digest(d):
            raise InvalidManifestError(f"image config rootfs.diff_ids: {d[:80]!r} is not a sha256 digest")
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        raise InvalidManifestError("image config .config: expected an object")
    labels = cfg.get("Labels") or {}
    if not isinstance(labels, dict):
        raise InvalidManifestError("image config .config.Labels: expected an object")
    platform = None
    if isinstance(data.get("os"), str) and isinstance(data.get("architecture"), str):
        platform = Platform(data["os"], data["architecture"], str(data.get("variant") or ""))
    return ImageConfig(
        diff_ids=diff_ids,
        env=_str_list(cfg.get("Env"), "image config .config.Env") or (),
        entrypoint=_str_list(cfg.get("Entrypoint"), "image config .config.Entrypoint"),
        cmd=_str_list(cfg.get("Cmd"), "image config .config.Cmd"),
        labels={str(k): str(v) for k, v in labels.items()},
        working_dir=str(cfg.get("WorkingDir") or ""),
        user=str(cfg.get("User") or ""),
        platform=platform,
    )
