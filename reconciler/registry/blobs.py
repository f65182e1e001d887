"""Blob download: streamed into a file, verified by size and sha256, resumed with `Range`.

The bytes verified and stored are the bytes as sent, whatever
`Content-Encoding` says: a blob's digest is over what the registry stores,
and servers label gzip layers `gzip` or `x-gzip` (Apache's mime magic, S3
object metadata) without having compressed anything. httpx would decode
`gzip` (not `x-gzip`) if we read decoded bytes. A server that really
compresses on the fly, though asked for identity, sends bytes that do not
match: that is a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import BinaryIO, Callable, Dict, List, Optional

import httpx

from ..errors import IntegrityError, TransferError
from .manifest import Descriptor
from .session import RegistrySession

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def _content_coding(response: httpx.Response) -> Optional[str]:
    """The response's Content-Encoding, lower case, or None for none or identity."""
    codings = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c and c != "identity"]
    return ", ".join(codings) or None


def _encoding_note(response: Optional[httpx.Response], encodings: List[str]) -> str:
    """Why the bytes may be wrong when a server labelled them with a Content-Encoding."""
    if not encodings:
        return ""
    host = f"{response.url.host} " if response is not None else ""
    return (f" ({host}sent them with Content-Encoding: {', '.join(encodings)} although identity was asked: a "
            "server compressing blobs on the fly changes their bytes; have it serve blobs unmodified)")


class _Broken(Exception):
    """The transfer broke off (a transport error, or a body shorter than promised): resume it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # for the log: the transport error's class, or _ShortBody


class BlobFetch:
    """One blob's download into `sink` (a writable, seekable file); used once."""

    def __init__(self, session: RegistrySession, repository: str, descriptor: Descriptor, sink: BinaryIO,
                 progress: Optional[Callable[[int], None]] = None) -> None:
        self._session = session
        self._registry = session.registry
        self._repository = repository
        self._descriptor = descriptor
        self._sink = sink
        self._progress = progress
        self._url = f"{session.base_url}/v2/{repository}/blobs/{descriptor.digest}"
        self._what = f"blob {descriptor.digest[:19]} of {repository}"
        self._hasher = hashlib.sha256()
        self._written = 0
        self._encodings: List[str] = []  # Content-Encoding labels seen on the bytes we kept

    def run(self) -> None:
        """Download, resuming broken transfers; raises IntegrityError when the bytes are not the promised ones."""
        breaks = 0
        with self._session.download_slots:
            while True:
                try:
                    self._transfer()
                except _Broken as exc:
                    breaks += 1
                    if breaks >= self._session.retry.attempts:
                        raise TransferError(
                            f"{self._registry}: {self._what} broke off {breaks} times (at {self._written} of "
                            f"{self._descriptor.size} bytes)"
                        ) from None
                    log.info("%s: %s broke off at %d of %d bytes (%s); resuming", self._registry, self._what,
                             self._written, self._descriptor.size, exc.reason)
                    self._session.backoff(breaks, self._what)
                    continue
                break
        actual = "sha256:" + self._hasher.hexdigest()
        if actual != self._descriptor.digest:
            raise IntegrityError(f"{self._registry}: {self._what} hashes to {actual}, not "
                                 f"{self._descriptor.digest}{_encoding_note(None, self._encodings)}; discarded")

    def _transfer(self) -> None:
        """One request: from zero, or from what was written (raises to resume)."""
        # identity: a CDN compressing on the fly would change the byte
        # counts that Range resume relies on.
        headers: Dict[str, str] = {"Accept-Encoding": "identity"}
        if self._written:
            headers["Range"] = f"bytes={self._written}-"
        response = self._session.request("GET", self._url, self._repository, headers=headers, stream=True,
                                         what=self._what)
        try:
            self._accept(response)
            self._session.stats.add(blob_gets=1)
            encoding = _content_coding(response)
            if encoding and encoding not in self._encodings:
                self._encodings.append(encoding)
            try:
                self._stream(response, encoding)
            except httpx.TransportError as exc:
                raise _Broken(type(exc).__name__) from None
        finally:
            response.close()

    def _accept(self, response: httpx.Response) -> None:
        """Check the answer: a resume that fits, a full body (restart), or a refusal."""
        if response.status_code == 206 and self._written:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match or int(match.group(1)) != self._written:
                raise TransferError(f"{self._registry}: {self._what}: resume answered with a mismatched Content-Range")
        elif response.status_code == 200:
            if self._written:
                log.info("%s: registry ignored Range; restarting %s from zero", self._registry, self._what)
                self._sink.seek(0)
                self._sink.truncate()
                self._hasher, self._written, self._encodings = hashlib.sha256(), 0, []
        else:
            response.read()
            raise self._session.fail(response, self._what, self._repository)

    def _stream(self, response: httpx.Response, encoding: Optional[str]) -> None:
        """Copy the body into the sink, hashing it; a short body raises _Broken."""
        size = self._descriptor.size
        # Raw chunks as they arrive (never decoded, no re-chunking): bytes
        # received before a connection breaks are kept, so the resume
        # starts after them.
        for chunk in response.iter_raw():
            self._written += len(chunk)
            if self._written > size:
                raise IntegrityError(f"{self._registry}: {self._what} is longer than its declared "
                                     f"{size} bytes{_encoding_note(response, self._encodings)}")
            self._hasher.update(chunk)
            self._sink.write(chunk)
            self._session.stats.add(blob_bytes=len(chunk))
            if self._progress:
                self._progress(len(chunk))
        if self._written < size:
            if encoding:
                # Not a broken transfer: a body of another length, as a
                # server compressing on the fly sends. Resuming it would
                # splice two encodings.
                raise IntegrityError(
                    f"{self._registry}: {self._what}: the body ended at {self._written} of {size} "
                    f"bytes{_encoding_note(response, self._encodings)}")
            raise _Broken("_ShortBody")
