"""The CernVM-FS publisher: `cvmfs_server transaction` / `publish` / `abort`.

One reconcile cycle is one transaction: all downloads happen before it opens,
the applier writes straight into `/cvmfs/<repo>[/<lease path>]`, then one
`publish` (with a message naming the images) or `abort -f` on failure. An
image that fails inside the transaction has its partial directory removed
before publishing, so what is published is complete or absent.

A marker file in the state directory says "we opened a transaction"; it
names our pid and its start time. It is written as "opening" just before
`transaction` runs (cleared if that fails) and as opened once it succeeded:
a kill of reconciler alone while the command goes on leaves a transaction
that began within seconds of an "opening" marker, which is ours. At the next
start, a transaction left open by a run of ours that is no longer alive is
aborted; one we did not open (no marker, or one that began long after an
"opening" marker), or one whose process still runs, is reported and left alone (the next `transaction` then fails with
"already in a transaction", reported per cycle). So is one whose `publish`
still runs (reconciler killed alone: the command's output goes to files, not
a pipe, so it finishes): every cycle looks again. Every way out of a
transaction ends in `publish` or a checked `abort -f`; the marker is cleared
only once the repository is out of the transaction.

Each image directory gets a `.cvmfscatalog`, so no catalog grows past the
200k entries above which CernVM-FS warns (and refuses to publish where
CVMFS_ENFORCE_LIMITS is set). It, like every write after
the layers are applied, goes through `ConfinedTree`: an image that planted a
symlink at that name cannot make root write outside the repository.

Updates cost only their new layers, and a cold image is published once: each
image keeps the undo log of its top layer beside it (`.images/<xx>/<digest>.undo`,
small: what that layer replaced or removed). A later cycle that builds an image
sharing all but the top layer of a published one opens its transaction with
`cvmfs_server transaction -T /.images/<aa>/<old>=/.images/<bb>/<new>`, a
metadata-only clone, replays the undo log on it and applies only the new
layers. One template per transaction (the image that saves the most layers);
the `.images/<xx>` parents are created ahead, as a template's destination
needs one. Not used with a gateway lease, where template transactions are not
supported. With a lease path, several reconcilers publish disjoint sub-trees
of one repository through a gateway.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..applier.undo import UndoRecorder
from ..confined import ConfinedTree
from ..errors import PublishError, StartError
from ..locking import process_alive, process_start_time
from ..watchlist import CvmfsTarget, PublishConfig
from . import layout
from .base import (
    BaseImage,
    Build,
    BuildSite,
    Publisher,
    PublishTransaction,
    ReadAccess,
    TransactionIntent,
    remove_legacy_chains,
    remove_tree,
)

log = logging.getLogger(__name__)

CATALOG_MARKER = ".cvmfscatalog"
_TIMEOUT_S = 6 * 3600  # a publish of a large change can take hours
# How long after an "opening" marker the transaction it announced may begin
# (`transaction` takes a fraction of a second; through a busy gateway, seconds).
_OPENING_S = 120
_TRANSACTION_ERRORS = {
    errno.EEXIST: "the repository is already in a transaction (another publisher, or a stale one: "
                  "check `cvmfs_server list`)",
    # Measured on 2.11.5: a node killed in a transaction or publish keeps its lease at the
    # gateway until that node aborts (reconciler does at its next start) or the lease expires.
    errno.EBUSY: "the lease path is busy: another publisher holds an overlapping lease (GET /api/v1/leases on the "
                 "gateway lists them; one whose run was killed is held until `cvmfs_server abort -f` on its node, "
                 "which reconciler runs at its next start there, or until the gateway's max_lease_time)",
    errno.ENOENT: "the parent of the lease path does not exist in the repository",
    errno.ENOTDIR: "the parent of the lease path is not a directory in the repository",
}


class CvmfsTransaction(PublishTransaction):
    def __init__(self, publisher: "CvmfsPublisher", message: str,
                 templated: Optional[Dict[Path, BaseImage]] = None) -> None:
        super().__init__(publisher.root)
        self.publisher = publisher
        self.message = message
        # Image directories the template cloned from a published image, until built.
        self._templated: Dict[Path, BaseImage] = dict(templated or {})

    def has_image(self, digest: str) -> bool:
        return self.root / layout.image_relpath(digest) not in self._templated and super().has_image(digest)

    def _build_site(self, digest: str, chain: Sequence[str]) -> BuildSite:
        """The image directory itself (empty, or cloned by the template), or a new
        one beside an unfinished directory standing there."""
        final = self.root / layout.image_relpath(digest)
        base = self._templated.get(final)
        path = final
        if os.path.lexists(final) and base is None:
            # No completion record: never built on. It may still be what a tag serves
            # (an image of 0.1), so the new tree is built beside it and replaces it only
            # once complete. (A published directory cannot be renamed aside: the union
            # mount answers EXDEV; one made in this transaction can be renamed.)
            path = final.with_name(f".{final.name}.rebuild-{secrets.token_hex(4)}")
        path.mkdir(parents=True, exist_ok=True)
        undo = final.with_name(f".{final.name}.undo-{secrets.token_hex(4)}")
        return BuildSite(final, path, undo, base)

    def _finish_tree(self, build: Build) -> None:
        """A nested catalog per image keeps every catalog small."""
        mark_catalog(build.path, build.recorder)

    def _place_tree(self, digest: str, site: BuildSite) -> bool:
        """A tree built beside an unfinished directory replaces it."""
        if site.path != site.final:
            remove_tree(site.final)
            os.rename(site.path, site.final)
        return True

    def _release_site(self, site: BuildSite) -> None:
        self._templated.pop(site.final, None)

    def commit(self) -> None:
        """Publish, or close the transaction when nothing changed. Any failure on
        the way (publish refused or timed out, an OSError) aborts the transaction."""
        try:
            for unfinished in list(self._templated):
                # Cloned by the template but never completed: it must not be published.
                remove_tree(unfinished)
                self._templated.pop(unfinished)
            if self.publisher.prepare_templates():
                self.changed = True
            if not self.changed:
                log.info("nothing changed in %s; closing the transaction without publishing", self.publisher.target)
                self.publisher.close_transaction()
                return
            done = self.publisher.run("publish", "-m", self.message, self.publisher.target, check=False)
            if done.returncode != 0:
                meaning = self.publisher.gateway_failure(done)
                raise PublishError(f"cvmfs_server publish {self.publisher.target} failed (exit {done.returncode})"
                                   f"{': ' + meaning if meaning else ''}: {_tail(done)}")
        except BaseException as exc:
            log.error("%s: %s; aborting the transaction", self.publisher.target, exc or type(exc).__name__)
            try:
                self.abort()
            except Exception as abort_exc:
                log.error("%s", abort_exc)
            raise
        self.publisher.clear_marker()

    def abort(self) -> None:
        self.publisher.close_transaction()


def mark_catalog(directory: Path, observer: Optional[UndoRecorder] = None) -> None:
    """Make `directory` a nested catalog: an empty regular `.cvmfscatalog` in it,
    replacing whatever the image put at that name without following it
    (and telling `observer`, the image's undo log)."""
    with ConfinedTree(directory, observer) as tree:
        if not tree.write_file(CATALOG_MARKER, b"", 0o644, replace=True):
            raise PublishError(f"{directory / CATALOG_MARKER} is a directory in the image; cannot make "
                               f"{directory} a nested catalog")


# What every publish and abort prints while remounting, and a publish's warning
# per hard link it breaks up: never the reason for a failure.
_NOISE = ("CernVM-FS: ", "Failed to set requested number of open files", "Warning: Found file with linkcount")
# A failed publish ends with "Executed Command:" and the whole cvmfs_swissknife
# command line (500 characters of options), a failed lease request with a C++
# stack trace: the reason is above them.
_TRAILERS = ("Executed Command:", "Stacktrace:")
# What `transaction` or `publish` through a gateway says when the gateway is
# not there or lost our lease (measured on 2.11.5), and what it means for the
# admin; {gateway} is the gateway's URL as server.conf gives it.
_GATEWAY_FAILURES = (
    ("cannot acquire lease", "the gateway did not answer the lease request: check that cvmfs_gateway runs and "
                             "answers at {gateway}; the next cycle tries again"),
    ('"invalid lease"', "the gateway no longer holds this node's lease: it expired (the transaction was open "
                        "longer than the gateway's max_lease_time, in /etc/cvmfs/gateway/user.json on the gateway) "
                        "or was cancelled there; raise max_lease_time above the longest cycle"),
    ("no statistics counters for lease", "the gateway lost the lease's session: it was restarted while the "
                                         "transaction was open"),
)


def flock_holder(path: Path) -> Optional[int]:
    """The pid holding an flock on `path` (from /proc/locks, by device and
    inode), or None: nobody, no such file, or no /proc to ask."""
    try:
        st = os.stat(path, follow_symlinks=False)
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF"; "1: -> FLOCK …" is one waiting for it.
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident and fields[4].isdigit():
            return int(fields[4])
    return None


def publish_process(target: str) -> Optional[int]:
    """The pid of a `cvmfs_server publish … <target>` running on this machine, or None."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        args = [a for a in argv if a]
        for i, arg in enumerate(args[:-2]):
            if arg.endswith(b"cvmfs_server") and args[i + 1] == b"publish" and args[-1] == target.encode():
                return int(entry)
    return None


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    """The end of what a failed command said: `publish` reports on stdout, the
    others on stderr, and both print remount chatter first; the command line
    a failed publish echoes last is left out."""
    lines: List[str] = []
    for text in (done.stdout, done.stderr):
        for line in (text or "").splitlines():
            if line.strip() in _TRAILERS:
                break  # the rest of this stream is the echoed command or a stack trace
            lines.append(line.strip())
    text = " / ".join(line for line in lines if line and not line.startswith(_NOISE))
    return text[-500:] or "no message"


class CvmfsPublisher(Publisher):
    """Publishes into a CernVM-FS repository through `cvmfs_server`."""

    all_or_nothing = True
    # CernVM-FS clients expand `$(VAR)` in symlink targets (variant symlinks).
    expands_variant_symlinks = True
    # Its publish reads `.cvmfsgraft-<name>` as the hash and chunks of `<name>`.
    reads_graft_markers = True

    def __init__(self, repository: str, mount: Path, state_dir: Path, lease_path: Optional[str] = None,
                 command: str = "cvmfs_server") -> None:
        super().__init__(mount / lease_path if lease_path else mount)
        self.mount = mount
        self.repository = repository
        self.lease_path = lease_path
        self.target = f"{repository}/{lease_path}" if lease_path else repository
        self.command = command
        self.marker = state_dir / "cvmfs-transaction.json"
        self._publish_reported = False  # an interrupted run's publish still running was logged

    @classmethod
    def from_config(cls, config: PublishConfig, state_dir: Path) -> CvmfsPublisher:
        """The repository `[publish] repository` mounted at `root`, through `lease_path` if set."""
        target = config.target
        if not isinstance(target, CvmfsTarget):
            raise TypeError(f"a CVMFS publisher needs a CVMFS target, not {target!r}")
        return cls(target.repository, config.root, state_dir, target.lease_path)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `cvmfs_server` (stdin closed: it must never wait for an answer).
        Its output goes to unlinked temporary files, not pipes: were reconciler
        killed alone, a `publish` writing its next line into a pipe nobody reads
        would die of SIGPIPE half-way (between the gateway's commit and the
        remount, say); with files it finishes, and the next run sees it done."""
        try:
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                code = subprocess.run([self.command, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      timeout=_TIMEOUT_S).returncode
                out.seek(0)
                err.seek(0)
                # File names need not be UTF-8.
                done = subprocess.CompletedProcess([self.command, *args], code, out.read().decode(errors="replace"),
                                                   err.read().decode(errors="replace"))
        except FileNotFoundError:
            raise PublishError(f"{self.command} is not installed or not on PATH; the cvmfs backend needs a "
                               "CernVM-FS stratum 0 (cvmfs-server package)") from None
        except subprocess.TimeoutExpired:
            raise PublishError(f"{self.command} {args[0]} {self.target} did not finish within {_TIMEOUT_S}s") from None
        if check and done.returncode != 0:
            raise PublishError(f"{self.command} {args[0]} {self.target} failed (exit {done.returncode}): {_tail(done)}")
        return done

    def in_transaction(self) -> bool:
        """True when `cvmfs_server list` shows our repository in a transaction."""
        for line in self.run("list").stdout.splitlines():
            name, _, rest = line.strip().partition(" ")
            if name == self.repository:
                return "in transaction" in rest
        raise PublishError(f"cvmfs_server list does not show repository {self.repository}; "
                           "check [publish] repository in the watchlist")

    def gateway_failure(self, done: subprocess.CompletedProcess[str]) -> str:
        """What a failed `transaction` or `publish` means when the gateway is
        down or lost the lease, else ""."""
        said = f"{done.stdout}\n{done.stderr}"
        meaning = next((meaning for marker, meaning in _GATEWAY_FAILURES if marker in said), "")
        if not meaning:
            return ""
        upstream = (self._server_settings() or {}).get("CVMFS_UPSTREAM_STORAGE", "")
        parts = upstream.split(",")
        gateway = parts[2] if parts[0] == "gw" and len(parts) > 2 else "the URL in CVMFS_UPSTREAM_STORAGE"
        return meaning.format(gateway=gateway)

    def clear_marker(self) -> None:
        self.marker.unlink(missing_ok=True)

    def close_transaction(self) -> None:
        """`abort -f`, checked: the marker goes only once the repository is out of
        the transaction; otherwise PublishError says what to run by hand."""
        done = self.run("abort", "-f", self.target, check=False)
        if done.returncode != 0 and self.in_transaction():
            self.needs_recovery = True  # the next cycle tries again before it plans
            raise PublishError(f"cvmfs_server abort -f {self.target} failed (exit {done.returncode}): {_tail(done)}; "
                               f"the transaction is still open. Run `cvmfs_server abort -f {self.target}` as the "
                               "repository owner; reconciler aborts it at its next start")
        self.clear_marker()

    def _read_marker(self) -> Optional[Dict[str, Any]]:  # JSON: each field checked where used
        try:
            data = json.loads(self.marker.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable transaction marker %s (%s); treating it as ours", self.target, self.marker, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def recover(self) -> None:
        self.needs_recovery = False
        marker = self._read_marker()
        if marker is None:
            # Nothing of ours to recover. (`cvmfs_server list` costs half a second, so an
            # unchanged cycle does not ask; someone else's transaction shows when ours opens.)
            return
        if not self.in_transaction():
            self.clear_marker()
            return
        pid = marker.get("pid")
        # Our own pid: a transaction an earlier cycle of this process could not abort.
        if isinstance(pid, int) and pid != os.getpid() and process_alive(pid, marker.get("start_time")):
            log.error("%s: the open transaction belongs to reconciler pid %d, which still runs; leaving it alone",
                      self.target, pid)
            return
        publishing = self._publishing()
        if publishing is not None:
            # Its reconciler was killed alone: the publish goes on (see `run`). An abort now
            # fails on the publish's lock, or would cut short a publish the gateway may
            # have committed already; when it ends, the transaction is closed.
            self.needs_recovery = True
            opened = marker.get("opened")
            if isinstance(opened, (int, float)) and time.time() - opened > _TIMEOUT_S:
                log.error("%s: a cvmfs_server publish (%s) of the transaction an interrupted run of reconciler opened "
                          "has run for more than %d hours; if it hangs, stop it and run `cvmfs_server abort -f %s`",
                          self.target, publishing, _TIMEOUT_S // 3600, self.target)
            elif not self._publish_reported:  # said once: a cycle right after the start asks again
                self._publish_reported = True
                log.warning("%s: a cvmfs_server publish of the transaction an interrupted run of reconciler (pid %s) "
                            "opened is still running (%s); leaving it to finish: every cycle looks again",
                            self.target, pid if pid is not None else "unknown", publishing)
            return
        self._publish_reported = False
        if marker.get("opening") is True and not self._opened_as_marked(marker):
            log.error("%s: an interrupted run of reconciler (pid %s) was opening a transaction, but the one open now "
                      "did not begin then: someone else's, left alone", self.target, pid)
            self.clear_marker()
            return
        log.warning("%s: aborting the transaction left open by an interrupted run of reconciler (pid %s)",
                    self.target, pid if pid is not None else "unknown")
        self.close_transaction()

    def _spool(self) -> Path:
        return Path("/var/spool/cvmfs") / self.repository

    def _publishing(self) -> Optional[str]:
        """How a `cvmfs_server publish` of our target is seen running on this
        machine (for the log), or None. Its flock on the spool area's
        is_publishing.lock is read from /proc/locks, never taken: a publish
        that finds the lock taken, even for a moment, gives up (`acquire_lock`,
        `flock -n`, in 2.11.5). Before it takes the lock a publish spends
        seconds on checks, so its process is looked for too."""
        lock = self._spool() / "is_publishing.lock"
        holder = flock_holder(lock)
        if holder is not None:
            return f"pid {holder} holds {lock}"
        pid = publish_process(self.target)
        return f"pid {pid}" if pid is not None else None

    def lock_path(self) -> Path:
        """One lock per repository on this machine, whatever the lease path and
        state directory: a publisher node holds one transaction per repository
        at a time (one spool area, one union mount), and recovery looks at the
        whole repository. The lock lives in the repository's spool directory on a
        stratum 0 or gateway publisher (else beside the mount point, else /run/lock)."""
        name = f".reconciler-{self.repository}"
        for directory in (Path("/var/spool/cvmfs") / self.repository, self.mount.parent):
            if directory.is_dir() and os.access(directory, os.W_OK):
                return directory / f"{name}.lock"
        return Path("/run/lock") / f"{name.lstrip('.')}.lock"

    @property
    def target_name(self) -> str:
        return f"the CernVM-FS repository {self.target}"

    def check_ready(self) -> None:
        """CernVM-FS refuses to publish while a process of ours has its working
        directory under the repository (measured on 2.11.5): say so at start."""
        try:
            cwd = os.path.realpath(os.getcwd())
        except OSError:
            return
        mount = os.path.realpath(self.mount)
        if cwd == mount or cwd.startswith(mount + os.sep):
            raise StartError(f"the working directory {cwd} is inside {self.mount}; CernVM-FS cannot publish while "
                             "a process has its working directory there: run reconcile from another directory")

    def _server_settings(self) -> Optional[Dict[str, str]]:
        """The repository's server.conf on this machine, or None when it cannot be read."""
        conf = Path("/etc/cvmfs/repositories.d") / self.repository / "server.conf"
        try:
            text = conf.read_text(errors="replace")
        except OSError:
            return None  # not on this machine (a gateway publisher's settings are elsewhere): unknown
        return {key.strip(): value.strip().strip('"') for key, value in
                (line.strip().split("=", 1) for line in text.splitlines()
                 if "=" in line and not line.lstrip().startswith("#"))}

    def drops_xattrs(self) -> bool:
        """True unless the repository's server.conf sets CVMFS_INCLUDE_XATTRS=true."""
        settings = self._server_settings()
        if settings is None:
            return False
        return settings.get("CVMFS_INCLUDE_XATTRS", "false").lower() not in ("true", "yes", "1")

    def read_access(self) -> ReadAccess:
        """Restricted when server.conf names a VOMS membership (`cvmfs_server
        mkfs -V` writes CVMFS_VOMS_AUTHZ); unknown when server.conf cannot be
        read here or the repository is published through a gateway (a
        publisher node's server.conf does not carry the repository's -V)."""
        settings = self._server_settings()
        conf = f"/etc/cvmfs/repositories.d/{self.repository}/server.conf"
        if settings is None:
            return ReadAccess(None, f"{conf} cannot be read")
        authz = settings.get("CVMFS_VOMS_AUTHZ")
        if authz:
            return ReadAccess(True, f"readers must hold the VOMS membership {authz} (CVMFS_VOMS_AUTHZ in {conf})")
        if settings.get("CVMFS_UPSTREAM_STORAGE", "").startswith("gw"):
            return ReadAccess(None, f"{conf} is a gateway publisher's, which does not say")
        return ReadAccess(False, f"it has no membership requirement (no CVMFS_VOMS_AUTHZ in {conf}; "
                                 "`cvmfs_server mkfs -V` sets one)")

    def through_gateway(self) -> bool:
        """True when this node publishes through a cvmfs_gateway (a lease path,
        or server.conf's upstream is `gw,…`)."""
        upstream = (self._server_settings() or {}).get("CVMFS_UPSTREAM_STORAGE", "")
        return bool(self.lease_path) or upstream.startswith("gw,")

    def build_hints(self, reference: str, capabilities: int, special: int = 0) -> List[str]:
        """File capabilities are lost unless the repository keeps extended
        attributes; device nodes and FIFOs are lost through a gateway."""
        hints = []
        if capabilities and self.drops_xattrs():
            hints.append(f"{reference}: {capabilities} files carry file capabilities (security.capability), which "
                         f"{self.target_name} drops: they will not work for users; set CVMFS_INCLUDE_XATTRS=true in "
                         "the repository's server.conf")
        if special and self.through_gateway():
            # Measured on 2.11.5: a stratum 0's own publish keeps them, a gateway's does not.
            hints.append(f"{reference}: the image has {special} device nodes or FIFOs (such as /dev/null), which a "
                         f"publish through the gateway drops: {self.target_name} serves the image without them; "
                         "publish it on the stratum 0 itself if users need them")
        return hints

    def _template(self, builds: Mapping[str, Sequence[str]]) -> Optional[Tuple[BaseImage, Path]]:
        """The published image that saves the most layers for one of `builds`,
        and the image directory to clone it into (read only: the repository is
        not writable before the transaction)."""
        if self.lease_path:
            return None  # template transactions do not work through a gateway lease
        finals = ((chain, self.root / layout.image_relpath(digest)) for digest, chain in builds.items())
        wanted = [(chain, final) for chain, final in finals if not os.path.lexists(final) and final.parent.is_dir()]
        if not wanted:
            return None  # nothing to build (removals, collections): no need to read every completion record
        best: Optional[Tuple[BaseImage, Path]] = None
        published = self.published_chains()
        for chain, final in wanted:
            base = self.find_base(chain, published)
            if base is not None and (best is None or base.layers > best[0].layers):
                best = (base, final)
        return best

    def prepare_templates(self) -> bool:
        """In a transaction: create every `.images/<xx>` directory (a catalog of its
        own), as a template's destination must have an existing parent, and drop
        the layer chain snapshots of earlier versions. True when anything changed."""
        if self.lease_path:
            return False
        changed = remove_legacy_chains(self.root)
        base = self.root / layout.IMAGES_DIR
        if not base.is_dir():
            return changed
        missing = [f"{i:02x}" for i in range(256) if not (base / f"{i:02x}").is_dir()]
        with ConfinedTree(self.root) as tree:
            for name in missing:
                if not tree.mkdirs(f"{layout.IMAGES_DIR}/{name}"):
                    raise PublishError(f"{base / name} is not a directory; move it away")
        if missing or not (base / CATALOG_MARKER).is_file():
            mark_catalog(base)
        return changed or bool(missing)

    def _opened_as_marked(self, marker: Dict[str, Any]) -> bool:
        """True when the open transaction began while the run of an "opening"
        marker was running `cvmfs_server transaction` (its flag file, made then,
        dates from within _OPENING_S of the marker); unknown counts as False."""
        opened = marker.get("opened")
        if not isinstance(opened, (int, float)):
            return False
        try:
            began = (self._spool() / "in_transaction.lock").stat().st_mtime
        except OSError:
            return False
        return opened - 2 <= began <= opened + _OPENING_S

    def _write_marker(self, opening: bool = False) -> None:
        """The marker: ours once `transaction` returned; `opening` before it
        runs, so that a kill of this process alone while the command goes on
        leaves a transaction the next start can tell is ours."""
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(json.dumps({"target": self.target, "pid": os.getpid(),
                                           "start_time": process_start_time(os.getpid()), "opened": time.time(),
                                           "opening": opening}))

    def begin(self, intent: TransactionIntent) -> CvmfsTransaction:
        """`cvmfs_server transaction`: as a clone of the published image that saves
        the most layers of one of `intent.builds` when there is one (`-T`)."""
        template = self._template(intent.builds)
        templated: Dict[Path, BaseImage] = {}
        done = None
        # Say what we are about to do (unless a marker of ours is there: the transaction
        # it names comes first; then the command below fails and the marker stays).
        intent_marked = not self.marker.exists()
        if intent_marked:
            try:
                self._write_marker(opening=True)
            except OSError as exc:
                raise PublishError(f"cannot write the transaction marker {self.marker}: {exc.strerror}") from None
        if template is not None:
            base, final = template
            source = "/" + os.path.relpath(base.path, self.mount)
            dest = "/" + os.path.relpath(final, self.mount)
            done = self.run("transaction", "-T", f"{source}={dest}", self.target, check=False)
            if done.returncode == 0:
                templated[final] = base
                log.info("%s: the new image %s starts from a clone of %s (reusing %d layers)", self.target,
                         final.name[:12], base.path.name[:12], base.layers)
            else:  # a failed -T leaves no transaction open: open a plain one
                log.warning("%s: could not open the transaction as a copy of the published image "
                            "(cvmfs_server transaction -T %s=%s, exit %d): %s; applying all layers instead",
                            self.target, source, dest, done.returncode, _tail(done))
        if not templated:
            done = self.run("transaction", self.target, check=False)
        assert done is not None
        if done.returncode != 0:
            if intent_marked:
                self.clear_marker()  # nothing was opened
            reason = _TRANSACTION_ERRORS.get(done.returncode, "") or self.gateway_failure(done)
            raise PublishError(f"cvmfs_server transaction {self.target} failed (exit {done.returncode})"
                               f"{': ' + reason if reason else ''}: {_tail(done)}")
        try:
            self._write_marker()
        except OSError as exc:
            # Without the marker a crash would leave a transaction nobody recovers: do not go on.
            self.close_transaction()
            raise PublishError(f"cannot write the transaction marker {self.marker}: {exc.strerror}") from None
        return CvmfsTransaction(self, intent.message, templated)
