"""Image references: parse `alpine`, `ghcr.io/org/img:tag`, `host:5000/a/b@sha256:…`.

Follows the grammar of distribution's `reference` package, so that a name
accepted here is one every registry accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
# The key Docker itself uses for Hub credentials in config.json.
DOCKER_HUB_CREDENTIAL_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

# Matched with fullmatch(), never `^…$`: `$` also matches before a final
# newline, so "latest\n" would pass. Character classes are spelt out in ASCII:
# `\w` would also take "é" or "٣", which no registry accepts.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
)
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_MAX_NAME = 255


def is_valid_tag(tag: str) -> bool:
    """True when `tag` is a syntactically valid tag."""
    return bool(_TAG_RE.fullmatch(tag))


def is_valid_digest(digest: str) -> bool:
    """True when `digest` is a sha256 digest in canonical form."""
    return bool(_DIGEST_RE.fullmatch(digest))


def normalize_registry(host: str) -> str:
    """Map every Docker Hub alias to `docker.io`; other hosts are kept as given."""
    return DOCKER_HUB if host.lower() in _DOCKER_HUB_ALIASES else host


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference. `tag` and `digest` may both be set."""

    registry: str
    repository: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @property
    def api_host(self) -> str:
        """The host (and port) that serves the distribution API."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after `/manifests/`: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> "ImageReference":
        """The same repository at another tag (digest dropped)."""
        if not is_valid_tag(tag):
            raise InvalidReferenceError(f"{self.name}: invalid tag {tag!r}")
        return ImageReference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, default_tag: Optional[str] = "latest") -> ImageReference:
    """Parse an image reference the way `docker pull` does.

    `alpine` becomes `docker.io/library/alpine:latest`; a first component with
    a dot, a colon or equal to `localhost` is a registry host. With
    `default_tag=None` a reference without tag or digest keeps `tag=None`.
    """
    original = text
    if not text or text != text.strip():
        raise InvalidReferenceError(f"invalid image reference {original!r}: empty or surrounded by spaces")
    digest: Optional[str] = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not is_valid_digest(digest):
            raise InvalidReferenceError(
                f"invalid image reference {original!r}: digest must look like sha256:<64 lowercase hex>"
            )
    tag: Optional[str] = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not is_valid_tag(tag):
            raise InvalidReferenceError(
                f"invalid image reference {original!r}: tag {tag!r} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
            )
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
        if not _DOMAIN_RE.fullmatch(registry):
            raise InvalidReferenceError(f"invalid image reference {original!r}: bad registry host {registry!r}")
    else:
        registry, path = DOCKER_HUB, text
    registry = normalize_registry(registry)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not _PATH_RE.fullmatch(path):
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: repository {path!r} must be lowercase "
            "components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'"
        )
    if len(registry) + 1 + len(path) > _MAX_NAME:
        raise InvalidReferenceError(f"invalid image reference {original!r}: name longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        tag = default_tag
    return ImageReference(registry, path, tag, digest)
