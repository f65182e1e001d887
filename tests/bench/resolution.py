"""Symlink-resolution shapes for `python -m tests.bench --resolution SHAPE,...`:
layers whose entries are written through symlinks that are costly to resolve,
each measured against `umoci unpack` like `--big-layer` (see biglayer.py).
Every shape interleaves its files over its links, so no resolved directory
can be reused from one entry to the next as is.

- bomb: 250 links to one 1,601-component `a/../a/../…/a` chain, 10,000 files
  (the shape of issue 19);
- deep-dotdot: 250 links at the bottom of a 250-directory chain, each
  climbing back with 250 `..`, 10,000 files;
- link-chains: 250 chains of 39 links to links ending at a directory,
  10,000 files through the chain heads (40 links per path, the limit);
- absolute-chain: 250 links to the absolute path of a 250-directory chain,
  10,000 files;
- wide: 5,000 links in one directory, each to its own 400-component chain of
  distinct names in a directory of 2,000 subdirectories, one file through
  each (nothing can be reused: each link is resolved once);
- churn: the bomb over 400 distinct names, and after every file one of the
  directories the links go through replaced by a file and made again (so no
  resolution can be kept: every entry walks its link again).
"""

from __future__ import annotations

import tarfile
from typing import Callable, Dict, Iterator

from tests.bench.biglayer import _dir, _file, _symlink

LINKS = 250
FILES = 10_000


def bomb() -> Iterator[tarfile.TarInfo]:
    chain = "/".join(["a", ".."] * 800 + ["a"])  # 1,601 components
    yield _dir("a/")
    for i in range(LINKS):
        yield _symlink(f"l{i:03d}", chain)
    for i in range(FILES):
        yield _file(f"l{i % LINKS:03d}/f{i:06d}", 8)


def deep_dotdot() -> Iterator[tarfile.TarInfo]:
    depth = 250
    chain = ""
    for i in range(depth):
        chain += f"c{i % 10}/"
        yield _dir(chain)
    yield _dir("t/")
    for i in range(LINKS):
        yield _symlink(f"{chain}up{i:03d}", "../" * depth + "t")
    for i in range(FILES):
        yield _file(f"{chain}up{i % LINKS:03d}/f{i:06d}", 8)


def link_chains() -> Iterator[tarfile.TarInfo]:
    yield _dir("d/")
    for c in range(LINKS):
        for k in range(38):
            yield _symlink(f"k{c:03d}-{k:02d}", f"k{c:03d}-{k + 1:02d}")
        yield _symlink(f"k{c:03d}-38", "d")
    for i in range(FILES):
        yield _file(f"k{i % LINKS:03d}-00/f{i:06d}", 8)


def absolute_chain() -> Iterator[tarfile.TarInfo]:
    chain = ""
    for i in range(250):
        chain += f"c{i % 10}/"
        yield _dir(chain)
    for i in range(LINKS):
        yield _symlink(f"l{i:03d}", "/" + chain.rstrip("/"))
    for i in range(FILES):
        yield _file(f"l{i % LINKS:03d}/f{i:06d}", 8)


def wide() -> Iterator[tarfile.TarInfo]:
    dirs, links = 2000, 5000
    yield _dir("w/")
    for j in range(dirs):
        yield _dir(f"w/x{j:04d}/")
    for i in range(links):
        chain = "/".join(part for j in range(200) for part in (f"x{(i * 7 + j) % dirs:04d}", ".."))
        yield _symlink(f"w/l{i:04d}", chain + f"/x{i % dirs:04d}")
    for i in range(links):
        yield _file(f"w/l{i:04d}/f{i:06d}", 8)


def churn() -> Iterator[tarfile.TarInfo]:
    names = 400
    chain = "/".join(part for j in range(names) for part in (f"x{j:03d}", "..")) + "/a"
    yield _dir("a/")
    for j in range(names):
        yield _dir(f"x{j:03d}/")
    for i in range(LINKS):
        yield _symlink(f"l{i:03d}", chain)
    for i in range(FILES):
        yield _file(f"l{i % LINKS:03d}/f{i:06d}", 8)
        yield _file(f"x{i % names:03d}", 1)
        yield _dir(f"x{i % names:03d}/")


SHAPES: Dict[str, Callable[[], Iterator[tarfile.TarInfo]]] = {
    "bomb": bomb, "deep-dotdot": deep_dotdot, "link-chains": link_chains, "absolute-chain": absolute_chain,
    "wide": wide, "churn": churn,
}
