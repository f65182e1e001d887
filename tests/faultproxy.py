"""A fault-injecting HTTP proxy for the loopback registry.

Rules match requests by method and a regular expression on the path (with
query), apply to the next `times` matching requests, and do one of:
- `status`: answer with an HTTP status (and headers) instead of the registry;
- `reset_after`: send the headers and this many body bytes, then reset the connection;
- `short_after`: send this many body bytes of a full Content-Length, then close;
- `corrupt`: flip a byte in the middle of the body;
- `delay`: wait this many seconds before answering;
- `body`: answer 200 with these bytes (and `Docker-Content-Digest` of them),
  as a registry serving a malformed manifest would;
- `encoding`: label the registry's answer `Content-Encoding: <encoding>`
  without changing its bytes (Apache's mime magic labels .tar.gz `x-gzip`);
- `compress`: gzip the answer on the fly and label it (`gzip`, or `encoding`),
  as a front end ignoring `Accept-Encoding: identity` would.
`method="ANY"` matches every method.
`paginate_tags` serves tags/list in pages of that size with Link headers
(distribution 2.8 does not paginate), so a failure can hit page 2.
Every request is recorded (method, path, Range header, answer).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from tests.loopback_http import LoopbackServer


@dataclass
class Fault:
    path: str  # regex on the path with query
    method: str = "GET"
    times: int = 1
    status: Optional[int] = None
    headers: Dict[str, str] = field(default_factory=dict)
    reset_after: Optional[int] = None
    short_after: Optional[int] = None
    corrupt: bool = False
    delay: float = 0.0
    body: Optional[bytes] = None
    content_type: str = "application/vnd.oci.image.manifest.v1+json"
    encoding: Optional[str] = None
    compress: bool = False
    hits: int = 0


class FaultProxy:
    def __init__(self, upstream: str, paginate_tags: Optional[int] = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: List[Fault] = []
        self.requests: List[dict] = []
        self.paginate_tags = paginate_tags
        self._lock = threading.Lock()
        self._server = LoopbackServer(self.handle)
        self.port, self.host = self._server.port, self._server.host
        self._http = httpx.Client(timeout=30)

    def close(self) -> None:
        self._server.close()
        self._http.close()

    def add(self, **kw: object) -> Fault:
        fault = Fault(**kw)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(fault)
        return fault

    def _match(self, method: str, path: str) -> Optional[Fault]:
        with self._lock:
            for fault in self.faults:
                if fault.method in (method, "ANY") and fault.hits < fault.times and re.search(fault.path, path):
                    fault.hits += 1
                    return fault
        return None

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        fault = self._match(method, h.path)
        record = {"method": method, "path": h.path, "range": h.headers.get("Range"), "at": time.monotonic(),
                  "fault": None if fault is None else {k: v for k, v in fault.__dict__.items() if k != "hits"}}
        with self._lock:
            self.requests.append(record)
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.status:
            body = json.dumps({"errors": [{"code": "INJECTED", "message": "injected fault"}]}).encode()
            h.send_response(fault.status)
            for k, v in fault.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(body)
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
        if fault and fault.body is not None:
            status, body = 200, fault.body
            out_headers = {"Content-Type": fault.content_type,
                           "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}
            if method == "HEAD":
                out_headers["Content-Length"] = str(len(body))
        elif self.paginate_tags and "/tags/list" in h.path:
            status, out_headers, body = self._tags_page(h.path, headers)
        else:
            response = self._http.request(method, self.upstream + h.path, headers=headers)
            status, body = response.status_code, response.content
            out_headers = {k: v for k, v in response.headers.items()
                           if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
            if method == "HEAD":
                out_headers["Content-Length"] = response.headers.get("content-length", "0")
        if fault and fault.compress and body:
            body = gzip.compress(body)
            out_headers["Content-Encoding"] = fault.encoding or "gzip"
        elif fault and fault.encoding:
            out_headers["Content-Encoding"] = fault.encoding
        if fault and fault.corrupt and body:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        h.send_response(status)
        for k, v in out_headers.items():
            h.send_header(k, v)
        if method != "HEAD":
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method == "HEAD":
            return
        if fault and fault.reset_after is not None:
            h.wfile.write(body[:fault.reset_after])
            h.wfile.flush()
            # RST instead of FIN: the client sees a broken connection mid-body
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        if fault and fault.short_after is not None:
            h.wfile.write(body[:fault.short_after])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)

    def _tags_page(self, path: str, headers: Dict[str, str]):
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        upstream = self._http.get(f"{self.upstream}{parts.path}", headers=headers)
        if upstream.status_code != 200:
            return upstream.status_code, {"Content-Type": "application/json"}, upstream.content
        tags = sorted(upstream.json().get("tags") or [])
        last = query.get("last", [""])[0]
        start = tags.index(last) + 1 if last in tags else 0
        page = tags[start:start + self.paginate_tags]
        out = {"Content-Type": "application/json"}
        if start + self.paginate_tags < len(tags):
            out["Link"] = f'<{parts.path}?{urlencode({"n": self.paginate_tags, "last": page[-1]})}>; rel="next"'
        return 200, out, json.dumps({"name": upstream.json().get("name"), "tags": page}).encode()
