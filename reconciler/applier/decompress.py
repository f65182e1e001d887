"""Layer streams: pick the decoder from the media type, check the magic agrees,
and hash everything decoded (the DiffID) with memory bounded per chunk."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import zlib
from typing import Any, BinaryIO, Iterator, Optional, Tuple, Type, Union, cast

import zstandard

from ..errors import LayerError

_inflate: Any
try:  # ISA-L inflates about twice as fast as zlib, with the same API and checks
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - platforms without isal wheels
    _inflate = zlib

log = logging.getLogger(__name__)

# What a corrupt gzip member raises, with either inflater.
_INFLATE_ERRORS: Tuple[Type[BaseException], ...] = (zlib.error, _inflate.error)

GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_IN_CHUNK = 256 * 1024
_OUT_CHUNK = 256 * 1024

_LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar": "none",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


def compression_for(media_type: str) -> str:
    """`gzip`, `zstd` or `none` for a layer media type; LayerError for anything else."""
    kind = _LAYER_TYPES.get(media_type)
    if kind is None:
        if "encrypted" in media_type:
            raise LayerError(f"encrypted layers ({media_type}) are not supported: publish a decrypted image")
        raise LayerError(f"unknown layer media type {media_type!r}; refusing to parse it")
    return kind


def _gunzip(raw: BinaryIO) -> Iterator[bytes]:
    """Every gzip member in turn (pigz and eStargz write several), CRC-checked by
    zlib; NUL padding after the last member is tolerated, other trailing data is not."""
    pending = raw.read(_IN_CHUNK)
    if not pending:
        return
    while True:
        if not pending:
            pending = raw.read(_IN_CHUNK)
            if not pending:
                return
        if pending[:1] == b"\x00":
            rest = pending
            while rest:
                if rest.strip(b"\x00"):
                    raise LayerError("gzip layer has trailing data that is neither a gzip member nor NUL padding")
                rest = raw.read(_IN_CHUNK)
            log.warning("gzip layer ends with NUL padding; ignored")
            return
        if len(pending) < 3:
            pending += raw.read(_IN_CHUNK)
        if not pending.startswith(GZIP_MAGIC):
            raise LayerError("layer declared gzip but its data is not a gzip member")
        d = _inflate.decompressobj(wbits=31)
        while not d.eof:
            try:
                out = d.decompress(pending, _OUT_CHUNK)
            except _INFLATE_ERRORS as exc:
                raise LayerError(f"corrupt gzip data in layer: {exc}") from None
            if out:
                yield out
            pending = d.unconsumed_tail
            if d.eof:
                break
            if not pending:
                pending = raw.read(_IN_CHUNK)
                if not pending:
                    # flush what zlib still holds before declaring truncation
                    tail = d.flush()
                    if tail:
                        yield tail
                    raise LayerError("gzip layer is truncated (ends inside a member)")
        pending = d.unused_data


def _unzstd(raw: BinaryIO) -> Iterator[bytes]:
    head = raw.read(4)
    if not head:
        return
    if head != ZSTD_MAGIC and not (0x184D2A50 <= int.from_bytes(head, "little") <= 0x184D2A5F):
        raise LayerError("layer declared zstd but its data is not a zstd frame")

    class _Prefixed:
        def __init__(self) -> None:
            self.first = head

        def read(self, n: int = -1) -> bytes:
            if self.first:
                out, self.first = self.first, b""
                return out
            return raw.read(n)

    # zstandard reads any object with read(n); its stub names only IO[bytes].
    source = cast(BinaryIO, _Prefixed())
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True, closefd=False)
    try:
        while True:
            out = reader.read(_OUT_CHUNK)
            if not out:
                return
            yield out
    except zstandard.ZstdError as exc:
        raise LayerError(f"corrupt zstd data in layer: {exc}") from None


def _plain(raw: BinaryIO) -> Iterator[bytes]:
    head = raw.read(_IN_CHUNK)
    if head.startswith(GZIP_MAGIC) or head.startswith(ZSTD_MAGIC):
        raise LayerError("layer declared uncompressed but its data is compressed; check the media type")
    while head:
        yield head
        head = raw.read(_IN_CHUNK)


_EOF = object()
_QUEUE_CHUNKS = 16  # at most 16 × 256 KiB decoded ahead of the tar parser


class DigestingReader:
    """The decompressed layer as a file, hashing (and counting) every byte.

    Decompression and hashing run in a thread of their own (zlib, ISA-L,
    zstd and hashlib release the GIL), a bounded queue ahead of the tar parser
    that reads from here. `max_bytes` bounds the decompressed size (a
    decompression bomb fails here). Call close() when done.
    """

    def __init__(self, raw: BinaryIO, media_type: str, max_bytes: Optional[int] = None) -> None:
        kind = compression_for(media_type)
        self._chunks = {"gzip": _gunzip, "zstd": _unzstd, "none": _plain}[kind](raw)
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self.decoded = 0  # bytes decoded (producer side)
        self.consumed = 0  # bytes handed to the reader
        self._queue: "queue.Queue[Union[bytes, BaseException, object]]" = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="layer-decoder", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for chunk in self._chunks:
                self.decoded += len(chunk)
                if self._max is not None and self.decoded > self._max:
                    raise LayerError(f"layer decompresses to more than the limit of {self._max} bytes")
                self._hash.update(chunk)
                if not self._put(chunk):
                    return
            self._put(_EOF)
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def _next_chunk(self) -> Optional[bytes]:
        if self._done:
            return None
        item = self._queue.get()
        if item is _EOF:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]  # the queue holds bytes, _EOF or an exception: both others handled above

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buf[self._pos:]]
            while True:
                chunk = self._next_chunk()
                if chunk is None:
                    break
                parts.append(chunk)
            self._buf, self._pos = b"", 0
            out = b"".join(parts)
        elif self._pos + n <= len(self._buf):
            out = self._buf[self._pos:self._pos + n]
            self._pos += n
        else:
            # Collect whole chunks and join once: no re-copying of a growing buffer.
            parts = [self._buf[self._pos:]]
            have = len(parts[0])
            self._buf, self._pos = b"", 0
            while have < n:
                chunk = self._next_chunk()
                if chunk is None:
                    break
                take = n - have
                if len(chunk) > take:
                    parts.append(chunk[:take])
                    self._buf, self._pos = chunk, take
                    have = n
                else:
                    parts.append(chunk)
                    have += len(chunk)
            out = b"".join(parts)
        self.consumed += len(out)
        return out

    def tell(self) -> int:
        return self.consumed

    def seek(self, offset: int, whence: int = 0) -> int:
        """Forward only (skipping is reading): enough for tarfile reading members in order."""
        if whence != 0 or offset < self.consumed:
            raise LayerError(f"tar parser asked to seek back to {offset} (at {self.consumed}); not a sequential layer")
        while self.consumed < offset:
            if not self.read(min(offset - self.consumed, _OUT_CHUNK)):
                break
        return self.consumed

    def drain(self) -> int:
        """Read (and hash) whatever is left; returns the number of bytes drained."""
        total = 0
        while True:
            data = self.read(_OUT_CHUNK)
            if not data:
                return total
            total += len(data)

    def close(self) -> None:
        """Stop the decoder thread (also when the reader gave up early)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    @property
    def digest(self) -> str:
        """sha256 of everything decoded; final once the stream was drained."""
        return "sha256:" + self._hash.hexdigest()
