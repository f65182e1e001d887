"""Several publisher nodes of the real gateway repository on this machine, and
what every published revision held.

A node is ../shared/cvmfs/mknode.sh's private mount namespace: its own
/etc/cvmfs/repositories.d, /var/spool/cvmfs and /cvmfs, talking to the local
cvmfs_gateway as a publisher on another machine would. `nodes` (a context
manager) stops every node it started, whatever happens: a namespace left
behind keeps a copy of FUSE mounts that later remounts wait for.

Reconcilers run as real processes (`python -m reconciler.cli`), each with a
`cvmfs_server` wrapper first on PATH (`write_wrapper`) that logs every call
with its node and times, and can make a run wait at a point of the test's
choosing: files in a sync directory are the signals, polled with a deadline.
Inside a publish, `GatewayProxy` (between one node and the gateway) holds the
gateway's commit request, before or after the gateway handles it.

Revisions are read from the stratum 0 over HTTP, not from a mount: the
auto-tag of each publish (`cvmfs_server tag -l -x`) gives every revision's
root catalog; the catalogs (zlib-compressed SQLite) give its whole tree.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from tests import cvmfs_real

ROOT = cvmfs_real.ROOT
MKNODE = cvmfs_real.SHARED / "mknode.sh"
UP = cvmfs_real.SHARED / "up.sh"
STRATUM0 = "http://localhost/cvmfs"
GATEWAY_PID = Path("/var/run/cvmfs-gateway.pid")
GATEWAY_CONFIG = Path("/etc/cvmfs/gateway/user.json")

# The wrapper: NODE_NAME names the node in the log; NODE_SYNC the signal directory.
#   NODE_MEET="a b": after its transaction opened, wait until every named node's is open too;
#     and before publishing, until every named node is about to publish (done writing): nodes on
#     one machine see each other's open files, and `cvmfs_server publish` refuses while any
#     process has a file under /cvmfs/<repo> open for writing ("Open writable file descriptors").
#   NODE_HOLD=publish: before publishing, say so (<node>.holding) and wait for <node>.go.
#   NODE_HOLD_AFTER=transaction: the same once the transaction is open, before returning.
#   NODE_DIRECT=publish: run that command in the wrapper's place (exec), its output going
#     straight to reconciler, as without the wrapper (not logged; <node>.<command> says it started).
_WRAPPER = r"""#!/bin/sh
sync=$NODE_SYNC; me=$NODE_NAME
wait_for() {
  n=0
  while [ ! -e "$1" ]; do
    n=$((n + 1)); [ "$n" -gt 1800 ] && { echo "test wrapper: $1 did not appear within 180 s" >&2; return 1; }
    sleep 0.1
  done
}
if [ "$1" = "${NODE_HOLD:-}" ]; then
  touch "$sync/$me.holding"; wait_for "$sync/$me.go"
fi
if [ "$1" = publish ] && [ -n "${NODE_MEET:-}" ]; then
  touch "$sync/$me.publishing"
  for other in $NODE_MEET; do wait_for "$sync/$other.publishing"; done
fi
if [ "$1" = "${NODE_DIRECT:-}" ]; then
  touch "$sync/$me.$1"; exec /usr/bin/cvmfs_server "$@"
fi
start=$(date +%s.%N)
out=$(mktemp "$sync/$me.$1.XXXXXX")
/usr/bin/cvmfs_server "$@" > "$out.stdout" 2> "$out.stderr"
code=$?
cat "$out.stdout"; cat "$out.stderr" >&2  # kept: what the command said, for the test to read
printf '%s %s %s %s %s\n' "$me" "$start" "$(date +%s.%N)" "$code" "$*" >> "$sync/calls.log"
if [ "$1" = "${NODE_HOLD_AFTER:-}" ] && [ "$code" = 0 ]; then
  touch "$sync/$me.holding"; wait_for "$sync/$me.go"
fi
if [ "$1" = transaction ] && [ "$code" = 0 ] && [ -n "${NODE_MEET:-}" ]; then
  touch "$sync/$me.open"
  for other in $NODE_MEET; do wait_for "$sync/$other.open"; done
fi
exit "$code"
"""


def write_wrapper(directory: Path) -> Path:
    """The wrapper as `cvmfs_server` in `directory` (to go first on PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cvmfs_server"
    path.write_text(_WRAPPER)
    path.chmod(0o755)
    return directory


@dataclass(frozen=True)
class Call:
    """One `cvmfs_server` call the wrapper logged."""

    node: str
    start: float
    end: float
    code: int
    argv: Tuple[str, ...]


def read_calls(sync: Path) -> List[Call]:
    """Every call logged in `sync`, in the order they ended."""
    log = sync / "calls.log"
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        node, start, end, code, *argv = line.split(" ")
        calls.append(Call(node, float(start), float(end), int(code), tuple(argv)))
    return calls


def wait_for(path: Path, timeout: float = 120, what: str = "", proc: Optional[subprocess.Popen] = None) -> None:
    """Poll until `path` exists (a signal from the wrapper); fail after `timeout`
    or as soon as `proc` ended without giving it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what or path}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or path} did not happen within {timeout} s")
        time.sleep(0.05)


@dataclass
class Node:
    """A publisher node: `host` runs in this machine's namespace, others in mknode.sh's."""

    name: str
    directory: Optional[Path] = None  # None: the host

    def argv(self, *command: str) -> List[str]:
        """`command` run on this node."""
        if self.directory is None:
            return list(command)
        pid = (self.directory / "pid").read_text().strip()
        return ["nsenter", "-t", pid, "-m", *command]

    def server(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The real `cvmfs_server` on this node."""
        done = subprocess.run(self.argv(cvmfs_real.REAL_COMMAND, *args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}: cvmfs_server {' '.join(args)}: exit {done.returncode}: "
                                 f"{done.stdout[-1500:]}{done.stderr[-1500:]}")
        return done

    def in_transaction(self, repo: str) -> bool:
        """True when this node's `cvmfs_server list` shows `repo` in a transaction."""
        return any(line.split(" ", 1)[0] == repo and "in transaction" in line
                   for line in self.server("list").stdout.splitlines())

    def reconcile(self, watchlist: Path, target: str, sync: Path, wrapper: Path, *, cwd: Path,
                  **env: str) -> subprocess.Popen:
        """`reconcile --once --target <target>` on this node, in a process group
        of its own (so that a test can kill it with its children), not yet waited for."""
        environ = dict(os.environ, PATH=f"{wrapper}{os.pathsep}{os.environ['PATH']}", NODE_NAME=self.name,
                       NODE_SYNC=str(sync), **env)
        return subprocess.Popen(self.argv(sys.executable, "-m", "reconciler.cli", "--once", "--watchlist",
                                          str(watchlist), "--target", target),
                                cwd=cwd, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> Tuple[int, str]:
    """Wait for a run; its exit code and everything it printed."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for_event(event: "threading.Event", what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until `event` is set; fail after `timeout` or as soon as `proc` ended without it."""
    deadline = time.monotonic() + timeout
    while not event.wait(0.05):
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {(out + err)[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")


def wait_group_gone(pgid: int, what: str, timeout: float = 120) -> None:
    """Poll until no process of group `pgid` is left (a killed run's orphans)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still runs after {timeout} s")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 the run and every process it started (the wrapper, cvmfs_server)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


@contextlib.contextmanager
def nodes(repo: str, base: Path, names: Sequence[str]) -> Iterator[Dict[str, Node]]:
    """Publisher nodes of `repo` named `names` (directories under `base`),
    stopped on the way out whatever happened."""
    started: List[Node] = []
    try:
        for name in names:
            node = Node(name, base / f"node-{name}")
            started.append(node)
            done = subprocess.run(["bash", str(MKNODE), repo, str(node.directory)], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"mknode.sh {repo} {node.directory}: {done.stdout[-1500:]}{done.stderr[-1500:]}")
        yield {node.name: node for node in started}
    finally:
        for node in started:
            if node.directory is None or not (node.directory / "pid").exists():
                continue
            try:
                # A transaction left open holds its gateway lease (2 hours here) after the node is gone.
                if node.in_transaction(repo):
                    node.server("abort", "-f", repo, check=False)
            finally:
                subprocess.run(["bash", str(MKNODE), "--stop", str(node.directory)], capture_output=True, timeout=120)


# -- the gateway ---------------------------------------------------------------

def gateway_running() -> bool:
    """True when the gateway answers."""
    try:
        with urllib.request.urlopen("http://localhost:4929/api/v1/repos", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def stop_gateway() -> None:
    """Stop the gateway as mkgwrepo.sh does, and wait until it is gone."""
    pid = int(GATEWAY_PID.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"cvmfs_gateway (pid {pid}) did not stop within 30 s")
        time.sleep(0.05)
    GATEWAY_PID.unlink(missing_ok=True)


def start_gateway() -> None:
    """Start the gateway (up.sh --gateway-only; it waits until it answers)."""
    done = subprocess.run(["bash", str(UP), "--gateway-only"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not gateway_running():
        raise RuntimeError(f"up.sh --gateway-only: {done.stdout[-1500:]}{done.stderr[-1500:]}")


# -- revisions, read over HTTP ---------------------------------------------------

def published_revision(repo: str) -> int:
    """The revision the stratum 0 serves (`S` line of .cvmfspublished)."""
    with urllib.request.urlopen(f"{STRATUM0}/{repo}/.cvmfspublished", timeout=30) as answer:
        data = answer.read()
    for line in data.split(b"\n"):
        if line == b"--":
            break
        if line.startswith(b"S"):
            return int(line[1:])
    raise AssertionError(f"{repo}/.cvmfspublished has no revision line")


def revisions(repo: str) -> Dict[int, str]:
    """Every revision with its root catalog hash, from the auto-tags that
    each publish makes (`cvmfs_server tag -l -x`: name hash size revision ...)."""
    done = subprocess.run([cvmfs_real.REAL_COMMAND, "tag", "-l", "-x", repo], capture_output=True, text=True,
                          timeout=120, check=True)
    found: Dict[int, str] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].isdigit():
            found[int(fields[3])] = fields[1]
    return found


@dataclass(frozen=True)
class Entry:
    """One catalog entry: what a client would see at a path."""

    flags: int
    mode: int
    size: int
    symlink: str
    content: bytes  # the content hash (files)


def _catalog(repo: str, digest: str, scratch: Path) -> sqlite3.Connection:
    url = f"{STRATUM0}/{repo}/data/{digest[:2]}/{digest[2:]}C"
    with urllib.request.urlopen(url, timeout=60) as answer:
        data = zlib.decompress(answer.read())
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".sqlite")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    db = sqlite3.connect(name)
    db.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")  # names as os.walk gives them
    return db


@dataclass
class Tree:
    """A revision's whole tree: entries by path ("" is the root, "a/b" below it)."""

    entries: Dict[str, Entry] = field(default_factory=dict)

    def below(self, top: str) -> Dict[str, Entry]:
        """The entries under directory `top`, by path relative to it."""
        prefix = top + "/"
        return {path[len(prefix):]: entry for path, entry in self.entries.items() if path.startswith(prefix)}


def read_tree(repo: str, root_hash: str, scratch: Path) -> Tree:
    """The tree of the revision whose root catalog is `root_hash`, with every nested catalog."""
    rows: Dict[Tuple[int, int], Tuple[Tuple[int, int], str, Entry]] = {}
    pending = [root_hash]
    while pending:
        db = _catalog(repo, pending.pop(), scratch)
        try:
            for m1, m2, p1, p2, name, flags, mode, size, symlink, content in db.execute(
                    "SELECT md5path_1, md5path_2, parent_1, parent_2, name, flags, mode, size, symlink, hash "
                    "FROM catalog"):
                rows[(m1, m2)] = ((p1, p2), name, Entry(flags, mode, size, symlink or "", bytes(content or b"")))
            pending.extend(sha1 for (sha1,) in db.execute("SELECT sha1 FROM nested_catalogs"))
        finally:
            db.close()
    children: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
    root = None
    for key, (parent, name, _) in rows.items():
        if parent == (0, 0) and name == "":
            root = key
        else:
            children.setdefault(parent, []).append(key)
    assert root is not None, f"catalog {root_hash} has no root entry"
    tree = Tree({"": rows[root][2]})
    stack = [(root, "")]
    while stack:
        key, path = stack.pop()
        for child in children.get(key, []):
            child_path = f"{path}/{rows[child][1]}" if path else rows[child][1]
            tree.entries[child_path] = rows[child][2]
            stack.append((child, child_path))
    return tree


def tag_links(tree: Tree) -> Dict[str, str]:
    """Every published tag (`<dest>:<tag>` symlink into `.images`) and the image directory it names."""
    links = {}
    for path, entry in tree.entries.items():
        if entry.symlink and ":" in path.rsplit("/", 1)[-1] and ".images/" in entry.symlink:
            links[path] = os.path.normpath(os.path.join(os.path.dirname(path), entry.symlink))
    return links


# -- a node's way to the gateway, held at one request ----------------------------

class GatewayProxy:
    """An HTTP proxy between one node and the gateway that forwards every
    request, except that it can hold one: `hold(method, path regex, forward=…)`.
    `forward=False` keeps the request from the gateway (the node is, as far as
    the gateway knows, still uploading); `forward=True` lets the gateway answer
    it and keeps the answer from the node (the gateway committed, the node does
    not know yet). `held` is set when the request arrived (and, with forward,
    the gateway answered); `release()` lets it go on: an unforwarded request is
    then dropped (its client is gone by then), a kept answer is sent.

    Gateway API paths: cvmfs 2.11.5 gateway/internal/gateway/frontend/frontend.go
    (POST /api/v1/leases/<token> commits a lease, POST /api/v1/payloads uploads)."""

    def __init__(self, upstream: str = "127.0.0.1:4929") -> None:
        self.upstream = upstream
        self.held = threading.Event()
        self._release = threading.Event()
        self._rule: Optional[Tuple[str, re.Pattern[str], bool]] = None
        self.requests: List[Tuple[str, str, int]] = []  # method, path, status (0: dropped)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                rule = proxy._rule
                holding = rule is not None and rule[0] == self.command and rule[1].search(self.path) is not None
                if holding and rule is not None and not rule[2]:
                    proxy._rule = None
                    proxy.held.set()
                    proxy._release.wait(timeout=300)
                    proxy.requests.append((self.command, self.path, 0))
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "expect")}
                conn = http.client.HTTPConnection(proxy.upstream, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    out = [(k, v) for k, v in answer.getheaders()
                           if k.lower() not in ("content-length", "transfer-encoding", "connection")]
                finally:
                    conn.close()
                proxy.requests.append((self.command, self.path, answer.status))
                if holding:
                    proxy._rule = None
                    proxy.held.set()
                    proxy._release.wait(timeout=300)
                self.send_response(answer.status)
                for key, value in out:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)  # the node killed mid-answer is expected

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def hold(self, method: str, path: str, *, forward: bool) -> None:
        """Hold the next `method` request whose path matches the regex `path`."""
        self._rule = (method, re.compile(path), forward)

    def release(self) -> None:
        """Let a held request or answer go on."""
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def route(self, node: Node, repo: str) -> None:
        """Point `node`'s upstream (server.conf, read by every cvmfs_server call) at this proxy."""
        assert node.directory is not None
        conf = node.directory / "etc-repos" / repo / "server.conf"
        text = conf.read_text()
        assert "http://localhost:4929/api/v1" in text, text
        conf.write_text(text.replace("http://localhost:4929/api/v1", f"http://127.0.0.1:{self.port}/api/v1"))
