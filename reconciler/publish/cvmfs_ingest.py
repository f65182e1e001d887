"""Cold images into a CernVM-FS stratum 0 through `cvmfs_server ingest`.

A cycle that only adds (images built from nothing, tag links set; no tag
removed, no image collected, no image that could start from a published one)
builds its images in a staging tree on the spool area's filesystem instead of
the transaction's union mount, and publishes the images, their undo logs,
completion records and tag links in one `tar | cvmfs_server ingest`: one
revision, so an image is complete or absent as in a transaction. Measured on
2.11.5 (README, "What CernVM-FS offers for the publish"): the apply writes to
a plain filesystem, and the ingest reads the tar stream straight into the
publish pipeline, with no scan of a scratch area.

What ingest keeps is what a publish keeps, save two things. Extended
attributes: ingest drops them, so where the repository keeps them
(CVMFS_INCLUDE_XATTRS=true) an image whose layers set some is ingested
without its record and links, and a transaction right after sets its
attributes, record and links. Hard links: ingest stores each name as an
entry of its own with the same content, where a publish keeps the links
within one directory (the bytes are stored once either way). Not through a
gateway (ingest takes a lease of its own and cannot delete and add in one
call).

GNU tar writes the stream; ours relays it to ingest, holding back its last
record until tar exits 0: were tar to skip an unreadable file, it would still
end the archive cleanly and ingest would publish a tree without that file, so
on any failure the ingest is killed before it sees the end of the archive,
and its transaction aborted.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from ..applier.xattrs import ALLOWED_XATTR_PREFIXES
from ..confined import ConfinedTree
from ..errors import PublishError
from . import layout
from .base import Build, BuildSite, PublishTransaction, image_is_complete, remove_tree
from .cvmfs_catalog import CATALOG_MARKER, mark_catalog

if TYPE_CHECKING:
    from .cvmfs import CvmfsPublisher

log = logging.getLogger(__name__)

STAGING_PREFIX = "reconciler-staging-"
# GNU tar writes in records of 20 blocks of 512 bytes; the end-of-archive
# blocks and the padding after them are in its last record.
_TAR_RECORD = 20 * 512
_CHUNK = 1 << 20
_BUCKETS = tuple(f"{i:02x}" for i in range(256))


def remove_stale_staging(spool: Path) -> None:
    """Remove the staging trees an interrupted run left (called under the
    repository's lock, so none of them is in use)."""
    try:
        names = os.listdir(spool)
    except OSError:
        return
    for name in names:
        if name.startswith(STAGING_PREFIX):
            log.info("removing %s, the staging tree of an interrupted run", spool / name)
            remove_tree(spool / name)


class CvmfsIngestTransaction(PublishTransaction):
    """Builds into a staging tree (`root`); commit() ingests it as one revision."""

    def __init__(self, publisher: "CvmfsPublisher", staging: Path, message: str) -> None:
        super().__init__(staging)
        self.publisher = publisher
        self.message = message
        self.repository_root = publisher.root
        self.keeps_xattrs = not publisher.drops_xattrs()
        # Root-relative paths of the images built, and the tag links set (-> digest).
        self._images: List[str] = []
        self._links: Dict[str, str] = {}
        # Images whose extended attributes the ingest would drop: their records
        # (ChainIDs, undo layers) and links wait for a transaction that sets them.
        self._with_xattrs: Dict[str, Tuple[Sequence[str], int]] = {}
        self._record: Tuple[Sequence[str], int] = ((), 0)

    def has_image(self, digest: str) -> bool:
        return digest in self._with_xattrs or image_is_complete(self.root, digest) or \
            image_is_complete(self.repository_root, digest)

    def _build_site(self, digest: str, chain: Sequence[str]) -> BuildSite:
        final = self.root / layout.image_relpath(digest)
        final.mkdir(parents=True)
        undo = final.with_name(f".{final.name}.undo-{secrets.token_hex(4)}")
        return BuildSite(final, final, undo)

    def _finish_tree(self, build: Build) -> None:
        mark_catalog(build.path, build.recorder)

    def _place_tree(self, digest: str, site: BuildSite) -> bool:
        return True  # built where it is ingested from

    def _complete(self, digest: str, chain: Sequence[str], undo_layers: int) -> None:
        self._record = (chain, undo_layers)  # written by _built, which knows the build

    def _built(self, digest: str, chain: Sequence[str], build: Build, site: BuildSite) -> None:
        if build.xattrs and self.keeps_xattrs:
            self._with_xattrs[digest] = self._record
        else:
            self.mark_complete(digest, *self._record)
        self._images.append(layout.image_relpath(digest))

    def set_tag(self, tag_path: str, digest: str) -> None:
        """The link is made in the staging tree; what stands at its path in the
        repository must be a link or nothing, under real directories (ingest
        would replace a directory there, or write through a link)."""
        with ConfinedTree(self.repository_root) as tree:
            parts = tag_path.split("/")
            for depth in range(1, len(parts)):
                above = tree.lstat("/".join(parts[:depth]))
                if above is None:
                    break  # missing: ingest creates it (and what is below it is missing too)
                if not stat.S_ISDIR(above.st_mode):
                    raise PublishError(f"cannot create {self.repository_root / tag_path}: "
                                       f"{self.repository_root / '/'.join(parts[:depth])} is not a directory "
                                       "(a file or symlink stands in the way); move it away")
            existing = tree.lstat(tag_path)
        if existing is not None and not stat.S_ISLNK(existing.st_mode):
            raise PublishError(f"{self.repository_root / tag_path} exists and is not a tag link; move it away")
        super().set_tag(tag_path, digest)
        self._links[tag_path] = digest

    def remove_tag(self, tag_path: str) -> None:
        raise PublishError(f"cannot remove {tag_path} in an ingest (a cycle with removals opens a transaction)")

    def remove_image(self, digest: str) -> None:
        raise PublishError(f"cannot remove {digest} in an ingest (a cycle with removals opens a transaction)")

    def remove_foreign_image(self, relpath: str) -> None:
        raise PublishError(f"cannot remove {relpath} in an ingest (a cycle with removals opens a transaction)")

    def _members(self) -> List[str]:
        """What the tar takes, in this order: `.images`' catalog marker when
        missing, the empty `.images/<xx>` buckets the repository lacks (ingest
        makes those holding a new image), then per image its tree, its undo
        log and last its completion record, and the tag links after every
        image. An ingest whose stream is cut (ours killed: libarchive takes
        the end of a stream at an entry's boundary for the end of the archive)
        publishes a prefix of it: never a record before its image and undo log
        are whole, never a link before the records."""
        members: List[str] = []
        images = self.repository_root / layout.IMAGES_DIR
        if not (images / CATALOG_MARKER).is_file():
            with ConfinedTree(self.root) as tree:
                tree.write_file(f"{layout.IMAGES_DIR}/{CATALOG_MARKER}", b"", 0o644, replace=True)
            members.append(f"{layout.IMAGES_DIR}/{CATALOG_MARKER}")
        staged_buckets = {os.path.dirname(relpath) for relpath in self._images}
        for bucket in _BUCKETS:
            relpath = f"{layout.IMAGES_DIR}/{bucket}"
            if relpath not in staged_buckets and not (images / bucket).is_dir():
                # Every bucket exists after the first cycle, as after a transaction's
                # prepare_templates: a template's destination needs its bucket.
                (self.root / relpath).mkdir(parents=True, exist_ok=True)
                members.append(relpath)
        for relpath in self._images:
            members.extend(relpath + suffix for suffix in ("", layout.UNDO_SUFFIX, layout.COMPLETE_SUFFIX)
                           if os.path.lexists(self.root / (relpath + suffix)))
        members.extend(link for link, digest in self._links.items() if digest not in self._with_xattrs)
        return members

    def commit(self) -> None:
        """One `tar | cvmfs_server ingest` of everything staged; the staging tree goes either way."""
        try:
            if self.changed:
                log.info("%s: publishing %d new images and %d tag links in one cvmfs_server ingest",
                         self.publisher.target, len(self._images), len(self._links))
                self.publisher.ingest(self.root, self._members())
                if self._with_xattrs:
                    self._set_xattrs()
            else:
                log.info("nothing changed in %s; nothing to ingest", self.publisher.target)
        finally:
            remove_tree(self.root)

    def abort(self) -> None:
        remove_tree(self.root)

    def _set_xattrs(self) -> None:
        """A transaction after the ingest: the extended attributes of the images
        that have some (ingest drops them; CVMFS_INCLUDE_XATTRS=true keeps them)
        set on the ingested trees, then their records and links. Until it is
        published those trees are unfinished: no record, no link."""
        log.info("%s: setting the extended attributes of %d images in a transaction (ingest drops them)",
                 self.publisher.target, len(self._with_xattrs))
        with self.publisher.transaction(self.message) as txn:
            for digest, (chain, undo_layers) in self._with_xattrs.items():
                relpath = layout.image_relpath(digest)
                copy_xattrs(self.root / relpath, self.repository_root / relpath)
                txn.mark_complete(digest, chain, undo_layers)
            for link, digest in self._links.items():
                if digest in self._with_xattrs:
                    txn.set_tag(link, digest)


def copy_xattrs(source: Path, dest: Path) -> int:
    """Set on each directory and regular file of the tree `dest` the
    extended attributes an image may carry (`ALLOWED_XATTR_PREFIXES`) that
    its counterpart in `source` has; returns how many. `dest` is walked from
    an fd one component at a time, never following a link."""
    copied = 0
    with ConfinedTree(dest) as tree:
        for dirpath, dirnames, filenames in os.walk(source):
            rel = os.path.relpath(dirpath, source)
            parts = [] if rel == "." else rel.split(os.sep)
            for name in [""] + dirnames + filenames:
                path = os.path.join(dirpath, name) if name else dirpath
                try:
                    names = [x for x in os.listxattr(path, follow_symlinks=False)
                             if x.encode().startswith(ALLOWED_XATTR_PREFIXES)]
                except OSError as exc:
                    if exc.errno == errno.ENOTSUP:
                        return copied
                    raise
                if not names or os.path.islink(path):
                    continue
                copied += _set_in(tree, parts + ([name] if name else []), path, names)
    return copied


def _set_in(tree: ConfinedTree, parts: List[str], source: str, names: Sequence[str]) -> int:
    """Set `names` (read from `source`) on the entry `parts` of `tree`."""
    parent = tree.open_dir(parts[:-1]) if parts else tree.open_dir([])
    if parent is None:
        raise PublishError(f"cannot set the extended attributes of {'/'.join(parts)}: a parent is not a directory")
    try:
        fd = os.open(parts[-1] if parts else ".", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=parent)
    finally:
        os.close(parent)
    try:
        for xname in names:
            os.setxattr(fd, xname, os.getxattr(source, xname, follow_symlinks=False))
    finally:
        os.close(fd)
    return len(names)


def run_ingest(command: Sequence[str], staging: Path, members: Sequence[str], timeout: float
               ) -> subprocess.CompletedProcess[str]:
    """`tar` of `members` (relative to `staging`) relayed into `command` (a
    `cvmfs_server ingest -t -` …), which runs in a session of its own. The
    tar's last record is held back until tar exits 0; on a tar failure, or
    an error of ours, `command`'s whole session is killed before it reads
    the end of the archive. Returns `command`'s result (its output read from
    files: see CvmfsPublisher.run); a tar failure is a PublishError."""
    with tempfile.NamedTemporaryFile("wb", prefix="reconciler-ingest-", suffix=".list") as names, \
            tempfile.TemporaryFile() as tar_err, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for member in members:
            names.write(os.fsencode(member) + b"\0")
        names.flush()
        tar = subprocess.Popen(["tar", "--create", "--file=-", "--format=gnu", "--numeric-owner", "--null",
                                "--verbatim-files-from",
                                f"--directory={staging}", f"--files-from={names.name}"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=tar_err)
        ingest = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=out, stderr=err,
                                  start_new_session=True)
        assert tar.stdout is not None and ingest.stdin is not None
        try:
            try:
                held = _relay(tar.stdout.fileno(), ingest.stdin.fileno())
            except BrokenPipeError:
                # The ingest ended before the archive did: it failed, and says why.
                held = None
            finally:
                tar.stdout.close()
            if held is None:
                tar.kill()
                tar.wait()
                code = ingest.wait(timeout=timeout)
                if code == 0:
                    raise PublishError(f"{command[0]} ingest ended before it read the whole archive")
                return _result(command, code, out, err)
            tar_code = tar.wait()
            if tar_code != 0:
                tar_err.seek(0)
                said = " / ".join(line.strip() for line in tar_err.read().decode(errors="replace").splitlines()
                                  if line.strip())
                raise PublishError(f"tar of the staging tree {staging} failed (exit {tar_code}): "
                                   f"{said[-500:] or 'no message'}")
            _write_all(ingest.stdin.fileno(), held)
            ingest.stdin.close()
            code = ingest.wait(timeout=timeout)
        except BaseException:
            # Before ingest saw the end of the archive: nothing of this is published.
            _kill_session(ingest)
            if tar.poll() is None:
                tar.kill()
                tar.wait()
            raise
        return _result(command, code, out, err)


def _result(command: Sequence[str], code: int, out: IO[bytes], err: IO[bytes]) -> subprocess.CompletedProcess[str]:
    out.seek(0)
    err.seek(0)
    # File names need not be UTF-8.
    return subprocess.CompletedProcess(list(command), code, out.read().decode(errors="replace"),
                                       err.read().decode(errors="replace"))


def _relay(source: int, sink: int) -> bytes:
    """Copy `source` to `sink` until `source` ends, but its last record: returned."""
    held = b""
    while True:
        chunk = os.read(source, _CHUNK)
        if not chunk:
            return held
        data = held + chunk if held else chunk
        if len(data) > _TAR_RECORD:
            _write_all(sink, memoryview(data)[:-_TAR_RECORD])
            held = bytes(data[-_TAR_RECORD:])
        else:
            held = data


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill_session(process: "subprocess.Popen[bytes]") -> None:
    """SIGKILL `process` and everything in its session (the ingest's swissknife)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass  # the pipe is broken: the reader is gone
    process.wait()


def ingest_eligible(builds: Mapping[str, Sequence[str]], root: Path) -> Optional[str]:
    """None when every image of `builds` is either complete in `root` or has
    nothing of itself there (no unfinished directory, undo log or record an
    ingest would merge into); else the reason it is not."""
    for digest in builds:
        if image_is_complete(root, digest):
            continue
        for relpath in (layout.image_relpath(digest), layout.undo_relpath(digest),
                        layout.completion_relpath(digest)):
            if os.path.lexists(root / relpath):
                return f"{root / relpath} is left from an unfinished build"
    return None
