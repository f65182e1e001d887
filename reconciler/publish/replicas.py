"""Which revision a CernVM-FS server serves: its `.cvmfspublished` over HTTP.

The manifest a stratum 0 signs at every publish, and that each stratum 1
copies when it catches up (`cvmfs_server snapshot`), starts with text lines of
one letter and a value: `S` the revision number, `T` the publish time (unix
seconds), `N` the repository name; a line `--` ends them (the signature
follows). Reading it is one small GET, cheap enough to ask every few seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import httpx

from ..errors import PublishError

MANIFEST = ".cvmfspublished"
MAX_MANIFEST_BYTES = 64 * 1024  # a few hundred bytes in practice; the signature follows the fields
REPOSITORIES_D = Path("/etc/cvmfs/repositories.d")


@dataclass(frozen=True)
class ServedRevision:
    """What one server's `.cvmfspublished` says: the revision, when it was published, of which repository."""

    revision: int
    published: Optional[float]
    repository: Optional[str]


def parse_manifest(data: bytes, where: str) -> ServedRevision:
    """The fields of a `.cvmfspublished` (`where`: its URL, for messages)."""
    fields: Dict[str, str] = {}
    for raw in data.split(b"\n"):
        if raw == b"--":
            break
        line = raw.decode("ascii", "replace")
        if len(line) >= 2:
            fields.setdefault(line[0], line[1:])
    revision = fields.get("S", "")
    if not re.fullmatch(r"[0-9]{1,18}", revision):
        raise PublishError(f"{where} is not a CernVM-FS manifest (no revision line `S<number>`); check that the "
                           "URL names a repository, as http://host/cvmfs/<repository>")
    stamp = fields.get("T", "")
    return ServedRevision(int(revision), float(stamp) if re.fullmatch(r"[0-9]{1,18}", stamp) else None,
                          fields.get("N"))


def read_served(http: httpx.Client, base_url: str) -> ServedRevision:
    """The revision the server at `base_url` (http://host/cvmfs/<repository>) serves now."""
    url = f"{base_url.rstrip('/')}/{MANIFEST}"
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise PublishError(f"{url} answered HTTP {response.status_code}; check the URL in "
                                   "[publish] replicas and that the server is up")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    break
    except httpx.HTTPError as exc:
        raise PublishError(f"cannot read {url}: {type(exc).__name__}; check the URL in [publish] replicas "
                           "and that the server is up") from None
    return parse_manifest(bytes(body[:MAX_MANIFEST_BYTES]), url)


def stratum0_url(repository: str, repositories_d: Path = REPOSITORIES_D) -> Optional[str]:
    """The URL the repository's stratum 0 serves it at (`CVMFS_STRATUM0` in
    its server.conf on this publisher), or None when that cannot be read."""
    try:
        text = (repositories_d / repository / "server.conf").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.strip().partition("=")
        if name == "CVMFS_STRATUM0" and value.strip().strip("'\""):
            return value.strip().strip("'\"")
    return None
