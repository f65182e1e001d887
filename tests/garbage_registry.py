"""A hostile registry on loopback: every endpoint answers garbage.

Which garbage depends on the repository's last path component, so that one
server holds entries failing each their own way:

    tags-notjson   the tag list is not JSON (with escape sequences in it)
    tags-shape     the tag list is JSON of the wrong shape
    manifest-junk  HEAD answers 200 with a bad digest header, GET with random bytes
    manifest-huge  the manifest GET streams 16 MiB of junk without a length
    error-body     every answer is 400 with an error message that forges log
                   lines and carries terminal control sequences
    challenge      every answer is 401 with a malformed Bearer challenge
    redirect       every answer redirects to itself
    mixed          the tag list holds "v1" and invalid tag names; everything
                   else is forwarded to `upstream` (a healthy registry's
                   fixtures/basic), so v1 is a real image

`/v2/` itself answers 200 with junk and junk headers. Every request is
recorded (method and path), so a test can tell the garbage was read.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler
from typing import List, Optional, Tuple

import httpx

from tests.loopback_http import LoopbackServer

# What a registry could say to forge a log line and take over a terminal: a
# newline and a fake record, a window-title OSC, a screen clear, colours.
FORGED = "denied\n2026-01-01T00:00:00 INFO reconciler: everything published fine\x1b]0;pwned\x07\x1b[2J\x1b[31mred"
INVALID_TAGS = ["-bad", "v1\n", "\x1b[31mred", "a" * 200, ".dot"]


class GarbageRegistry:
    """A threaded HTTP server on 127.0.0.1 answering garbage (see the module doc)."""

    def __init__(self, upstream: Optional[str] = None, upstream_repository: str = "fixtures/basic") -> None:
        self.upstream = upstream
        self.upstream_repository = upstream_repository
        self.requests: List[Tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = LoopbackServer(self.handle)
        self.port, self.host = self._server.port, self._server.host
        self._http = httpx.Client(timeout=30)

    def close(self) -> None:
        self._server.close()
        self._http.close()

    def requested(self, flavour: str) -> bool:
        """True once a request for the repository `flavour` arrived."""
        with self._lock:
            return any(f"/{flavour}/" in path for _, path in self.requests)

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.requests.append((method, h.path))
        path = h.path.split("?")[0]
        if path in ("/v2", "/v2/"):
            return self._send(h, method, 200, b"\x00\xff junk \x1b[2J", {"Docker-Distribution-API-Version": "\x7f"})
        parts = path.split("/")
        flavour = next((p for p in ("tags-notjson", "tags-shape", "manifest-junk", "manifest-huge", "error-body",
                                    "challenge", "redirect", "mixed") if p in parts), "")
        if flavour == "mixed":
            return self._mixed(h, method, path)
        if flavour == "tags-notjson" and path.endswith("/tags/list"):
            return self._send(h, method, 200, b"\x1b]0;pwned\x07{not json", {"Content-Type": "application/json"})
        if flavour == "tags-shape" and path.endswith("/tags/list"):
            body = json.dumps({"name": 3, "tags": {"v1": [None]}}).encode()
            return self._send(h, method, 200, body, {"Content-Type": "application/json"})
        if flavour == "manifest-junk":
            return self._send(h, method, 200, os.urandom(512), {
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                "Docker-Content-Digest": "sha256:\x1b[31mnot-a-digest"})
        if flavour == "manifest-huge" and method == "GET":
            return self._endless(h)
        if flavour == "error-body":
            body = json.dumps({"errors": [{"code": "DENIED", "message": FORGED, "detail": FORGED}]}).encode()
            return self._send(h, method, 400, body, {"Content-Type": "application/json"})
        if flavour == "challenge":
            return self._send(h, method, 401, b"{}", {
                "WWW-Authenticate": 'Bearer realm="\x1b[2J",,scope="repository:x:push,pull",realm=, ,="'})
        if flavour == "redirect":
            return self._send(h, method, 307, b"", {"Location": f"http://{self.host}{h.path}"})
        return self._send(h, method, 200, b"\xff\xfe\x00garbage", {"Content-Type": "application/json"})

    def _mixed(self, h: BaseHTTPRequestHandler, method: str, path: str) -> None:
        if path.endswith("/tags/list"):
            body = json.dumps({"name": "mixed", "tags": ["v1", *INVALID_TAGS]}).encode()
            return self._send(h, method, 200, body, {"Content-Type": "application/json"})
        assert self.upstream is not None, "mixed needs an upstream registry"
        prefix, _, rest = path.partition("/mixed/")
        upstream_path = f"/v2/{self.upstream_repository}/{rest}"
        answer = self._http.request(method, f"{self.upstream}{upstream_path}",
                                    headers={"Accept": h.headers.get("Accept", "*/*")})
        headers = {k: v for k, v in answer.headers.items()
                   if k.lower() in ("content-type", "docker-content-digest", "etag")}
        h.send_response(answer.status_code)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", answer.headers.get("content-length", str(len(answer.content))))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(answer.content)

    def _endless(self, h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"{" * 65536
        try:
            for _ in range(256):  # 16 MiB, then the connection closes
                h.wfile.write(chunk)
        except (ConnectionError, TimeoutError):
            pass
        h.close_connection = True

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, method: str, status: int, body: bytes, headers: dict) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body)
