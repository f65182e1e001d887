"""Per registry family, end to end: a small proxy in front of the real
docker-registry reproduces that family's documented habits (where its token
service lives and what it answers, how it pages tags, where blobs are
redirected to, what its headers look like), and the reconciler publishes
through it.

For every family the same image is published: two platforms, several
layers with whiteouts and an opaque directory, selected through
`tag_pattern` among tags spread over several pages. Then:
- the published trees are right (the whiteouts applied);
- a second run downloads nothing (no blob request, 0 blob bytes);
- no Authorization header ever reaches a storage origin (the proxy records
  every request on every origin).

Each habit names where it is documented. The families' hosts are separate
127.0.0.1 ports here: what matters is which origin answers what.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import httpx
import pytest

from fixtures.build import BuiltImage, build_image
from fixtures.push import FixturePusher
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.watchlist import load_watchlist

FAST = RetryPolicy(attempts=3, base_delay=0.01, timeout=10)
REPOSITORY = "fixtures/families"
# Lexical order puts "1.1.0" on the first page and "v1.1.0" on the last: the
# selection needs every page.
TAGS = ["0.9.0", "1.0.0", "1.1.0", "2.0.0-rc1", "edge", "latest", "nightly", "sha-0a1b", "sha-2c3d", "sha-4e5f",
        "stable", "v1.1.0"]
PATTERN = r"1\.1\.0$"
SELECTED = ["1.1.0", "v1.1.0"]
PAGE = 5  # the registry's own page size here, so that 12 tags make 3 pages
SECRET = "fam1ly-s3cret-password"

# Two platforms; layers with whiteouts (a file, a directory, through an upper
# layer) and an opaque directory, so that a wrong applier shows.
SPEC = {
    "name": "families",
    "tags": TAGS,
    "attestation": True,
    "config": {"Cmd": ["/bin/sh"]},
    "platforms": [
        {"os": "linux", "architecture": "amd64", "layers": [
            {"entries": [
                {"type": "file", "path": "etc/os-release", "content": "ID=families\n"},
                {"type": "file", "path": "gone/file", "content": "x\n"},
                {"type": "dir", "path": "gone/tree/deep"},
                {"type": "file", "path": "gone/tree/deep/f", "content": "x\n"},
                {"type": "file", "path": "opq/lower", "content": "lower\n"},
                {"type": "file", "path": "arch", "content": "amd64\n"},
            ]},
            {"entries": [
                {"type": "whiteout", "path": "gone/file"},
                {"type": "whiteout", "path": "gone/tree"},
                {"type": "opaque", "path": "opq"},
                {"type": "file", "path": "opq/upper", "content": "upper\n"},
            ]},
            {"entries": [
                {"type": "file", "path": "app/data", "size": 20000, "fill": "d"},
                {"type": "whiteout", "path": "etc/os-release"},
            ]},
        ]},
        {"os": "linux", "architecture": "arm64", "variant": "v8", "layers": [
            {"entries": [
                {"type": "file", "path": "arch", "content": "arm64\n"},
                {"type": "file", "path": "tmp/scratch", "content": "x\n"},
            ]},
            {"entries": [{"type": "whiteout", "path": "tmp/scratch"},
                         {"type": "file", "path": "app/data", "size": 10000, "fill": "e"}]},
        ]},
    ],
}


@pytest.fixture(scope="module")
def family_image(fixture_registry) -> BuiltImage:
    """The image every family serves, pushed once to the real registry."""
    image = build_image(SPEC)
    FixturePusher(fixture_registry.host).push(image)
    return image


# -- the family habits ---------------------------------------------------------------------


@dataclass
class Habits:
    """How one registry family behaves; each field's value cites its source in FAMILIES."""

    name: str
    auth: str = "none"  # "bearer" | "basic" | "none"
    token_on_registry_origin: bool = False  # else a token service on its own origin
    token_path: str = "/token"
    service: str = "registry"
    token_body: Callable[[str], dict] = lambda t: {"token": t}
    credentials: Optional[Tuple[str, str]] = None  # needed to get a token (or for Basic)
    token_uses: Optional[int] = None  # a token is rejected after this many uses ...
    rejected_token_challenge: str = ""  # ... with this challenge
    paging: str = "one-page"  # one-page | n-last-link | n-last-no-link | opaque-last | next-page
    blob_redirect: Optional[int] = None  # 302 / 307 to the storage origin
    repo_prefix: str = ""  # a path segment the registry strips (Artifactory's repository path method)
    redirector: bool = False  # every /v2/ request is redirected to a backend origin (registry.k8s.io)
    head_digest: bool = True
    content_type_suffix: str = ""
    chunked_manifests: bool = False
    rate_limit_headers: bool = False
    refuse_n_above: Optional[int] = None
    basic_challenge: str = ""  # the Basic challenge as the family words it (default: distribution's)


def _nanosecond_now() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}123Z"


FAMILIES = {
    # Docker Hub: the token service auth.docker.io and the CDN production.cloudflare.docker.com
    # are other hosts than registry-1.docker.io (osism/ansible-collection-services#1049);
    # its token answers carry `token` and `access_token`, `expires_in` and `issued_at`
    # (the distribution token spec, docs.docker.com/registry/spec/auth/token/; nanoseconds
    # as Go prints them); tags/list ignores n and answers every tag
    # (docker/hub-feedback#1960); 307 to the CDN for blobs; RateLimit headers on
    # manifests (docs.docker.com/docker-hub/usage/pulls/).
    "dockerhub": Habits(
        "dockerhub", auth="bearer", service="registry.docker.io",
        token_body=lambda t: {"token": t, "access_token": t, "expires_in": 300, "issued_at": _nanosecond_now()},
        paging="one-page", blob_redirect=307, rate_limit_headers=True),
    # GHCR: the token service is ghcr.io/token on the registry's origin and its token
    # has no expiry (oras-project/rust-oci-client#6); tags come 100 a page with a
    # Link (argoproj-labs/argocd-image-updater#1660), followed as given
    # (opencontainers/distribution-spec#470); blobs redirect to
    # pkg-containers.githubusercontent.com.
    "ghcr": Habits(
        "ghcr", auth="bearer", token_on_registry_origin=True, token_path="/token", service="ghcr.io",
        token_body=lambda t: {"token": t}, paging="opaque-last", blob_redirect=307),
    # Quay: token at /v2/auth on the registry's origin; tags paged by an encrypted
    # `next_page` token, 50 a page whatever n says, `last` ignored (deitch/docker_registry2#56,
    # regclient/regclient#272, opencontainers/distribution-spec#116); manifest HEAD
    # Content-Type with `; charset=utf-8` (camallo/dkregistry-rs#82); blobs 302 to storage.
    "quay": Habits(
        "quay", auth="bearer", token_on_registry_origin=True, token_path="/v2/auth", service="quay.io",
        token_body=lambda t: {"token": t}, paging="next-page", blob_redirect=302,
        content_type_suffix="; charset=utf-8"),
    # Harbor: token at /service/token on its own origin, robot accounts; a request
    # with a token Harbor rejects is answered `Basic realm="harbor"` (goharbor/harbor#18856);
    # distribution's n/last with Link; blobs served by Harbor itself (filesystem storage).
    "harbor": Habits(
        "harbor", auth="bearer", token_on_registry_origin=True, token_path="/service/token",
        service="harbor-registry", credentials=("robot$families", SECRET),
        token_body=lambda t: {"token": t, "access_token": "", "expires_in": 1800, "issued_at": _nanosecond_now()},
        token_uses=3, rejected_token_challenge='Basic realm="harbor"', paging="n-last-link"),
    # Artifactory: docker cannot use a context path (localhost:8082/artifactory is
    # invalid), so it is reached by the repository path method, host/<repo-key>/<image>
    # (JFrog docs: "Getting Started with Artifactory as a Docker Registry", the
    # REPOPATHPREFIX reverse proxy method); its token service lives under its context
    # path on the same origin; List Docker Tags pages with n and last, the client
    # passing the last tag back (JFrog REST API "List Docker Tags"): no Link here;
    # Direct Cloud Storage Download redirects blobs to signed S3/GCS URLs.
    "artifactory": Habits(
        "artifactory", auth="bearer", token_on_registry_origin=True,
        token_path="/artifactory/api/docker/docker-remote/v2/token", service="artifactory.example",
        credentials=("deployer", SECRET), token_body=lambda t: {"token": t, "expires_in": 3600},
        paging="n-last-no-link", blob_redirect=302, repo_prefix="docker-remote/"),
    # ECR: Basic with user AWS and a 12-hour authorization token as password
    # (docs.aws.amazon.com/AmazonECR/latest/userguide/registry_auth.html); no
    # Docker-Content-Digest on manifest responses (distribution/distribution#3792);
    # chunked manifests without Content-Length over HTTP/1.1 (oras-project/oras-go#333);
    # n above 1000 refused (google/go-containerregistry#681); opaque pagination tokens
    # (fluxcd/source-controller#845); blobs 307 to presigned S3 URLs that refuse any
    # Authorization (renovatebot/renovate#3877).
    "ecr": Habits(
        "ecr", auth="basic", service="ecr.amazonaws.com", credentials=("AWS", SECRET), paging="opaque-last",
        blob_redirect=307, head_digest=False, chunked_manifests=True, refuse_n_above=1000),
    # registry.k8s.io: a redirector that sends every /v2/ request to a backend
    # (Artifact Registry, anonymous for these public images) by 307
    # (kubernetes/registry.k8s.io#326); Artifact Registry/GCR answer every tag in one
    # page (google/go-containerregistry#897); blobs go on to storage.
    "k8s": Habits("k8s", auth="none", redirector=True, paging="one-page", blob_redirect=302),
    # GitLab: the registry's token service is GitLab itself, /jwt/auth on the GitLab host,
    # another origin than the registry (mkuchin/docker-registry-web#95,
    # rpardini/docker-registry-proxy#27), service "container_registry", short-lived
    # tokens (containers/image#1265 raises them to 60 s); a registry on object storage
    # redirects blobs to it (rpardini/docker-registry-proxy#27); distribution's n/last + Link.
    "gitlab": Habits(
        "gitlab", auth="bearer", token_path="/jwt/auth", service="container_registry",
        credentials=("gitlab-ci-token", SECRET), token_body=lambda t: {"token": t},
        paging="n-last-link", blob_redirect=302),
    # ACR: realm https://<registry>/oauth2/token with service=<registry> (Azure/acr#207),
    # answering {"access_token": …} (Azure/acr docs/AAD-OAuth.md, quoted in Azure/acr#50);
    # blobs come from Azure storage (Azure/acr#217), which takes no registry token.
    "acr": Habits(
        "acr", auth="bearer", token_on_registry_origin=True, token_path="/oauth2/token",
        service="families.azurecr.io", credentials=("00000000-0000-0000-0000-000000000000", SECRET),
        token_body=lambda t: {"access_token": t}, paging="n-last-link", blob_redirect=307),
    # NGC (nvcr.io): realm https://nvcr.io/proxy_auth on the registry's origin, user
    # `$oauthtoken` with an API key as password (NVIDIA/DeepLearningExamples#451,
    # NVIDIA/enroot#161); its realm switch after expiry is in test_registry_quirks.py.
    "ngc": Habits(
        "ngc", auth="bearer", token_on_registry_origin=True, token_path="/proxy_auth", service="registry",
        credentials=("$oauthtoken", SECRET), token_body=lambda t: {"token": t}, paging="one-page"),
    # Nexus: with forceBasicAuth (the default of new Docker repositories in 3.89) it
    # challenges `BASIC realm="Sonatype Nexus Repository Manager"`, upper case
    # (sonatype/nexus-public#921), and takes user and password as Basic.
    "nexus": Habits(
        "nexus", auth="basic", service="nexus", credentials=("deployer", SECRET), paging="n-last-link",
        basic_challenge='BASIC realm="Sonatype Nexus Repository Manager"'),
    # registry.redhat.io: a token service on another origin (Red Hat SSO), credentials of
    # a registry service account required even for public images (openshift/openshift-docs#11506,
    # keycloak/keycloak-documentation#483); blobs from a CDN.
    "redhat": Habits(
        "redhat", auth="bearer", token_path="/auth/realms/rhcc/protocol/redhat-docker-v2/auth",
        service="docker-registry", credentials=("12345|reconciler", SECRET),
        token_body=lambda t: {"token": t, "expires_in": 300}, paging="n-last-link", blob_redirect=302),
    # Artifact Registry / GCR: token at /v2/token on the registry's origin, every tag in
    # one page (google/go-containerregistry#897), blobs 302 to storage.googleapis.com.
    "gar": Habits(
        "gar", auth="bearer", token_on_registry_origin=True, token_path="/v2/token",
        service="europe-docker.pkg.dev", token_body=lambda t: {"token": t, "expires_in": 3600},
        paging="one-page", blob_redirect=302),
}


# -- the proxy -----------------------------------------------------------------------------


class _Origin:
    """One HTTP server on 127.0.0.1 (one origin), handing requests to `handle`."""

    def __init__(self, name: str, handle: Callable[[str, BaseHTTPRequestHandler, str], None]) -> None:
        self.name = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def send_response(self, code: int, message: Optional[str] = None) -> None:
                self.status = code  # for the request record
                super().send_response(code, message)

            def do_GET(self) -> None:  # noqa: N802
                handle(name, self, "GET")

            def do_HEAD(self) -> None:  # noqa: N802
                handle(name, self, "HEAD")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(h: BaseHTTPRequestHandler, method: str, status: int, headers: Dict[str, str], body: bytes = b"",
          chunked: bool = False) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    if chunked and method != "HEAD":
        h.send_header("Transfer-Encoding", "chunked")
    elif "Content-Length" not in headers:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if method == "HEAD":
        return
    if chunked:
        for i in range(0, len(body), 256):
            piece = body[i:i + 256]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
    else:
        h.wfile.write(body)


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


class FamilyRegistry:
    """A registry family in front of the real registry: the registry origin, and
    as the family has them a token origin, a storage origin, a backend origin."""

    def __init__(self, habits: Habits, upstream: str) -> None:
        self.habits = habits
        self.upstream = upstream.rstrip("/")
        self.requests: List[dict] = []
        self.tokens: Dict[str, int] = {}  # token -> uses left
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=30)
        self.registry = _Origin("registry", self.handle)
        self.storage = _Origin("storage", self.handle)
        self.token = self.registry if habits.token_on_registry_origin else _Origin("token", self.handle)
        self.backend = _Origin("backend", self.handle) if habits.redirector else None
        self.host = self.registry.host

    def close(self) -> None:
        for origin in {id(o): o for o in (self.registry, self.storage, self.token, self.backend) if o}.values():
            origin.close()
        self._http.close()

    @property
    def realm(self) -> str:
        return f"{self.token.url}{self.habits.token_path}"

    def on(self, origin: str, **match: str) -> List[dict]:
        """The recorded requests to one origin (optionally with a path substring)."""
        return [r for r in self.requests if r["origin"] == origin and match.get("path", "") in r["path"]]

    # -- dispatch --

    def handle(self, origin: str, h: BaseHTTPRequestHandler, method: str) -> None:
        record = {"origin": origin, "method": method, "path": h.path, "authorization": h.headers.get("Authorization"),
                  "accept_encoding": h.headers.get("Accept-Encoding")}
        with self._lock:
            self.requests.append(record)
        try:
            self._route(origin, h, method)
        finally:
            record["status"] = getattr(h, "status", None)

    def _route(self, origin: str, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path
        if origin in ("registry", "token") and urlsplit(path).path == self.habits.token_path:
            return self._token(h, method)
        if origin == "storage":
            return self._storage(h, method)
        if origin == "registry" and self.habits.redirector:
            # registry.k8s.io answers with a redirect to its backend, for everything under /v2/.
            assert self.backend is not None
            target = self.backend.url + "/v2/k8s-artifacts-prod/images/" + path[len("/v2/"):]
            return _send(h, method, 307, {"Location": target})
        if origin in ("registry", "backend"):
            return self._registry(h, method, origin)
        _send(h, method, 404, {"Content-Type": "text/plain"}, b"no such origin route")

    # -- token service --

    def _token(self, h: BaseHTTPRequestHandler, method: str) -> None:
        creds = self.habits.credentials
        if creds:
            expected = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            if h.headers.get("Authorization") != expected:
                return _send(h, method, 401, {"Content-Type": "application/json"},
                             json.dumps({"details": "incorrect username or password"}).encode())
        token = secrets.token_urlsafe(16)
        with self._lock:
            self.tokens[token] = self.habits.token_uses or 1_000_000
        _send(h, method, 200, {"Content-Type": "application/json"}, json.dumps(self.habits.token_body(token)).encode())

    # -- registry API --

    def _authorized(self, h: BaseHTTPRequestHandler, method: str, repo: str) -> bool:
        """Check the request's credentials as the family does; answer 401 if they fail."""
        habits = self.habits
        sent = h.headers.get("Authorization") or ""
        creds = habits.credentials
        basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode() if creds else None
        if habits.auth == "none":
            return True
        if habits.auth == "basic":
            if sent == basic:
                return True
            challenge = habits.basic_challenge or f'Basic realm="{self.registry.url}/",service="{habits.service}"'
        else:
            if basic and sent == basic:
                return True  # Harbor and Artifactory take Basic on /v2/ too
            if sent.startswith("Bearer "):
                token = sent[len("Bearer "):]
                with self._lock:
                    left = self.tokens.get(token, 0)
                    if left > 0:
                        self.tokens[token] = left - 1
                        return True
                if token in self.tokens and habits.rejected_token_challenge:
                    _send(h, method, 401, {"WWW-Authenticate": habits.rejected_token_challenge,
                                           "Content-Type": "application/json"},
                          _errors("UNAUTHORIZED", "unauthorized to access repository"))
                    return False
            scope = f"repository:{habits.repo_prefix}{repo}:pull"
            challenge = f'Bearer realm="{self.realm}",service="{habits.service}",scope="{scope}"'
        _send(h, method, 401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
              _errors("UNAUTHORIZED", "authentication required"))
        return False

    def _registry(self, h: BaseHTTPRequestHandler, method: str, origin: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        prefix = "/v2/k8s-artifacts-prod/images/" if origin == "backend" else "/v2/" + self.habits.repo_prefix
        if not path.startswith(prefix):
            return _send(h, method, 404, {"Content-Type": "application/json"}, _errors("NAME_UNKNOWN", "no route"))
        rest = path[len(prefix):]
        for kind in ("/tags/list", "/manifests/", "/blobs/"):
            if kind in rest:
                repo, _, tail = rest.partition(kind)
                break
        else:
            return _send(h, method, 404, {"Content-Type": "application/json"}, _errors("UNSUPPORTED", "no route"))
        if not self._authorized(h, method, repo):
            return
        if kind == "/tags/list":
            return self._tags(h, method, repo, parse_qs(parts.query), prefix)
        if kind == "/manifests/":
            return self._manifest(h, method, repo, tail)
        return self._blob(h, method, repo, tail)

    def _tags(self, h: BaseHTTPRequestHandler, method: str, repo: str, query: Dict[str, List[str]],
              prefix: str) -> None:
        habits = self.habits
        n_text = query.get("n", [""])[0]
        if habits.refuse_n_above and n_text.isdigit() and int(n_text) > habits.refuse_n_above:
            return _send(h, method, 400, {"Content-Type": "application/json"},
                         _errors("UNSUPPORTED", "Invalid parameter at 'maxResults' failed to satisfy constraint: "
                                                f"'Member must have value less than or equal to {habits.refuse_n_above}'"))
        upstream = self._http.get(f"{self.upstream}/v2/{repo}/tags/list")
        if upstream.status_code != 200:
            return _send(h, method, upstream.status_code, {"Content-Type": "application/json"}, upstream.content)
        tags = sorted(upstream.json().get("tags") or [])
        here = f"{prefix}{repo}/tags/list"
        size = min(int(n_text), PAGE) if n_text.isdigit() else PAGE
        if habits.paging == "n-last-no-link":
            # Without a Link, a registry must return n tags unless fewer are left
            # (the distribution spec): the client's n (100) holds all 12 here.
            size = int(n_text) if n_text.isdigit() else len(tags)
        link = None
        if habits.paging == "one-page":
            page = tags
        elif habits.paging in ("n-last-link", "n-last-no-link"):
            last = query.get("last", [""])[0]
            start = next((i for i, t in enumerate(tags) if t > last), len(tags)) if last else 0
            page = tags[start:start + size]
            if habits.paging == "n-last-link" and start + size < len(tags):
                link = f"{here}?{urlencode({'last': page[-1], 'n': size})}"
        else:  # an opaque position: the client must pass back what it was given
            key = "next_page" if habits.paging == "next-page" else "last"
            given = query.get(key, [""])[0]
            start = 0
            if given:
                try:
                    start = json.loads(base64.urlsafe_b64decode(given.encode()))["at"]
                except (ValueError, KeyError, TypeError):
                    return _send(h, method, 400, {"Content-Type": "application/json"},
                                 _errors("PAGINATION_NUMBER_INVALID", "invalid pagination token"))
            page = tags[start:start + size]
            if start + size < len(tags):
                token = base64.urlsafe_b64encode(json.dumps({"at": start + size}).encode()).decode()
                link = f"{here}?{key}={quote(token, safe='')}&n={size}"
        headers = {"Content-Type": "application/json"}
        if link:
            headers["Link"] = f'<{link}>; rel="next"'
        _send(h, method, 200, headers, json.dumps({"name": repo, "tags": page}).encode())

    def _manifest(self, h: BaseHTTPRequestHandler, method: str, repo: str, reference: str) -> None:
        habits = self.habits
        upstream = self._http.request(method, f"{self.upstream}/v2/{repo}/manifests/{reference}",
                                      headers={"Accept": h.headers.get("Accept", "*/*")})
        headers = {"Content-Type": upstream.headers.get("content-type", "application/json") + habits.content_type_suffix}
        if habits.head_digest and upstream.headers.get("docker-content-digest"):
            headers["Docker-Content-Digest"] = upstream.headers["docker-content-digest"]
        if habits.rate_limit_headers:
            headers.update({"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "99;w=21600"})
        if method == "HEAD":
            headers["Content-Length"] = upstream.headers.get("content-length", "0")
        _send(h, method, upstream.status_code, headers, upstream.content,
              chunked=habits.chunked_manifests and upstream.status_code == 200)

    def _blob(self, h: BaseHTTPRequestHandler, method: str, repo: str, digest: str) -> None:
        if self.habits.blob_redirect:
            signature = hashlib.sha256(f"{repo}{digest}".encode()).hexdigest()[:16]
            target = f"{self.storage.url}/blobs/{digest}?repo={quote(repo, safe='')}&X-Amz-Signature={signature}"
            return _send(h, method, self.habits.blob_redirect, {"Location": target})
        self._pass_blob(h, method, repo, digest)

    def _pass_blob(self, h: BaseHTTPRequestHandler, method: str, repo: str, digest: str) -> None:
        headers = {k: v for k, v in (("Range", h.headers.get("Range")),) if v}
        upstream = self._http.request(method, f"{self.upstream}/v2/{repo}/blobs/{digest}", headers=headers)
        out = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "content-range",
                                                                          "docker-content-digest", "accept-ranges")}
        if method == "HEAD":
            out["Content-Length"] = upstream.headers.get("content-length", "0")
        _send(h, method, upstream.status_code, out, upstream.content)

    # -- storage --

    def _storage(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        if h.headers.get("Authorization"):
            # S3 presigned URLs refuse a second auth mechanism (open-policy-agent/opa#6728).
            return _send(h, method, 400, {"Content-Type": "application/xml"},
                         b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed"
                         b"</Message></Error>")
        digest = parts.path.rsplit("/", 1)[-1]
        repo = unquote(parse_qs(parts.query).get("repo", [""])[0])
        self._pass_blob(h, method, repo, digest)


# -- the end-to-end runs ---------------------------------------------------------------------


def write_watchlist(directory: Path, family: FamilyRegistry) -> Path:
    habits = family.habits
    registry = f'[registries."{family.host}"]\ninsecure = true\n'
    if habits.credentials:
        registry += f'username = "{habits.credentials[0]}"\npassword_env = "FAMILY_PASSWORD"\n'
    text = (f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n{registry}'
            f'[[image]]\nsource = "{family.host}/{habits.repo_prefix}{REPOSITORY}"\n'
            f'tag_pattern = "{PATTERN.replace(chr(92), chr(92) * 2)}"\ndest = "families"\n'
            f'platforms = ["linux/amd64", "linux/arm64"]\n')
    path = directory / "watchlist.toml"
    path.write_text(text)
    return path


def run(path: Path):
    reconciler = Reconciler(load_watchlist(path), retry=FAST)
    try:
        report = reconciler.run_once()
        blob_bytes = sum(c.stats.blob_bytes for c in reconciler.registry_clients().values())
        return report, blob_bytes
    finally:
        reconciler.close()


@pytest.fixture
def family(request, fixture_registry, family_image, monkeypatch) -> Iterator[FamilyRegistry]:
    monkeypatch.setenv("FAMILY_PASSWORD", SECRET)
    # Docker's config.json must not lend credentials to these hosts.
    monkeypatch.setenv("DOCKER_CONFIG", str(Path(request.config.rootpath) / "nonexistent-docker-config"))
    proxy = FamilyRegistry(FAMILIES[request.param], fixture_registry.url)
    yield proxy
    proxy.close()


def _tree(link: Path) -> Dict[str, bytes]:
    root = Path(os.path.realpath(link))
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith(".singularity.d") or rel in (".cvmfscatalog", "environment", "singularity") or \
                rel.startswith(".") and "/" not in rel:
            continue
        out[rel] = path.read_bytes()[:16] if path.is_file() and not path.is_symlink() else b"<dir>"
    return out


@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
def test_family_publishes_pages_and_keeps_credentials_off_storage(family, tmp_path):
    habits = family.habits
    path = write_watchlist(tmp_path, family)

    report, blob_bytes = run(path)
    assert not report.failed, report.summary()
    published = sorted((o.tag, str(o.platform)) for o in report.outcomes if o.status == "published")
    assert published == sorted((t, p) for t in SELECTED for p in ("linux/amd64", "linux/arm64")), report.summary()
    assert blob_bytes > 0

    # The whiteouts and the opaque directory were applied, per platform.
    amd64 = _tree(tmp_path / "publish" / "families:1.1.0")
    assert amd64["arch"] == b"amd64\n" and amd64["opq/upper"] == b"upper\n"
    assert not {"gone/file", "gone/tree", "opq/lower", "etc/os-release"} & set(amd64)
    arm64 = _tree(tmp_path / "publish" / "families:v1.1.0@linux-arm64")
    assert arm64["arch"] == b"arm64\n" and "tmp/scratch" not in arm64
    assert _tree(tmp_path / "publish" / "families:v1.1.0") == amd64

    # Every page was read: the selection needs the last one.
    pages = [r for r in family.requests if "/tags/list" in r["path"] and r["status"] == 200]
    expected_pages = 1 if habits.paging in ("one-page", "n-last-no-link") else -(-len(TAGS) // PAGE)
    assert len(pages) == expected_pages, [r["path"] for r in pages]

    first_run = len(family.requests)
    report, blob_bytes = run(path)
    assert not report.failed, report.summary()
    assert {o.status for o in report.outcomes} == {"unchanged"}, report.summary()
    second = family.requests[first_run:]
    assert blob_bytes == 0
    assert not [r for r in second if "/blobs/" in r["path"]], "the second run asked for a blob"

    # Credentials and tokens never reach storage; storage was used where the family redirects.
    storage = family.on("storage")
    assert not [r for r in storage if r["authorization"]]
    assert bool(storage) == bool(habits.blob_redirect)
    assert {r["accept_encoding"] for r in storage} <= {"identity"}
    if habits.redirector:
        backend = family.on("backend")
        assert backend and not [r for r in backend if r["authorization"]]
        assert {r["status"] for r in family.on("registry")} == {307}  # the redirector serves nothing itself


@pytest.mark.parametrize("family", ["harbor"], indirect=True)
def test_harbor_rejected_token_is_answered_with_the_robot_account(family, tmp_path):
    report, _ = run(write_watchlist(tmp_path, family))
    assert not report.failed, report.summary()
    api = [r for r in family.on("registry") if r["path"].startswith("/v2/")]
    kinds = [(r["authorization"] or "none").split(" ")[0] for r in api]
    # Bearer until Harbor rejects the token with `Basic realm="harbor"`, then Basic;
    # requests already in flight with the spent token are refused and asked again.
    first_basic = kinds.index("Basic")
    assert [r for r in api[:first_basic] if r["authorization"] and r["status"] == 401]
    after = list(zip(kinds, api))[first_basic:]
    assert all(r["status"] == 401 for kind, r in after if kind == "Bearer")
    assert kinds[-1] == "Basic" and all(r["status"] == 200 for kind, r in after if kind == "Basic")
    assert SECRET not in json.dumps(report.summary())


@pytest.mark.parametrize("family", ["dockerhub"], indirect=True)
def test_dockerhub_token_service_is_asked_once_per_scope(family, tmp_path):
    report, _ = run(write_watchlist(tmp_path, family))
    assert not report.failed, report.summary()
    token_requests = family.on("token")
    assert len(token_requests) == 1 and token_requests[0]["authorization"] is None  # anonymous pull
    assert not [r for r in family.on("registry") if r["authorization"] and not r["authorization"].startswith("Bearer ")]
