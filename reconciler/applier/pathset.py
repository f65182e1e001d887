"""A set of paths at about 16 bytes a path (a Python set of tuples costs 150):
what keeps the applier's and the undo log's memory small however many
entries a layer has."""

from __future__ import annotations

import hashlib
import os
from array import array
from typing import Tuple

PathKey = Tuple[bytes, ...]

# Keys the path hashes. Random per process, so no layer can be built to make
# two of its paths collide; constant, as every set of one run may share it,
# and never written anywhere.
_PATH_HASH_KEY = os.urandom(16)


class PathSet:
    """A set of paths at about 16 bytes a path, where a Python set of tuples
    costs 150: each path is a keyed 64-bit hash (blake2b with a per-process
    random key), kept in an open-addressing table of 64-bit slots.

    A false "present" needs two of a layer's paths to share 64 bits of a hash
    keyed by a secret: odds of about n²/2⁶⁵ by chance, and no way to aim at one.
    """

    def __init__(self) -> None:
        self._table = array("Q", [0]) * 1024
        self._mask = 1023
        self._used = 0

    @staticmethod
    def _hash(path: PathKey) -> int:
        digest = hashlib.blake2b(b"/".join(path), digest_size=8, key=_PATH_HASH_KEY).digest()
        return int.from_bytes(digest, "little") or 1  # 0 marks an empty slot

    def _slot(self, h: int) -> int:
        """Where `h` is, or the empty slot where it would go (linear probing)."""
        table, mask = self._table, self._mask
        i = h & mask
        while True:
            found = table[i]
            if found == h or found == 0:
                return i
            i = (i + 1) & mask

    def __contains__(self, path: PathKey) -> bool:
        h = self._hash(path)
        return self._table[self._slot(h)] == h

    def __len__(self) -> int:
        return self._used

    def add(self, path: PathKey) -> bool:
        """Add `path`; False when it was there already."""
        h = self._hash(path)
        i = self._slot(h)
        if self._table[i] == h:
            return False
        self._table[i] = h
        self._used += 1
        if self._used * 3 > len(self._table) * 2:
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", [0]) * (len(old) * 2)
        self._mask = len(self._table) - 1
        for h in old:
            if h:
                self._table[self._slot(h)] = h
