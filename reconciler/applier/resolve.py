"""In-root path resolution: open a directory of the image as if the root were
`/`, following the image's symlinks by hand.

Every path is resolved component by component from an fd on the root, with
`O_NOFOLLOW`; symlinks met on the way are resolved by hand (absolute targets
re-rooted, `..` clamped at the root, at most `max_symlinks` links like the
kernel), and the final component is never followed.

Resolution work is bounded per path (`LayerLimits.max_resolve_steps`
components, link targets included) and not paid twice within a layer: what
each walked name is, where each symlink led, and the last path's
symlink-free part are kept, each forgotten when the layer removes anything
it relied on (only a removal changes what an existing path resolves to). A
kept resolution is charged what it cost, so the limits refuse the same paths
whatever came before.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from ..dirfd import PATH_FLAGS
from ..errors import HostileLayerError, LayerError
from .names import show
from .options import LayerLimits
from .pathset import PathKey

# Symlink resolutions kept from one entry to the next, and the paths they
# depend on (all of them together): least recently used ones go first.
_LINK_CACHE_ENTRIES = 4096
_LINK_CACHE_PATHS = 1 << 16
# What the names walked are is kept up to about this many bytes (then dropped, and kept anew).
_ENTRIES_BYTES = 8 << 20
_ENTRY_COST = 200
# Directories a walk has seen are reopened this many bytes of path per open.
_KNOWN_PATH_BYTES = 2048

DirId = Tuple[int, int]  # (st_dev, st_ino)
# What a name is: (S_IFLNK, target bytes), (S_IFDIR, its DirId) or (0, None).
_Known = Tuple[int, object]
# Makes the missing directory `name` in the directory fd (at the real path given).
MakeDir = Callable[[int, PathKey, bytes], None]


def path_key(parent_key: int, name: bytes) -> int:
    """The identity of a path, from its parent's: a hash, so equal paths share it
    (a collision only costs a needless cache invalidation, never a wrong result)."""
    return hash((parent_key, name))


def path_keys(path: PathKey) -> List[int]:
    """path_key of every non-empty prefix of `path`, shortest first."""
    keys, key = [], 0
    for name in path:
        key = path_key(key, name)
        keys.append(key)
    return keys


@dataclass(frozen=True)
class _LinkResolution:
    """Where a symlink's target led, as a directory: kept to skip walking it again."""

    real: PathKey
    ids: Tuple[DirId, ...]  # of the root and of each directory of `real`
    keys: Tuple[int, ...]  # path_key of the root (0) and of each prefix of `real`
    steps: int  # components walked in the target (nested links included): charged again on reuse
    links: int  # nested links followed: charged again on reuse
    # Every path the resolution relied on: the link, its ancestors, each
    # directory and link entered. Removing any of them makes it stale.
    paths: FrozenSet[int]


@dataclass
class _Frame:
    """A symlink target being walked: done when the pending stack is back to `mark`."""

    mark: int
    link: PathKey
    steps: int
    links: int
    paths: Set[int]


class _Cursor:
    """Where one path resolution stands: the real path walked so far (with the
    identity of each directory) and one fd on a directory along it, moved
    lazily. Stepping into a directory already looked at, or out with `..`,
    costs no system call until something must be looked up where we are."""

    def __init__(self, root_fd: int, root_id: DirId) -> None:
        self.root_fd = root_fd
        self.real: List[bytes] = []
        self.ids: List[DirId] = [root_id]
        self.keys: List[int] = [0]
        self.fd = os.dup(root_fd)
        self.fd_path: List[bytes] = []  # what self.fd is open on
        self.fd_ids: List[DirId] = [root_id]
        self.common = 0  # components `real` and `fd_path` share

    def close(self) -> None:
        """Release the fd (unless taken)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def down(self, name: bytes, ident: DirId) -> None:
        """Into the directory `name` (its id `ident`)."""
        self.real.append(name)
        self.ids.append(ident)
        self.keys.append(path_key(self.keys[-1], name))

    def up(self) -> None:
        """`..`: clamped at the root."""
        if self.real:
            self.real.pop()
            self.ids.pop()
            self.keys.pop()
            self.common = min(self.common, len(self.real))

    def to_root(self) -> None:
        """Back to the root (an absolute symlink target)."""
        del self.real[:]
        del self.ids[1:]
        del self.keys[1:]
        self.common = 0

    def jump(self, found: _LinkResolution) -> None:
        """Where a kept symlink resolution led."""
        self.real, self.ids, self.keys = list(found.real), list(found.ids), list(found.keys)
        common = 0
        for a, b in zip(self.real, self.fd_path):
            if a != b:
                break
            common += 1
        self.common = common

    def start_at(self, prefix: PathKey, ids: List[DirId], keys: List[int], fd: int, depth: int) -> None:
        """Begin at prefix[:depth], with `fd` (now the cursor's) open on `prefix`."""
        self.close()
        self.real, self.ids, self.keys = list(prefix[:depth]), ids[:depth + 1], keys[:depth + 1]
        self.fd, self.fd_path, self.fd_ids, self.common = fd, list(prefix), list(ids), depth

    def here(self) -> int:
        """An fd on the directory at `real` (owned by the cursor)."""
        climb = len(self.fd_path) - self.common
        if climb:
            if climb <= 2:
                self._climb(climb)
            else:
                self._reset()
        self._descend()
        self.common = len(self.real)
        return self.fd

    def _climb(self, levels: int) -> None:
        """`..` from the fd, `levels` times. Each parent must be the directory we
        came down through (only a concurrent rename could make it another);
        if not, start from the root after all."""
        for _ in range(levels):
            parent = os.open(b"..", PATH_FLAGS, dir_fd=self.fd)
            os.close(self.fd)
            self.fd = parent
            self.fd_path.pop()
            self.fd_ids.pop()
            st = os.fstat(parent)
            if (st.st_dev, st.st_ino) != self.fd_ids[-1]:
                self._reset()
                return

    def _reset(self) -> None:
        fd = os.dup(self.root_fd)
        os.close(self.fd)
        self.fd = fd
        self.fd_path, self.fd_ids = [], self.fd_ids[:1]

    def _descend(self) -> None:
        """The fd from `fd_path` (a prefix of `real`) down to `real`, whose
        directories the walk has seen: several at a time, each group checked by
        the (dev, ino) the walk found at its end (a directory has one name, so
        the same inode is the same place, whatever the kernel followed to get
        there); a group that does not end there is walked one O_NOFOLLOW
        component at a time."""
        i, depth = len(self.fd_path), len(self.real)
        while i < depth:
            j, size = i + 1, len(self.real[i])
            while j < depth and size + 1 + len(self.real[j]) <= _KNOWN_PATH_BYTES:
                size += 1 + len(self.real[j])
                j += 1
            child = os.open(b"/".join(self.real[i:j]), PATH_FLAGS, dir_fd=self.fd)
            if j - i > 1:
                st = os.fstat(child)
                if (st.st_dev, st.st_ino) != self.ids[j]:
                    os.close(child)
                    j = i + 1
                    child = os.open(self.real[i], PATH_FLAGS, dir_fd=self.fd)
            os.close(self.fd)
            self.fd = child
            self.fd_path.extend(self.real[i:j])
            self.fd_ids.extend(self.ids[i + 1:j + 1])
            i = j

    def take(self) -> int:
        """The fd on `real`, now the caller's."""
        fd = self.here()
        self.fd = -1
        return fd


class _Walk:
    """One resolution in progress: the cursor, the components still to walk
    (the next one last: a symlink's target is pushed in O(its length),
    whatever is pending behind it), the symlink targets being walked
    (innermost last) and what the walk cost so far."""

    __slots__ = ("parts", "cursor", "pending", "frames", "steps", "links", "plain_kept")

    def __init__(self, parts: PathKey, cursor: _Cursor, steps: int) -> None:
        self.parts = parts
        self.cursor = cursor
        self.pending = list(reversed(parts[steps:]))
        self.frames: List[_Frame] = []
        self.steps = steps
        self.links = 0
        # Until the first symlink, the walk is the path's own names: the part to keep.
        self.plain_kept = False


class Resolver:
    """Opens directories of the tree under `root_fd` by their in-image paths,
    keeping what it learns for the next entries of the layer. The applier
    tells it of every removal (`removing`), the one change that can make what
    it keeps stale. `make_dir` creates a missing directory when asked to."""

    def __init__(self, root_fd: int, limits: LayerLimits, make_dir: MakeDir) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self._make_dir = make_dir
        root_st = os.fstat(root_fd)
        self.root_id: DirId = (root_st.st_dev, root_st.st_ino)
        # The last directory resolved (entries come grouped by directory):
        # (entry path, fd, real path). Any removal drops it, as only a removal
        # can change what an existing path resolves to.
        self._last_dir: Optional[Tuple[PathKey, int, PathKey]] = None
        # The longest leading part of the last path walked that held no symlink:
        # (those names, ids and keys of its directories, an fd on it). The next
        # path starts from what it shares with it (entries come sorted, or
        # nearly). Any removal drops it, like `_last_dir`.
        self._plain: Optional[Tuple[PathKey, List[DirId], List[int], int]] = None
        # What each name in each directory walked is (by the directory's
        # (dev, ino)): a symlink and its target, a directory and its id, or
        # something else. A removal drops the name and, for a directory, all
        # that is known under it (an inode number may come back for another
        # directory); `_below` says which directories hold which.
        self._entries: Dict[DirId, Dict[bytes, _Known]] = {}
        self._below: Dict[DirId, Set[DirId]] = {}
        self._entries_cost = 0
        # Symlinks resolved in this layer (by real path) and, for each path
        # they relied on (by path_key), which of them did: a removal there
        # forgets them. Nothing but a removal changes what an existing path resolves to.
        self._links: "OrderedDict[PathKey, _LinkResolution]" = OrderedDict()
        self._link_deps: Dict[int, Set[PathKey]] = {}
        self._link_paths = 0

    def close(self) -> None:
        """Release the cached directory fds."""
        self._forget_dir()

    def _forget_dir(self) -> None:
        if self._last_dir is not None:
            os.close(self._last_dir[1])
            self._last_dir = None
        if self._plain is not None:
            os.close(self._plain[3])
            self._plain = None

    def removing(self, parent_fd: int, name: bytes, st: os.stat_result, path: PathKey) -> None:
        """`name` in `parent_fd` (lstat `st`, real path `path`) is about to be
        removed: forget everything that relied on it."""
        self._forget_dir()
        self._forget_links(path)
        self._forget_entry(parent_fd, name, st)

    def resolve_dir(self, parts: PathKey, create: bool) -> Tuple[Optional[int], PathKey]:
        """Open the directory `parts` inside the root, following symlinks in-root.

        Returns (fd, real path) or (None, ()) when a component is missing and
        `create` is false. Missing directories are created 0755 when `create`.
        """
        last = self._last_dir
        if last is not None and last[0] == parts:
            return os.dup(last[1]), last[2]
        fd, real = self._resolve_dir(parts, create)
        if fd is not None:
            if self._last_dir is not None:
                os.close(self._last_dir[1])
            self._last_dir = (parts, os.dup(fd), real)
        return fd, real

    def reopen(self, real: PathKey) -> int:
        """Open a real path (no symlinks expected) from the root."""
        fd = os.dup(self.root_fd)
        try:
            for name in real:
                new_fd = os.open(name, PATH_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = new_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- one walk ------------------------------------------------------------

    def _resolve_dir(self, parts: PathKey, create: bool) -> Tuple[Optional[int], PathKey]:
        cursor = _Cursor(self.root_fd, self.root_id)
        try:
            walk = _Walk(parts, cursor, self._start_from_plain(cursor, parts))
            if not self._walk(walk, create):
                return None, ()
            if not walk.plain_kept:
                self._keep_plain(cursor)
            return cursor.take(), tuple(cursor.real)
        finally:
            cursor.close()

    def _start_from_plain(self, cursor: _Cursor, parts: PathKey) -> int:
        """Begin where the last path's symlink-free part and this one part:
        those components cost what walking them would (the limits hold).
        Returns how many components that skips."""
        plain = self._plain
        if plain is None:
            return 0
        shared, most = 0, min(len(plain[0]), len(parts))
        while shared < most and plain[0][shared] == parts[shared]:
            shared += 1
        if shared:
            cursor.start_at(plain[0], plain[1], plain[2], os.dup(plain[3]), shared)
        return shared

    def _walk(self, walk: _Walk, create: bool) -> bool:
        """Walk the pending components to the end: True there, False where one
        is missing (or not a directory) and not `create`."""
        cursor, pending, frames = walk.cursor, walk.pending, walk.frames
        entries, limits = self._entries, self.limits
        while True:
            while frames and len(pending) == frames[-1].mark:
                self._keep_link(frames.pop(), cursor, walk.steps, walk.links, frames)
            if not pending:
                return True
            name = pending.pop()
            if name in (b"", b"."):
                continue
            walk.steps += 1
            if walk.steps > limits.max_resolve_steps:
                raise HostileLayerError(self._over_steps(walk.parts))
            if name == b"..":
                cursor.up()
                continue
            here = entries.get(cursor.ids[-1])
            known = None if here is None else here.get(name)
            if known is None:
                known = self._look_up(cursor, name, create)
                if known is None:
                    return False
                self._note_entry(cursor.ids, name, known)
            kind, value = known
            if kind == stat.S_IFDIR:
                if pending and pending[-1] == b".." and self._skip_in_and_out(walk, name):
                    continue
                assert isinstance(value, tuple)
                cursor.down(name, value)
                if frames:
                    frames[-1].paths.add(cursor.keys[-1])
                if len(cursor.real) > limits.max_depth:
                    raise LayerError(f"{show(walk.parts)} resolves deeper than the depth limit of "
                                     f"{limits.max_depth} directories")
            elif kind == stat.S_IFLNK:
                assert isinstance(value, bytes)
                self._enter_link(walk, name, value)
            elif create:
                raise LayerError(f"{show(walk.parts)}: {show(tuple(cursor.real) + (name,))} is not a directory")
            else:
                return False

    def _skip_in_and_out(self, walk: _Walk, name: bytes) -> bool:
        """`dir/..` (the directory `name` next) is where we are: no need to step
        in and out. False where it must be walked after all (at the end of a
        symlink's target, or at the depth limit)."""
        frames = walk.frames
        if (frames and len(walk.pending) == frames[-1].mark) or len(walk.cursor.real) >= self.limits.max_depth:
            return False
        walk.pending.pop()
        walk.steps += 1
        if walk.steps > self.limits.max_resolve_steps:
            raise HostileLayerError(self._over_steps(walk.parts))
        if frames:
            frames[-1].paths.add(path_key(walk.cursor.keys[-1], name))
        return True

    def _enter_link(self, walk: _Walk, name: bytes, target: bytes) -> None:
        """The symlink `name` where the cursor stands: jump to where it led
        before, or push its target to walk."""
        cursor, limits = walk.cursor, self.limits
        if not walk.plain_kept:
            walk.plain_kept = True
            self._keep_plain(cursor)
        walk.links += 1
        if walk.links > limits.max_symlinks:
            raise HostileLayerError(self._too_many_links(walk.parts))
        link = tuple(cursor.real) + (name,)
        done = self._links.get(link)
        if done is not None:
            # Resolved before and nothing it relied on was removed since:
            # the same walk, charged the same, without the system calls.
            self._links.move_to_end(link)
            walk.steps += done.steps
            walk.links += done.links
            if walk.steps > limits.max_resolve_steps:
                raise HostileLayerError(self._over_steps(walk.parts))
            if walk.links > limits.max_symlinks:
                raise HostileLayerError(self._too_many_links(walk.parts))
            cursor.jump(done)
            if walk.frames:
                walk.frames[-1].paths.update(done.paths)
            return
        walk.frames.append(_Frame(len(walk.pending), link, walk.steps, walk.links,
                                  set(cursor.keys[1:]) | {path_key(cursor.keys[-1], name)}))
        if target.startswith(b"/"):
            cursor.to_root()
        walk.pending.extend(reversed(target.split(b"/")))

    def _over_steps(self, parts: PathKey) -> str:
        return (f"resolving {show(parts)[:200]} walks more than {self.limits.max_resolve_steps} path components "
                "(the resolution limit), symlink targets included")

    def _too_many_links(self, parts: PathKey) -> str:
        return (f"too many levels of symbolic links (more than {self.limits.max_symlinks}, the symlink limit) "
                f"resolving {show(parts)}")

    def _look_up(self, cursor: _Cursor, name: bytes, create: bool) -> Optional[_Known]:
        """What `name` is where the cursor stands: (S_IFLNK, target), (S_IFDIR,
        its id) or (0, None) for anything else. None when it is missing and not
        `create`; with `create`, a missing one is made a directory."""
        fd = cursor.here()
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            if not create:
                return None
            self._make_dir(fd, tuple(cursor.real), name)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return stat.S_IFLNK, os.readlink(name, dir_fd=fd)
        if stat.S_ISDIR(st.st_mode):
            return stat.S_IFDIR, (st.st_dev, st.st_ino)
        return 0, None

    def _keep_plain(self, cursor: _Cursor) -> None:
        """Where the cursor stands is the symlink-free leading part of the path
        being walked: keep it for the next one."""
        fd = os.dup(cursor.here())
        if self._plain is not None:
            os.close(self._plain[3])
        self._plain = (tuple(cursor.real), list(cursor.ids), list(cursor.keys), fd)

    # -- what names are ------------------------------------------------------

    def _note_entry(self, ids: List[DirId], name: bytes, known: _Known) -> None:
        """Keep what `name` is in the directory ids[-1] (`ids`: its ancestors' ids, the root first)."""
        cost = _ENTRY_COST + len(name) + (len(known[1]) if isinstance(known[1], bytes) else 0)
        if self._entries_cost + cost > _ENTRIES_BYTES:
            self._entries.clear()
            self._below.clear()
            self._entries_cost = 0
        here = self._entries.get(ids[-1])
        if here is None:
            here = self._entries[ids[-1]] = {}
            # Which directories hold which: removing one forgets all that is known under it.
            for i in range(len(ids) - 1, 0, -1):
                children = self._below.setdefault(ids[i - 1], set())
                if ids[i] in children:
                    break
                children.add(ids[i])
        here[name] = known
        self._entries_cost += cost

    def _forget_entry(self, parent_fd: int, name: bytes, st: os.stat_result) -> None:
        """`name` in `parent_fd` (lstat `st`) is being removed."""
        if not self._entries:
            return
        parent_st = os.fstat(parent_fd)
        parent_id = (parent_st.st_dev, parent_st.st_ino)
        here = self._entries.get(parent_id)
        if here is not None:
            here.pop(name, None)
        if stat.S_ISDIR(st.st_mode):
            self._below.get(parent_id, set()).discard((st.st_dev, st.st_ino))
            doomed = [(st.st_dev, st.st_ino)]
            while doomed:
                gone = doomed.pop()
                self._entries.pop(gone, None)
                doomed.extend(self._below.pop(gone, ()))

    # -- the symlink cache ---------------------------------------------------

    def _keep_link(self, frame: _Frame, cursor: _Cursor, steps: int, links: int, frames: List[_Frame]) -> None:
        """A symlink's target is walked: keep where it led and what it relied on."""
        if frames:
            frames[-1].paths.update(frame.paths)
        if len(frame.paths) > _LINK_CACHE_PATHS // 4:
            return  # too big to keep: walked again next time (within the step limit)
        found = _LinkResolution(tuple(cursor.real), tuple(cursor.ids), tuple(cursor.keys),
                                steps - frame.steps, links - frame.links, frozenset(frame.paths))
        self._drop_link(frame.link)
        self._links[frame.link] = found
        if frames:
            # Met inside another link's target: that one is what the next entry
            # will ask for. Dropped first, so a layer of long chains of links
            # cannot push out the resolutions of the chains' heads.
            self._links.move_to_end(frame.link, last=False)
        self._link_paths += len(found.paths)
        for key in found.paths:
            self._link_deps.setdefault(key, set()).add(frame.link)
        while len(self._links) > _LINK_CACHE_ENTRIES or self._link_paths > _LINK_CACHE_PATHS:
            self._drop_link(next(iter(self._links)))

    def _drop_link(self, link: PathKey) -> None:
        found = self._links.pop(link, None)
        if found is None:
            return
        self._link_paths -= len(found.paths)
        for key in found.paths:
            users = self._link_deps.get(key)
            if users is not None:
                users.discard(link)
                if not users:
                    del self._link_deps[key]

    def _forget_links(self, path: PathKey) -> None:
        """`path` (a real path) is being removed: forget every resolution that went
        through it. One that went under it went through it too (walks go down
        one directory at a time, and a relative link relied on its ancestors)."""
        if not self._links or not path:
            return
        for link in list(self._link_deps.get(path_keys(path)[-1], ())):
            self._drop_link(link)
