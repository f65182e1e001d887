"""The CernVM-FS publisher: `cvmfs_server transaction` / `publish` / `abort`.

One reconcile cycle is one transaction: all downloads happen before it opens,
the applier writes straight into `/cvmfs/<repo>[/<lease path>]`, then one
`publish` (with a message naming the images) or `abort -f` on failure. An
image that fails inside the transaction has its partial directory removed
before publishing, so what is published is complete or absent.

A marker file in the state directory says "we opened a transaction": at the
next start, a transaction left open by a crashed run of ours is aborted; one
we did not open is reported and left alone (the next `transaction` then
fails with "already in a transaction", reported per cycle).

Each image directory gets a `.cvmfscatalog`, so no catalog grows past the
200k entries at which CernVM-FS refuses to publish.

Updates cost only their new layers: the chain below an image's top layer is
kept in the repository (`.chains/<chain id>`, a catalog of its own), and a
later cycle that builds an image sharing it opens its transaction with
`cvmfs_server transaction -T /.chains/<id>=/.images/<xx>/<digest>`, a
metadata-only clone, then applies only the remaining layers. One template per
transaction (the image that saves the most layers); the `.images/<xx>`
parents are created ahead, as a template's destination needs one. Not used
with a gateway lease, where template transactions are not supported. With a lease path,
several reconcilers publish disjoint sub-trees of one repository through a
gateway.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import PublishError
from . import layout
from .base import Publisher, PublishTransaction, remove_tree
from .chains import CHAINS_DIR, ChainCache, TemplatedChains

log = logging.getLogger(__name__)

CATALOG_MARKER = ".cvmfscatalog"
_TIMEOUT_S = 6 * 3600  # a publish of a large change can take hours
_TRANSACTION_ERRORS = {
    errno.EEXIST: "the repository is already in a transaction (another publisher, or a stale one: "
                  "check `cvmfs_server list`)",
    errno.EBUSY: "the lease path is busy: another publisher holds an overlapping lease",
    errno.ENOENT: "the parent of the lease path does not exist in the repository",
    errno.ENOTDIR: "the parent of the lease path is not a directory in the repository",
}


class CvmfsTransaction(PublishTransaction):
    def __init__(self, publisher: "CvmfsPublisher", message: str, templated: Optional[Dict[Path, int]] = None) -> None:
        super().__init__(publisher.root)
        self.publisher = publisher
        self.message = message
        # Image directories the template already filled with their first layers, until built.
        self._templated: Dict[Path, int] = dict(templated or {})
        # Layer chains are kept only where a later template transaction can use them.
        self.chains = None if publisher.lease_path else TemplatedChains(self.root, self._templated)

    def has_image(self, digest: str) -> bool:
        return self.root / layout.image_relpath(digest) not in self._templated and super().has_image(digest)

    @contextlib.contextmanager
    def build_image(self, digest: str) -> Iterator[Path]:
        final = self.root / layout.image_relpath(digest)
        if final.exists() and final not in self._templated:
            # Left by a failed build earlier in this transaction: never trust it.
            remove_tree(final)
        final.mkdir(parents=True, exist_ok=True)
        try:
            yield final
            # A nested catalog per image keeps every catalog small.
            (final / CATALOG_MARKER).touch()
            self.changed = True
        except BaseException:
            remove_tree(final)
            raise
        finally:
            self._templated.pop(final, None)

    def commit(self) -> None:
        for unfinished in list(self._templated):
            # Cloned by the template but never completed: it must not be published.
            remove_tree(unfinished)
            self._templated.pop(unfinished)
        if self.publisher.template_parents():
            self.changed = True
        if not self.changed:
            log.info("nothing changed in %s; closing the transaction without publishing", self.publisher.target)
            self.publisher.run("abort", "-f", self.publisher.target)
            self.publisher.clear_marker()
            return
        done = self.publisher.run("publish", "-m", self.message, self.publisher.target, check=False)
        if done.returncode != 0:
            log.error("cvmfs_server publish failed for %s; aborting the transaction", self.publisher.target)
            self.abort()
            raise PublishError(f"cvmfs_server publish {self.publisher.target} failed (exit {done.returncode}): "
                               f"{_tail(done)}")
        self.publisher.clear_marker()

    def abort(self) -> None:
        self.publisher.run("abort", "-f", self.publisher.target, check=False)
        self.publisher.clear_marker()


def _tail(done: subprocess.CompletedProcess) -> str:
    text = (done.stderr or "").strip() or (done.stdout or "").strip()
    return text[-500:] or "no message"


class CvmfsPublisher(Publisher):
    """Publishes into a CernVM-FS repository through `cvmfs_server`."""

    def __init__(self, repository: str, mount: Path, state_dir: Path, lease_path: Optional[str] = None,
                 command: str = "cvmfs_server") -> None:
        super().__init__(mount / lease_path if lease_path else mount)
        self.mount = mount
        self.repository = repository
        self.lease_path = lease_path
        self.target = f"{repository}/{lease_path}" if lease_path else repository
        self.command = command
        self.marker = state_dir / "cvmfs-transaction.json"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `cvmfs_server` (stdin closed: it must never wait for an answer)."""
        try:
            done = subprocess.run([self.command, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=_TIMEOUT_S)
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

    def clear_marker(self) -> None:
        self.marker.unlink(missing_ok=True)

    def recover(self) -> None:
        if not self.in_transaction():
            self.clear_marker()
            return
        if self.marker.exists():
            log.warning("%s: aborting the transaction left open by an interrupted run of reconciler (%s)",
                        self.target, self.marker.read_text().strip())
            self.run("abort", "-f", self.target)
            self.clear_marker()
        else:
            log.error("%s is in a transaction that reconciler did not open; leaving it alone. Publishing waits "
                      "until it is published or aborted.", self.repository)

    def _template(self, builds: Dict[str, List[str]]) -> Optional[Tuple[Path, Path, int]]:
        """The published chain snapshot that saves the most layers for one of
        `builds`: (the snapshot, the image directory to clone it into, layers)."""
        if self.lease_path:
            return None  # template transactions do not work through a gateway lease
        chains = ChainCache(self.root)  # read only: the repository is not writable before the transaction
        best: Optional[Tuple[Path, Path, int]] = None
        for digest, ids in builds.items():
            final = self.root / layout.image_relpath(digest)
            if final.exists() or not final.parent.is_dir():
                continue
            k, snapshot = chains.find(ids, longer_than=best[2] if best else 0)
            if snapshot is not None:
                best = (snapshot, final, k)
        return best

    def template_parents(self) -> bool:
        """In a transaction that keeps layer chains: create every `.images/<xx>`
        directory (a catalog of its own), as a template's destination must have
        an existing parent. True when any was missing."""
        if self.lease_path or not (self.root / CHAINS_DIR).is_dir():
            return False
        base = self.root / layout.IMAGES_DIR
        missing = [base / f"{i:02x}" for i in range(256) if not (base / f"{i:02x}").is_dir()]
        for path in missing:
            path.mkdir(parents=True, exist_ok=True)
        (base / CATALOG_MARKER).touch()
        return bool(missing)

    def begin(self, message: str, builds: Optional[Dict[str, List[str]]] = None) -> CvmfsTransaction:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(json.dumps({"target": self.target, "pid": os.getpid(), "opened": time.time()}))
        template = self._template(builds or {})
        args = ["transaction", self.target]
        templated: Dict[Path, int] = {}
        if template is not None:
            snapshot, final, layers = template
            source = "/" + os.path.relpath(snapshot, self.mount)
            dest = "/" + os.path.relpath(final, self.mount)
            args = ["transaction", "-T", f"{source}={dest}", self.target]
            templated[final] = layers
            log.info("%s: template transaction cloning a %d-layer chain into %s", self.target, layers, dest)
        done = self.run(*args, check=False)
        if done.returncode != 0:
            self.clear_marker()
            reason = _TRANSACTION_ERRORS.get(done.returncode, "")
            raise PublishError(f"cvmfs_server transaction {self.target} failed (exit {done.returncode})"
                               f"{': ' + reason if reason else ''}: {_tail(done)}")
        return CvmfsTransaction(self, message, templated)
