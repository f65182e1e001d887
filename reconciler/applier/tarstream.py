"""The tar stream of a layer, hardened: what tarfile reads of it is bounded
and what it tolerates is refused where Go's archive/tar (what built most
images) would refuse it.

tarfile offers no hooks for this, so `_TarInfo` overrides three of its private
parsing methods (`fromtarfile`, `_proc_member`, `_proc_pax`, with `_block`)
and `members()` empties `TarFile.members`. Python releases have moved work
between these (the CVE-2025-13462 fix reads a chain's later headers past
`fromtarfile`; 3.9's `next()` seeks back at an empty archive's end): the tests
in tests/test_applier_tarstream.py pin the outcomes on every Python we run.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO, Iterator, Optional, cast

from ..errors import HostileLayerError, LayerError
from .decompress import DigestingReader

# Go's archive/tar refuses special headers (PAX, GNU long names) over 1 MiB;
# one entry's headers together may take this much. Bounds both the memory a
# header costs and the sparse maps tarfile builds from extension blocks.
MAX_HEADER_BYTES = 4 << 20
# Header blocks one entry may chain (global PAX, PAX, long name, long link…):
# tarfile parses a chain by recursion, so an endless one would overflow the stack.
MAX_HEADERS = 16
_DRAIN_CHUNK = 1 << 20


class HeaderGuard:
    """The tar stream as tarfile sees it: while a member's headers are parsed
    (from `start_member` to `end_member`), reads beyond MAX_HEADER_BYTES
    are refused before they happen; member data passes freely."""

    def __init__(self, raw: DigestingReader) -> None:
        self.raw = raw
        self.header_left = MAX_HEADER_BYTES
        self.headers = 0
        self.member_offset = 0
        self.parsing = True  # tarfile.open parses the first member at once

    def start_member(self) -> None:
        """A member's headers come next."""
        self.header_left, self.headers, self.member_offset = MAX_HEADER_BYTES, 0, self.raw.consumed
        self.parsing = True

    def end_member(self) -> None:
        """Its headers are parsed: what follows is data."""
        self.parsing = False

    def note_header(self) -> None:
        """One more header block in this member's chain."""
        self.headers += 1
        if self.parsing and self.headers > MAX_HEADERS:
            raise LayerError(f"the tar entry at offset {self.member_offset} chains more than {MAX_HEADERS} "
                             "headers (the header count limit); the layer is corrupt or hostile")

    def read(self, n: int = -1) -> bytes:
        """Read on, refusing a header read past the header size limit."""
        if self.parsing:
            if n is None or n < 0 or n > self.header_left:
                raise LayerError(f"the tar entry at offset {self.member_offset} has more than {MAX_HEADER_BYTES} "
                                 "bytes of headers (the header size limit); the layer is corrupt or hostile")
            self.header_left -= n
        return self.raw.read(n)

    def tell(self) -> int:
        """The offset in the uncompressed stream."""
        return self.raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        """Forward only (the reader refuses going back)."""
        return self.raw.seek(offset, whence)


class _TarInfo(tarfile.TarInfo):
    """tarfile's member parser with three changes: global PAX headers are
    ignored (tarfile would apply them to later members, unlike Go's archive/tar),
    the last header block read is kept to tell a clean end of archive from
    a corrupt header (tarfile stops silently on both), and header chains are
    counted (through HeaderGuard, when that is the stream)."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> _TarInfo:
        stream = cast(HeaderGuard, tf.fileobj)
        buf = stream.read(tarfile.BLOCKSIZE)
        tf.last_header_block = buf  # type: ignore[attr-defined]  # ours, read by check_end_of_archive
        obj = cls.frombuf(buf, tf.encoding, tf.errors)
        obj.offset = stream.tell() - tarfile.BLOCKSIZE
        return cast(_TarInfo, obj._proc_member(tf))  # the members of a chain are all of this class

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        # Counted here, once per header block: tarfiles with the CVE-2025-13462
        # fix (3.9.2-1+deb11u7, newer 3.x) read a chain's later headers with
        # _fromtarfile, past fromtarfile.
        if isinstance(tf.fileobj, HeaderGuard):
            tf.fileobj.note_header()
        return super()._proc_member(tf)  # type: ignore[misc,no-any-return]  # tarfile private, not in typeshed

    def _proc_pax(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.XGLTYPE:
            cast(HeaderGuard, tf.fileobj).read(self._block(self.size))  # type: ignore[attr-defined]  # tarfile private
            return self.fromtarfile(tf)
        return super()._proc_pax(tf)  # type: ignore[misc,no-any-return]  # tarfile private, not in typeshed


def open_tar(guard: HeaderGuard) -> Optional[tarfile.TarFile]:
    """The layer as a tarfile reading through `guard`; None for a 0-byte layer
    (an empty layer); LayerError when it is not a tar archive."""
    try:
        # "r:" over a forward-only seekable reader: tarfile reads members
        # straight from it, without the extra buffer copies of stream mode.
        return tarfile.open(fileobj=cast(BinaryIO, guard), mode="r:", tarinfo=_TarInfo, encoding="utf-8",
                            errors="surrogateescape")
    except tarfile.ReadError as exc:
        if guard.raw.consumed == 0:
            return None
        raise LayerError(f"not a tar archive: {exc}") from None


def members(tf: tarfile.TarFile, guard: HeaderGuard) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order, each forgotten by tarfile once read.

    tarfile's own iteration appends every TarInfo to `tf.members` (for
    getmember() and hardlink lookups through tarfile, which the applier never
    uses): a million entries would hold hundreds of MB.
    """
    if tf.firstmember is None and tf.offset == 0:  # type: ignore[attr-defined]  # tarfile private, not in typeshed
        # No member at all (tarfile.open found the end): Python 3.9's next()
        # would seek back to offset -1 to look again (later ones return None).
        return
    while True:
        guard.start_member()
        try:
            member = tf.next()
        except ValueError as exc:  # some malformed sparse maps escape tarfile's own errors
            raise LayerError(f"corrupt tar header at offset {guard.member_offset}: {exc}") from None
        finally:
            guard.end_member()
        tf.members.clear()  # type: ignore[attr-defined]  # tarfile's list behind getmembers(), not in typeshed
        if member is None:
            return
        yield member


def check_end_of_archive(tf: tarfile.TarFile) -> None:
    """Match Go's archive/tar: a corrupt header is an error, and so is a zero
    block followed by a header (tarfile would stop silently at both)."""
    last = getattr(tf, "last_header_block", b"")
    if len(last) == tarfile.BLOCKSIZE and last.count(0) != tarfile.BLOCKSIZE:
        raise LayerError(f"invalid tar header at offset {tf.offset}; the layer is corrupt")
    if 0 < len(last) < tarfile.BLOCKSIZE:
        raise LayerError("tar stream is truncated inside a header")
    if len(last) == tarfile.BLOCKSIZE:
        following = cast(HeaderGuard, tf.fileobj).read(tarfile.BLOCKSIZE)
        if following and following.count(0) != len(following):
            raise HostileLayerError("tar stream has a single zero block followed by more headers "
                                    "(parsers disagree on such archives)")


def drain(tf: tarfile.TarFile) -> None:
    """Read the rest of the stream through tarfile's own buffer: the DiffID covers every byte."""
    while cast(HeaderGuard, tf.fileobj).read(_DRAIN_CHUNK):
        pass
