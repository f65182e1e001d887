"""The digest-keyed blob store: atomic, verified, single-flight, LRU-bounded."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import List

import pytest

from reconciler.blobstore import BlobStore
from reconciler.errors import IntegrityError


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_and_read(tmp_path):
    store = BlobStore(tmp_path)
    stored = store.put_bytes(digest(b"abc"), b"abc")
    assert stored.downloaded and store.read_bytes(digest(b"abc")) == b"abc"
    assert store.put_bytes(digest(b"abc"), b"abc").downloaded is False
    with pytest.raises(IntegrityError):
        store.put_bytes(digest(b"abc"), b"abd")


def test_failed_fill_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path)

    def fill(sink):
        sink.write(b"partial")
        raise IntegrityError("boom")

    with pytest.raises(IntegrityError):
        store.ensure(digest(b"x"), 1, fill)
    assert not store.has(digest(b"x"))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_wrong_size_is_refused(tmp_path):
    with pytest.raises(IntegrityError, match="expected 5"):
        BlobStore(tmp_path).ensure(digest(b"abc"), 5, lambda sink: sink.write(b"abc"))


def test_concurrent_requests_share_one_fill(tmp_path):
    store = BlobStore(tmp_path)
    calls = []
    gate = threading.Event()

    def fill(sink):
        calls.append(1)
        gate.wait(10)
        sink.write(b"shared")

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.ensure(digest(b"shared"), 6, fill)))
               for _ in range(5)]
    for t in threads:
        t.start()
    deadline = threading.Event()
    # wait (with a deadline) until the owner is inside fill, then let it finish
    for _ in range(1000):
        if calls:
            break
        deadline.wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert len(results) == 5
    assert sum(r.downloaded for r in results) == 1


def test_leftover_temporaries_are_removed_at_start(tmp_path):
    BlobStore(tmp_path)
    (tmp_path / "tmp" / "crashed.partial").write_bytes(b"half")
    BlobStore(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_lru_eviction_keeps_recent_and_pinned(tmp_path):
    unbounded = BlobStore(tmp_path)
    blobs = [bytes([65 + i]) * 10 for i in range(3)]
    for i, b in enumerate(blobs):
        unbounded.put_bytes(digest(b), b)
        os.utime(unbounded.path(digest(b)), ns=(i * 10**9, i * 10**9))
    store = BlobStore(tmp_path, max_bytes=25)
    store.pin([digest(blobs[0])])
    store.evict()
    assert store.has(digest(blobs[0]))  # pinned, though oldest
    assert not store.has(digest(blobs[1]))
    assert store.has(digest(blobs[2]))


def test_a_caller_that_looked_before_the_fill_ended_does_not_fill_again(tmp_path, monkeypatch):
    """It saw no file, then came to the in-flight table after the owner had
    left it: the blob is there now, so it is not downloaded a second time."""
    from pathlib import Path

    store = BlobStore(tmp_path)
    store.ensure(digest(b"shared"), 6, lambda sink: sink.write(b"shared"))
    real_is_file = Path.is_file
    looks: List[int] = []

    def is_file(self: Path) -> bool:
        looks.append(1)
        return False if len(looks) == 1 else real_is_file(self)  # the first look came too early

    monkeypatch.setattr(Path, "is_file", is_file)
    calls: List[int] = []
    stored = store.ensure(digest(b"shared"), 6, lambda sink: calls.append(1) or sink.write(b"shared"))
    assert calls == [] and not stored.downloaded
