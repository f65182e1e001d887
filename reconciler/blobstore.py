"""A content-addressed blob store on local disk.

Blobs live at `<root>/sha256/<2 hex>/<64 hex>`. A blob enters only after it
was verified (by whoever filled it) and fsynced, by rename from a temporary
file, so the store never holds a partial or unverified blob. Two threads that
want the same missing blob share one download. An optional size bound evicts
the least recently used blobs (access time is the file's mtime, touched on use).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, Optional, Set

from .dirfd import fsync_dir
from .errors import BlobStoreError, IntegrityError
from .registry.reference import is_valid_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredBlob:
    """A verified blob on disk."""

    digest: str
    size: int
    path: Path
    downloaded: bool  # False when it was already in the store


class BlobStore:
    """Verified blobs keyed by digest."""

    def __init__(self, root: Path, max_bytes: Optional[int] = None, *, create: bool = True) -> None:
        """`create=False`: touch nothing on disk (no directories, no cleanup)."""
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self._inflight: Dict[str, "Future[None]"] = {}
        self._pinned: Dict[str, int] = {}
        if not create:
            return
        try:
            (self.root / "sha256").mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
        except OSError as exc:
            raise BlobStoreError(f"cannot create blob store at {self.root}: {exc.strerror}") from None
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        # Leftovers of a crashed download are never trusted.
        for leftover in self._tmp.iterdir():
            try:
                leftover.unlink()
            except OSError as exc:
                log.warning("blob store: cannot remove leftover %s: %s", leftover, exc.strerror)

    def path(self, digest: str) -> Path:
        """Where the blob `digest` lives (whether or not it is there)."""
        if not is_valid_digest(digest):
            raise BlobStoreError(f"not a sha256 digest: {digest[:80]!r}")
        hexpart = digest.split(":", 1)[1]
        return self.root / "sha256" / hexpart[:2] / hexpart

    def has(self, digest: str) -> bool:
        """True when the blob is in the store."""
        return self.path(digest).is_file()

    def touch(self, digest: str) -> None:
        """Mark the blob as recently used."""
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            pass

    def read_bytes(self, digest: str) -> bytes:
        """The content of a small blob (manifests, configs)."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobStoreError(f"blob {digest} is not in the store") from None
        self.touch(digest)
        return data

    def put_bytes(self, digest: str, data: bytes) -> StoredBlob:
        """Store a small blob held in memory, verifying its digest."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError(f"content hashes to {actual}, not {digest}")
        return self.ensure(digest, len(data), lambda sink: sink.write(data))

    def ensure(self, digest: str, size: int, fill: Callable[[BinaryIO], object]) -> StoredBlob:
        """Return the blob, calling `fill(sink)` to produce it if it is missing.

        `fill` must write exactly the verified content (RegistryClient.fetch_blob
        does). Concurrent callers for one digest share a single `fill`.
        """
        path = self.path(digest)
        if path.is_file():
            self.touch(digest)
            return StoredBlob(digest, path.stat().st_size, path, downloaded=False)
        if not self._once(digest, lambda: self._fill(digest, size, path, fill), done=path.is_file):
            return StoredBlob(digest, path.stat().st_size, path, downloaded=False)
        self.evict(keep=(digest,))
        return StoredBlob(digest, size, path, downloaded=True)

    def _once(self, digest: str, work: Callable[[], None], done: Callable[[], bool]) -> bool:
        """Run `work` for `digest` unless another thread already is: then wait for
        it (re-raising its failure), or unless `done()` says it was done since the
        caller looked (an owner leaves the in-flight table only once its work is
        in place, so under the lock one of the two shows). True when this call
        did the work."""
        with self._lock:
            waited = self._inflight.get(digest)
            if waited is None and done():
                return False
            if waited is None:
                future: "Future[None]" = Future()
                self._inflight[digest] = future
        if waited is not None:
            waited.result()
            return False
        try:
            work()
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._inflight[digest]
        return True

    def _fill(self, digest: str, size: int, path: Path, fill: Callable[[BinaryIO], object]) -> None:
        fd, tmpname = tempfile.mkstemp(dir=self._tmp, prefix=digest.split(":", 1)[1][:16] + ".")
        try:
            with os.fdopen(fd, "w+b") as sink:
                fill(sink)
                sink.flush()
                if sink.tell() != size:
                    raise IntegrityError(f"blob {digest}: got {sink.tell()} bytes, expected {size}")
                os.fsync(sink.fileno())
            path.parent.mkdir(exist_ok=True)
            os.replace(tmpname, path)
            fsync_dir(path.parent)
        except BaseException:
            try:
                os.unlink(tmpname)
            except FileNotFoundError:
                pass
            raise

    def read_only(self) -> "ReadOnlyBlobStore":
        """The same store for `--dry-run`: reads what is on disk, keeps what it
        fetches in memory, writes nothing."""
        return ReadOnlyBlobStore(self.root)

    def pin(self, digests: Iterable[str]) -> None:
        """Keep these blobs from eviction until `unpin` (they are in use)."""
        with self._lock:
            for d in digests:
                self._pinned[d] = self._pinned.get(d, 0) + 1

    def unpin(self, digests: Iterable[str]) -> None:
        """Release a `pin`."""
        with self._lock:
            for d in digests:
                left = self._pinned.get(d, 0) - 1
                if left > 0:
                    self._pinned[d] = left
                else:
                    self._pinned.pop(d, None)

    def evict(self, keep: Iterable[str] = ()) -> int:
        """Remove least recently used blobs until the store fits `max_bytes`.
        Returns the number of bytes freed."""
        if self.max_bytes is None:
            return 0
        with self._lock:
            protected: Set[str] = set(self._pinned) | set(self._inflight) | set(keep)
        entries = []
        total = 0
        for sub in (self.root / "sha256").iterdir():
            for blob in sub.iterdir():
                try:
                    st = blob.stat()
                except FileNotFoundError:
                    continue  # evicted by another thread meanwhile
                total += st.st_size
                entries.append((st.st_mtime_ns, st.st_size, blob))
        freed = 0
        for _, size, blob in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            if f"sha256:{blob.name}" in protected:
                continue
            try:
                blob.unlink()
                freed += size
            except FileNotFoundError:
                pass
        if freed:
            log.info("blob store: evicted %d bytes of least recently used blobs", freed)
        return freed


class ReadOnlyBlobStore(BlobStore):
    """A blob store that never writes to disk (for `--dry-run`, which may run
    beside a service): blobs already stored are read from disk; blobs it is
    asked to fetch (manifests and configs: the plan needs no layer) are kept in
    memory."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, create=False)
        self._memory: Dict[str, bytes] = {}

    def has(self, digest: str) -> bool:
        return digest in self._memory or super().has(digest)

    def touch(self, digest: str) -> None:
        pass

    def read_bytes(self, digest: str) -> bytes:
        if digest in self._memory:
            return self._memory[digest]
        return super().read_bytes(digest)

    def ensure(self, digest: str, size: int, fill: Callable[[BinaryIO], object]) -> StoredBlob:
        path = self.path(digest)
        if self.has(digest):
            return StoredBlob(digest, len(self._memory[digest]) if digest in self._memory else path.stat().st_size,
                              path, downloaded=False)
        def fetch() -> None:
            sink = io.BytesIO()
            fill(sink)
            if sink.tell() != size:
                raise IntegrityError(f"blob {digest}: got {sink.tell()} bytes, expected {size}")
            with self._lock:
                self._memory[digest] = sink.getvalue()

        # As in the store on disk: concurrent callers for one digest share one download.
        downloaded = self._once(digest, fetch, done=lambda: digest in self._memory)
        return StoredBlob(digest, size, path, downloaded=downloaded)

    def fetched(self) -> Dict[str, bytes]:
        """The blobs it fetched and holds in memory (not on disk), by digest."""
        with self._lock:
            return dict(self._memory)

    def evict(self, keep: Iterable[str] = ()) -> int:
        return 0
