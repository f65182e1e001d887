"""`reconcile compare PUBLISHED OURS`: does the tree of a tag as another tool
published it equal ours, and where not, why.

An admin runs it before a switch (the old repository against a scratch
repository reconciler published, docs/migration.md) and after. Both arguments
are directories or tag links (a link given on the command line is followed;
nothing below it is). Compared per path: the type, the permission bits, the
owner, the size, a link's target, the names of extended attributes, and with
`--hash` the content's sha256. Modification times are not compared (CernVM-FS
keeps whole seconds only; the old tools keep what their unpacker set).

Each difference gets the most likely reason where one is known:
- files the publishers add (Apptainer's `.singularity.d` and its links, the
  bind points, `.cvmfscatalog`);
- permissions the old tool widened: `singularity build --fix-perms`
  (cvmfs-singularity-sync) gives the owner read and write, and search on
  directories and on files anyone may run;
- extended attributes a repository drops (unless `CVMFS_INCLUDE_XATTRS=true`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .apptainer import DEFAULT_BIND_POINTS
from .safetext import inert

# What the publishers add to an image (ours: apptainer.py; the old tools' the same set).
ADDED = (".singularity.d", "environment", "singularity", ".exec", ".run", ".shell", ".test", ".cvmfscatalog")


@dataclass(frozen=True)
class Entry:
    """One path of a tree as compared."""

    kind: str  # "dir", "file", "link" or "other"
    perms: int  # the mode's permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    size: int  # files only (0 otherwise)
    target: str  # links only
    xattrs: Tuple[str, ...]
    sha256: str  # files, with hashing asked for


@dataclass(frozen=True)
class Difference:
    """One path that differs, what differs and the likely reason ('' when unknown)."""

    path: str
    what: str
    reason: str


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def _xattrs(path: str) -> Tuple[str, ...]:
    try:
        return tuple(sorted(os.listxattr(path, follow_symlinks=False)))
    except OSError:  # not supported here (e.g. a symlink on some file systems)
        return ()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_tree(top: Path, hashes: bool = False) -> Dict[str, Entry]:
    """Every path under `top` (followed if it is a link itself), never following a link below it."""
    root = os.path.realpath(top)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{top} is not a directory (or a link to one)")
    out: Dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            out[os.path.relpath(full, root)] = Entry(
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if kind == "file" else 0,
                os.readlink(full) if kind == "link" else "", _xattrs(full),
                _sha256(full) if hashes and kind == "file" else "")
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def _added(path: str) -> bool:
    first = path.split("/", 1)[0]
    return first in ADDED or path in DEFAULT_BIND_POINTS or path.endswith("/.cvmfscatalog")


def _fixed_perms(old: Entry, ours: Entry) -> bool:
    """True when `old` is `ours` widened as `--fix-perms` does: owner rw, and x
    for directories and for files with any x bit."""
    wanted = ours.perms | stat.S_IRUSR | stat.S_IWUSR
    if ours.kind == "dir" or ours.perms & 0o111:
        wanted |= stat.S_IXUSR
    return old.perms == wanted


def compare_trees(published: Dict[str, Entry], ours: Dict[str, Entry]) -> List[Difference]:
    """The differences between two trees, each with its likely reason."""
    out: List[Difference] = []
    for path in sorted(set(published) | set(ours)):
        old, new = published.get(path), ours.get(path)
        if old is None or new is None:
            side = "ours" if old is None else "the published tree"
            reason = "added by a publisher for Apptainer or CernVM-FS" if _added(path) else ""
            out.append(Difference(path, f"only in {side}", reason))
            continue
        if old.kind != new.kind:
            out.append(Difference(path, f"a {old.kind} published, a {new.kind} in ours", ""))
            continue
        if old.perms != new.perms:
            reason = "the old tool widened permissions (singularity build --fix-perms)" \
                if _fixed_perms(old, new) else ""
            out.append(Difference(path, f"mode {old.perms:04o} published, {new.perms:04o} in ours", reason))
        if (old.uid, old.gid) != (new.uid, new.gid):
            out.append(Difference(path, f"owner {old.uid}:{old.gid} published, {new.uid}:{new.gid} in ours",
                                  "the old tool unpacked as a user other than root" if old.uid != 0 else ""))
        if old.size != new.size:
            out.append(Difference(path, f"size {old.size} published, {new.size} in ours", ""))
        elif old.sha256 != new.sha256:
            out.append(Difference(path, "content differs (same size)", ""))
        if old.target != new.target:
            out.append(Difference(path, f"link to {old.target!r} published, to {new.target!r} in ours", ""))
        if old.xattrs != new.xattrs:
            lost = set(new.xattrs) - set(old.xattrs)
            reason = "extended attributes dropped (the old tool, or the repository without " \
                     "CVMFS_INCLUDE_XATTRS=true)" if lost and not set(old.xattrs) - set(new.xattrs) else ""
            out.append(Difference(path, f"xattrs {list(old.xattrs)} published, {list(new.xattrs)} in ours", reason))
    return out


def report(differences: Sequence[Difference], published: Path, ours: Path) -> str:
    """What an admin reads: a verdict, the differences by reason, each path."""
    if not differences:
        return f"same: {published} and {ours} hold the same tree"
    unexplained = [d for d in differences if not d.reason]
    lines = [f"different: {len(differences)} differences between {published} (published) and {ours} (ours), "
             f"{len(unexplained)} without a known reason"]
    by_reason: Dict[str, List[Difference]] = {}
    for d in differences:
        by_reason.setdefault(d.reason or "no known reason", []).append(d)
    for reason, items in sorted(by_reason.items(), key=lambda kv: kv[0] == "no known reason"):
        lines.append(f"  {reason}: {len(items)}")
        lines += [f"    {d.path}: {d.what}" for d in items]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`reconcile compare`: exit 0 when the trees are the same, 1 when not, 2 on a bad argument."""
    parser = argparse.ArgumentParser(prog="reconcile compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("published", type=Path, help="the tag as published now (a directory or tag link)")
    parser.add_argument("ours", type=Path, help="the same tag as reconciler published it (e.g. on a scratch "
                        "repository)")
    parser.add_argument("--hash", action="store_true", help="also compare file contents (sha256)")
    args = parser.parse_args(argv)
    try:
        published = read_tree(args.published, args.hash)
        ours = read_tree(args.ours, args.hash)
    except OSError as exc:
        print(f"reconcile compare: {exc}", file=sys.stderr)
        return 2
    differences = compare_trees(published, ours)
    print("\n".join(inert(line) for line in report(differences, args.published, args.ours).splitlines()))
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
