"""Run the Debian `docker-registry` (distribution 2.8) on 127.0.0.1 for tests.

Three modes: anonymous; `htpasswd` Basic auth; Bearer token auth, with a
token server written here that signs JWTs with a test key and an `x5c`
header and grants only the scopes its access list allows, so the real
registry enforces pull scopes.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import httpx

REGISTRY_BINARY = shutil.which("docker-registry") or shutil.which("registry")
TOKEN_SERVICE = "reconciler-test-registry"
TOKEN_ISSUER = "reconciler-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> None:
    """Poll `predicate` until it is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class TokenServer:
    """A distribution token server. `users` maps name -> password; `acl` maps a
    user name (or "" for anonymous) to repository glob patterns it may pull."""

    users: Dict[str, str]
    acl: Dict[str, List[str]]
    workdir: Path
    expires_in: int = 300
    requests: List[dict] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests with 503 (a failing token endpoint)

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.cert_path = self.workdir / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                status, body = server.answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, path: str, authorization: Optional[str]) -> tuple:
        import jwt

        query = parse_qs(urlsplit(path).query)
        if self.fail_next > 0:
            self.fail_next -= 1
            self.requests.append({"ok": False, "injected": True})
            return 503, {"details": "injected token endpoint failure"}
        user = ""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            try:
                name, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return 400, {"details": "bad Authorization"}
            if scheme.lower() != "basic" or self.users.get(name) != password:
                self.requests.append({"user": name, "ok": False})
                return 401, {"details": "incorrect username or password"}
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            allowed = [a for a in actions.split(",") if a == "pull"] + (
                [a for a in actions.split(",") if a in ("push", "*")] if user == "admin" else [])
            if kind == "repository" and any(fnmatch.fnmatch(repo, p) for p in self.acl.get(user, [])):
                access.append({"type": "repository", "name": repo, "actions": allowed})
        self.requests.append({"user": user, "ok": True, "scopes": query.get("scope", [])})
        now = int(time.time())
        claims = {"iss": TOKEN_ISSUER, "sub": user, "aud": query.get("service", [""])[0], "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": [self._x5c]})
        return 200, {"token": token, "access_token": token, "expires_in": self.expires_in,
                     "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()}


@dataclass
class RegistryServer:
    """One running registry process."""

    host: str
    process: subprocess.Popen
    storage: Path
    log_path: Path
    mode: str
    token_server: Optional[TokenServer] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.token_server:
            self.token_server.close()

    def access_log(self) -> List[dict]:
        """The registry's JSON request log lines (method, uri, status, bytes)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "http.request.method" in entry and "http.response.status" in entry:
                out.append(entry)
        return out


def _htpasswd(users: Dict[str, str]) -> str:
    import bcrypt

    return "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4, prefix=b'2a')).decode()}\n"
                   for u, p in users.items())


def start_registry(workdir: Path, *, mode: str = "anonymous", storage: Optional[Path] = None,
                   users: Optional[Dict[str, str]] = None, acl: Optional[Dict[str, List[str]]] = None,
                   notifications: Optional[dict] = None) -> RegistryServer:
    """Start a registry on a free 127.0.0.1 port and wait until it answers."""
    if REGISTRY_BINARY is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = storage or workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"}, "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "reconciler-tests"},
    }
    token_server = None
    users = users or {}
    if mode == "basic":
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(_htpasswd(users))
        config["auth"] = {"htpasswd": {"realm": "reconciler-tests", "path": str(htpasswd)}}
    elif mode == "token":
        token_server = TokenServer(users, acl or {}, workdir)
        config["auth"] = {"token": {"realm": token_server.realm, "service": TOKEN_SERVICE,
                                    "issuer": TOKEN_ISSUER, "rootcertbundle": str(token_server.cert_path)}}
    elif mode != "anonymous":
        raise ValueError(mode)
    if notifications:
        config["notifications"] = notifications
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log_path = workdir / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
    server = RegistryServer(f"127.0.0.1:{port}", process, storage, log_path, mode, token_server)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{server.url}/v2/", timeout=1).status_code in (200, 401)
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, what=f"docker-registry on {server.host}")
    except BaseException:
        server.stop()
        raise
    return server
