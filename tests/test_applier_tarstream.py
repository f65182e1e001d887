"""The hardened tar stream (reconciler/applier/tarstream.py) on its own.

It overrides private tarfile methods that Python releases have changed (the
CVE-2025-13462 fix moved where a header chain is read; 3.9's `next()` seeks
back at an empty archive's end), so these tests pin what it yields and
refuses, not how tarfile gets there: they hold on every Python we run
(3.9, 3.11, 3.13).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import List, Tuple

import pytest

from reconciler.applier.decompress import DigestingReader
from reconciler.applier.tarstream import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    HeaderGuard,
    check_end_of_archive,
    drain,
    members,
    open_tar,
)
from reconciler.errors import HostileLayerError, LayerError

TAR = "application/vnd.oci.image.layer.v1.tar"
END = b"\0" * 1024


def read_all(data: bytes) -> Tuple[List[tarfile.TarInfo], str]:
    """Everything the applier does with the stream but apply: the members
    (with tarfile's list checked empty after each), the end checked, the rest
    drained. Returns the members and the stream's digest."""
    reader = DigestingReader(io.BytesIO(data), TAR)
    try:
        guard = HeaderGuard(reader)
        tf = open_tar(guard)
        seen: List[tarfile.TarInfo] = []
        if tf is not None:
            for member in members(tf, guard):
                assert tf.members == [], "tarfile kept a member"
                seen.append(member)
            check_end_of_archive(tf)
            drain(tf)
        reader.drain()
        return seen, reader.digest
    finally:
        reader.close()


def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(fmt)


def entry(name: str, data: bytes = b"") -> bytes:
    return header(name, len(data)) + data + b"\0" * (-len(data) % 512)


def gnu_long_names(count: int) -> bytes:
    """`count` GNU long-name headers in a row (each names the next header)."""
    chain = b""
    for i in range(count):
        name = f"name-{i}".encode() + b"\0"
        chain += header("././@LongLink", len(name), tarfile.GNUTYPE_LONGNAME, tarfile.GNU_FORMAT)
        chain += name + b"\0" * (-len(name) % 512)
    return chain


def test_members_come_in_order_and_are_not_kept_by_tarfile():
    data = entry("a", b"1") + entry("b", b"22") + entry("c") + END
    seen, _ = read_all(data)
    assert [(m.name, m.size) for m in seen] == [("a", 1), ("b", 2), ("c", 0)]


def test_the_digest_covers_every_byte_including_what_follows_the_end():
    data = entry("a", b"1") + END + b"\0" * 8192
    _, digest = read_all(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("data", [b"", END, b"\0" * 10240], ids=["0 bytes", "end blocks", "a full record"])
def test_an_empty_layer_has_no_member(data):
    seen, digest = read_all(data)
    assert seen == []
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_something_else_than_a_tar_is_refused():
    with pytest.raises(LayerError, match="not a tar archive"):
        read_all(b"this is not a tar archive, only some text" * 20)


def test_a_global_pax_header_applies_to_no_member():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"path": "evil", "uid": "4242", "mtime": "1"}) as tar:
        for name in ("first", "second"):
            info = tarfile.TarInfo(name)
            info.mtime = 1_000_000
            tar.addfile(info, io.BytesIO(b""))
    seen, _ = read_all(out.getvalue())
    assert [(m.name, m.uid, m.mtime) for m in seen] == [("first", 0, 1_000_000), ("second", 0, 1_000_000)]


def test_a_header_chain_within_the_limit_is_read():
    name = "long/" * 40 + "file"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    # Global PAX headers (ignored, but each one header of the chain) before a
    # GNU long-name member (two headers): one header short of the limit.
    globals_ = tarfile.TarInfo.create_pax_global_header({"comment": "chained"}) * (MAX_HEADERS - 3)
    seen, _ = read_all(globals_ + out.getvalue())
    assert [(m.name, m.size) for m in seen] == [(name, 2)]


@pytest.mark.parametrize("position", ["first", "later"])
def test_a_header_chain_over_the_limit_is_refused(position):
    chain = gnu_long_names(MAX_HEADERS + 1) + header("short")
    data = (chain if position == "first" else entry("before") + chain) + END
    with pytest.raises(LayerError, match="header count limit"):
        read_all(data)


@pytest.mark.parametrize("position", ["first", "later"])
def test_headers_over_the_size_limit_are_refused(position):
    info = tarfile.TarInfo("big-header")
    info.pax_headers = {"comment": "x" * (MAX_HEADER_BYTES + 1)}
    big = info.tobuf(tarfile.PAX_FORMAT)
    data = (big if position == "first" else entry("before") + big) + END
    with pytest.raises(LayerError, match="header size limit"):
        read_all(data)


def test_member_data_is_not_counted_as_headers():
    content = b"y" * (MAX_HEADER_BYTES + 4096)
    seen, _ = read_all(entry("big-file", content) + entry("after") + END)
    assert [(m.name, m.size) for m in seen] == [("big-file", len(content)), ("after", 0)]


def test_a_corrupt_header_after_a_member_is_an_error():
    with pytest.raises(LayerError, match="invalid tar header"):
        read_all(entry("first") + b"garbage!" * 64 + END)


def test_a_stream_cut_inside_a_header_is_an_error():
    with pytest.raises(LayerError, match="truncated inside a header"):
        read_all(entry("first") + header("second")[:300])


def test_a_single_zero_block_followed_by_a_header_is_refused():
    with pytest.raises(HostileLayerError, match="single zero block"):
        read_all(entry("first") + b"\0" * 512 + entry("hidden") + END)
