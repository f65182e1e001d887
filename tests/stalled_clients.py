"""Clients that stall the service's listener, and what they cost it, for
tests/test_listener_hostile.py and `python -m tests.bench.stalled_clients`.

Each client is a raw socket on loopback, so it can stop anywhere in a request:
- half_head: half of a request head, then silence;
- forged_body: a well-formed but forged GitHub signature, Content-Length
  1 MiB (the most a hook may send) and one byte less, then silence;
- trickle_head / trickle_body: one byte every `every` seconds, of the head or
  (after a forged head) of the body, until the service closes the connection.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import httpx

from tests.registry_server import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hook-token-for-the-tests-0123456789"
BODY_BYTES = 1 << 20
FORGED_SIGNATURE = "sha256=" + "0" * 64


def rss_kib(pid: int) -> int:
    """The resident set of process `pid`, in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def fd_count(pid: int) -> int:
    """The open file descriptors of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def log_messages(path: Path) -> List[str]:
    """The messages of a service's JSON log, in order."""
    return [json.loads(line)["message"] for line in path.read_text().splitlines() if line.startswith("{")]


def _head(path: str, port: int, extra: str = "", length: Optional[int] = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{extra}"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


@dataclass
class Stallers:
    """Open stalled connections to one listener; `close()` ends them all."""

    port: int
    sockets: List[socket.socket] = field(default_factory=list)
    threads: List[threading.Thread] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    trickling: List[int] = field(default_factory=list)  # one item per trickle that has sent its first bytes

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sockets.append(sock)
        return sock

    def half_head(self, n: int) -> None:
        head = _head("/hooks/github", self.port, f"X-Hub-Signature-256: {FORGED_SIGNATURE}\r\n", 100)
        for _ in range(n):
            self._connect().sendall(head[: len(head) // 2])

    def forged_body(self, n: int) -> None:
        head = _head("/hooks/github", self.port, f"X-Hub-Signature-256: {FORGED_SIGNATURE}\r\n", BODY_BYTES)
        body = b"{" + b" " * (BODY_BYTES - 3)  # one byte short of the declared length

        def one() -> None:
            sock = self._connect()
            try:
                sock.sendall(head + body)
            except OSError:
                pass  # refused (503) and closed by the service: what a fixed service does

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: one(), range(n)))

    def _trickle(self, payload: bytes, first: bytes, every: float) -> None:
        sock = self._connect()

        def run() -> None:
            try:
                sock.sendall(first)
                self.trickling.append(1)
                for i in range(len(payload)):
                    if self.done.wait(every):
                        return
                    sock.sendall(payload[i:i + 1])
            except OSError:
                pass  # the service closed the connection

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def trickle_head(self, n: int, every: float = 0.2) -> None:
        head = _head("/hooks/github", self.port, f"X-Hub-Signature-256: {FORGED_SIGNATURE}\r\n", 100)
        for _ in range(n):
            self._trickle(head, b"", every)

    def trickle_body(self, n: int, every: float = 0.2) -> None:
        head = _head("/hooks/github", self.port, f"X-Hub-Signature-256: {FORGED_SIGNATURE}\r\n", 10_000)
        for _ in range(n):
            self._trickle(b" " * 10_000, head, every)

    def close(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(5)
        for sock in self.sockets:
            sock.close()


@dataclass
class ServiceProcess:
    """A real service (tests/listener_runner.py) with a listener and the
    distribution and github webhooks, watching a tag that its registry does
    not hold (each cycle ends at once: 404, nothing to retry)."""

    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def valid_hook(self) -> int:
        """A token-authenticated distribution hook for the watched image: its status code."""
        body = json.dumps({"events": [{"action": "push", "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "team/app", "tag": "v1"}}]})
        return httpx.post(f"{self.base}/hooks/distribution", content=body, timeout=5,
                          headers={"Authorization": f"Bearer {TOKEN}"}).status_code

    def messages(self) -> List[str]:
        return log_messages(self.log_path)

    def terminate(self, timeout: float) -> Optional[int]:
        """SIGTERM; the exit code, or None when it did not exit within `timeout` (then it is killed)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def start_service(workdir: Path, registry: str, limits: Dict[str, float]) -> ServiceProcess:
    """Start the service in `workdir` with `limits` (ListenerLimits fields),
    watching `registry` (host:port, plain HTTP); wait until it answers."""
    port = free_port()
    watchlist = workdir / "watchlist.toml"
    watchlist.write_text(
        f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[defaults]\ninterval = "1h"\n'
        f'[registries."{registry}"]\ninsecure = true\n[service]\nlisten = "127.0.0.1:{port}"\n'
        f'[webhooks.distribution]\ntoken_env = "HOOK_TOKEN"\n[webhooks.github]\ntoken_env = "HOOK_TOKEN"\n'
        f'[[image]]\nsource = "{registry}/team/app"\ntags = ["v1"]\ndest = "app"\n')
    env = {**os.environ, "HOOK_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), "LISTENER_LIMITS": json.dumps(limits)}
    log_path = workdir / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "listener_runner.py"), "--watchlist",
                                 str(watchlist), "--log-format", "json"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=workdir)
    service = ServiceProcess(proc, port, log_path)
    try:
        wait_until(service.healthy, timeout=30, what="the service to listen")
        # The first cycle (every entry is due at start) fails at once: wait for it,
        # so that it does not run while the test measures.
        wait_until(lambda: any(m.startswith("cycle done") for m in service.messages()), timeout=30,
                   what="the first cycle to end")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return service
