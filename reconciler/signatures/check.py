"""What checking one signature found, and the blob reader the checks share."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import ReconcilerError
from .keys import TrustedKey

# A simple-signing payload is ~250 bytes, a v3 bundle a few KB: 64 KiB is
# ample, and bounds what an unsigned object can make us read.
MAX_SIGNATURE_BLOB = 64 * 1024

# (digest, size) -> the blob's bytes; the registry side fetches them.
FetchBlob = Callable[[str, int], bytes]


@dataclass(frozen=True)
class Check:
    """One signature examined: the key that signed it, or why it does not count."""

    where: str  # which object: "reg/app:sha256-ab12….sig layer 0"
    signer: Optional[TrustedKey] = None
    reason: str = ""  # one line; empty when accepted

    @property
    def accepted(self) -> bool:
        return self.signer is not None and not self.reason


def short_digest(digest: str) -> str:
    """`sha256:` and 12 hex digits, for messages."""
    return digest[:19]


def read_blob(fetch: FetchBlob, digest: str, size: int, what: str) -> bytes:
    """A signature blob: at most MAX_SIGNATURE_BLOB, hashing to `digest`
    (checked here too, whatever the fetcher did). ValueError says why not."""
    if size > MAX_SIGNATURE_BLOB:
        raise ValueError(f"{what} is {size} bytes, over the {MAX_SIGNATURE_BLOB} byte limit for signatures")
    try:
        data = fetch(digest, size)
    except ReconcilerError as exc:
        raise ValueError(f"{what} cannot be read: {exc}") from None
    if len(data) > MAX_SIGNATURE_BLOB:
        raise ValueError(f"{what} is over the {MAX_SIGNATURE_BLOB} byte limit for signatures")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ValueError(f"{what} hashes to {short_digest(actual)}, not {short_digest(digest)}")
    return data


def decode_base64(text: object, what: str) -> bytes:
    """Standard base64 (strict); ValueError naming `what` otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} is missing or not a string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
