"""Each way a registry (or the network in front of it) can refuse gives its own
error, naming the host and saying what to do; tag pagination in every style
registries use; blob bytes verified as sent, whatever Content-Encoding says.

Refusals by status go through pytest-httpx or the real docker-registry; DNS,
refused connections and TLS go through real sockets (only the resolver's
answer for one name is patched), because what httpx raises for them is the
point. Each test names where the behaviour is documented.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from reconciler.errors import (
    AccessDeniedError,
    AuthenticationError,
    HostNotFoundError,
    IntegrityError,
    ManifestNotFoundError,
    RateLimitedError,
    RegistryConnectionRefusedError,
    RegistryError,
    RegistryTLSError,
    RepositoryNotFoundError,
)
from reconciler.registry.client import MAX_TAG_PAGE, RegistryClient, RetryPolicy
from reconciler.registry.credentials import Credentials
from reconciler.registry.manifest import Descriptor
from tests.registry_server import free_port

REG = "registry.example.org"
BASE = f"https://{REG}/v2"
TAGS_URL = f"{BASE}/library/app/tags/list"
MANIFEST_URL = f"{BASE}/library/app/manifests/latest"
NOW = 1_700_000_000.0


class Clock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_client(clock: Clock, registry: str = REG, **kw) -> RegistryClient:
    kw.setdefault("retry", RetryPolicy(attempts=3, base_delay=0.01, timeout=5))
    return RegistryClient(registry, sleep=clock.sleep, clock=clock, **kw)


@pytest.fixture
def client(clock) -> Iterator[RegistryClient]:
    c = make_client(clock)
    yield c
    c.close()


def errors_body(code: str, message: str) -> dict:
    return {"errors": [{"code": code, "message": message, "detail": None}]}


# -- 1. tag pagination styles ------------------------------------------------------------


def _recorded_pages(httpx_mock) -> List[dict]:
    return [parse_qs(urlsplit(str(r.url)).query, keep_blank_values=True) for r in httpx_mock.get_requests()]


def test_distribution_n_and_last_with_link(httpx_mock, client):
    # The distribution spec: `n` and `last`, the next page in an RFC 5988 Link
    # (opencontainers/distribution-spec#470: clients should prefer the Link).
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", json={"name": "library/app", "tags": ["a", "b"]},
                            headers={"Link": '</v2/library/app/tags/list?last=b&n=100>; rel="next"'})
    httpx_mock.add_response(url=f"{TAGS_URL}?last=b&n=100", json={"name": "library/app", "tags": ["c"]})
    assert client.list_tags("library/app") == ["a", "b", "c"]


def test_quay_opaque_next_page_token_is_followed_verbatim(httpx_mock, client):
    # Quay pages with an encrypted `next_page` token instead of `last`, 50 tags a
    # page whatever `n` asks (deitch/docker_registry2#56, ivanilves/lstags#185,
    # opencontainers/distribution-spec#116); the token must not be decoded or rebuilt.
    token = "gAAAAABcywP0Zuqt0GQh2CEVObDgUzCsvtYqiDOIfgC-JhU6i4O6u-CMA-_aLBthbWbL1KiFicqs%3D"
    first = [f"t{i:02d}" for i in range(50)]
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", json={"name": "library/app", "tags": first},
                            headers={"Link": f'</v2/library/app/tags/list?next_page={token}&n=50>; rel="next"'})
    httpx_mock.add_response(url=f"{TAGS_URL}?next_page={token}&n=50", json={"name": "library/app", "tags": ["z"]})
    assert client.list_tags("library/app") == first + ["z"]
    assert f"next_page={token}" in str(httpx_mock.get_requests()[1].url)


def test_ecr_opaque_last_token_in_the_link(httpx_mock, client):
    # ECR's API pages with an opaque nextToken (aws/containers-roadmap#1262, as
    # discussed in fluxcd/source-controller#845); in the Link it is a value we
    # only pass back, never a tag name.
    opaque = "ukD72mdD%2FmC8b5xV3susmJzzaTgp3hKwR9nRUW1yZZ6dLc1Y"
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", json={"name": "library/app", "tags": ["v1"]},
                            headers={"Link": f'<{BASE}/library/app/tags/list?last={opaque}&n=100>; rel="next"'})
    httpx_mock.add_response(url=f"{TAGS_URL}?last={opaque}&n=100", json={"name": "library/app", "tags": ["v2"]})
    assert client.list_tags("library/app") == ["v1", "v2"]


def test_everything_in_one_page_whatever_n_says(httpx_mock, client):
    # Docker Hub answers tags/list?n=100 with every tag and no Link
    # (docker/hub-feedback#1960); GCR does not paginate at all
    # (google/go-containerregistry#897); distribution 2.x ignored n (distribution#1936).
    tags = [f"t{i:03d}" for i in range(250)]
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", json={"name": "library/app", "tags": tags})
    assert client.list_tags("library/app") == tags
    assert len(httpx_mock.get_requests()) == 1


def test_n_ignored_with_exactly_a_page_and_last_ignored_too(httpx_mock, client):
    # A registry that ignores both n and last (regclient/regclient#272: Quay answered
    # `last` with the first page again) must end the listing, not loop or duplicate.
    tags = [f"t{i:03d}" for i in range(100)]
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", json={"name": "library/app", "tags": tags})
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100&last=t099", json={"name": "library/app", "tags": tags})
    assert client.list_tags("library/app") == tags


@pytest.mark.parametrize("code,message", [
    # distribution >= 3.1 caps n at maxtags (1000): "invalid number of results
    # requested" (distribution/distribution#4844, #4856).
    ("PAGINATION_NUMBER_INVALID", "invalid number of results requested"),
    # ECR: "Member must have value less than or equal to 1000" (google/go-containerregistry#681).
    ("UNSUPPORTED", "Invalid parameter at 'maxResults' failed to satisfy constraint: "
                    "'Member must have value less than or equal to 1000'"),
])
def test_n_above_1000_is_never_asked(httpx_mock, client, code, message):
    # ECR and distribution >= 3.1 refuse n > 1000; the spec's implementers note says
    # most registries serve at least 1000 (opencontainers/distribution-spec#470).
    def answer(request: httpx.Request) -> httpx.Response:
        n = int(parse_qs(request.url.query.decode()).get("n", ["0"])[0])
        if n > MAX_TAG_PAGE:
            return httpx.Response(400, json=errors_body(code, message))
        return httpx.Response(200, json={"name": "library/app", "tags": ["a"]})

    httpx_mock.add_callback(answer, url=httpx.URL(TAGS_URL, params={"n": MAX_TAG_PAGE}))
    assert client.list_tags("library/app", page_size=10_000) == ["a"]


def test_a_lower_limit_announced_in_oci_tag_limit_is_used(httpx_mock, client):
    # "limits have been seen as low as 50 tags per request"; a registry unable to
    # return n tags answers 413 TAG_LIMIT_EXCEEDED with OCI-Tag-Limit
    # (opencontainers/distribution-spec#470, the reviewed text).
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", status_code=413, headers={"OCI-Tag-Limit": "50"},
                            json=errors_body("TAG_LIMIT_EXCEEDED", "tag limit exceeded"))
    first = [f"t{i:02d}" for i in range(50)]
    httpx_mock.add_response(url=f"{TAGS_URL}?n=50", json={"name": "library/app", "tags": first},
                            headers={"Link": '</v2/library/app/tags/list?n=50&last=t49>; rel="next"'})
    httpx_mock.add_response(url=f"{TAGS_URL}?n=50&last=t49", json={"name": "library/app", "tags": ["u"]})
    assert client.list_tags("library/app") == first + ["u"]


def test_a_refused_n_without_a_limit_is_asked_again_without_n(httpx_mock, client):
    # The spec's note: a request without n gets every tag, or the limit
    # (opencontainers/distribution-spec#470).
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", status_code=400,
                            json=errors_body("PAGINATION_NUMBER_INVALID", "invalid number of results requested"))
    httpx_mock.add_response(url=TAGS_URL, json={"name": "library/app", "tags": ["a", "b"]})
    assert client.list_tags("library/app") == ["a", "b"]
    assert [r.url.query for r in httpx_mock.get_requests()] == [b"n=100", b""]


def test_a_400_for_another_reason_is_not_taken_for_a_page_size_refusal(httpx_mock, client):
    httpx_mock.add_response(url=f"{TAGS_URL}?n=100", status_code=400,
                            json=errors_body("NAME_INVALID", "invalid repository name"))
    with pytest.raises(RegistryError, match="NAME_INVALID"):
        client.list_tags("library/app")
    assert len(httpx_mock.get_requests()) == 1


# -- 2. each refusal its own error ---------------------------------------------------------


def test_missing_repository_is_name_unknown_on_the_real_registry(fixture_registry):
    # distribution's error codes: NAME_UNKNOWN "repository name not known to
    # registry", MANIFEST_UNKNOWN for a tag the repository lacks (the OCI
    # distribution spec's error code table).
    # distribution 2.8 answers a manifest of an unknown repository with
    # MANIFEST_UNKNOWN, its tag list with NAME_UNKNOWN.
    with RegistryClient(fixture_registry.host, insecure=True) as c:
        with pytest.raises(RepositoryNotFoundError, match="NAME_UNKNOWN.*no repository 'fixtures/nothing-here'"):
            c.list_tags("fixtures/nothing-here")
        with pytest.raises(ManifestNotFoundError, match="MANIFEST_UNKNOWN.*no such tag"):
            c.get_manifest("fixtures/basic", "no-such-tag")


def test_unauthorized_on_the_real_token_registry_says_what_to_check(token_registry):
    # Anonymous pulls of a repository the token service grants nothing for: the
    # registry answers 401 again with a fresh token. Docker Hub answers a missing
    # repository the same way, so the message cannot tell them apart (docker pull's
    # "repository does not exist or may require 'docker login'").
    with RegistryClient(token_registry.host, insecure=True) as c:
        with pytest.raises(AuthenticationError) as info:
            c.get_manifest("fixtures/edges", "latest")
    text = str(info.value)
    assert "anonymous access" in text and "does not exist, or the credentials may not pull it" in text
    assert "UNAUTHORIZED" in text


def test_403_denied_is_access_denied_naming_the_repository(httpx_mock, time_free_client):
    # The spec's DENIED ("requested access to the resource is denied", HTTP 403);
    # GHCR and Harbor answer a pull of a package the account may not read so.
    httpx_mock.add_response(url=MANIFEST_URL, status_code=403,
                            json=errors_body("DENIED", "requested access to the resource is denied"))
    with pytest.raises(AccessDeniedError, match="DENIED.*may not pull library/app"):
        time_free_client.get_manifest("library/app", "latest")


@pytest.fixture
def time_free_client(clock):
    c = make_client(clock, credentials=Credentials("robot", "s3cr3t-password"))
    yield c
    c.close()


def test_429_says_when_to_retry(httpx_mock, client, clock):
    # Docker Hub's 429 carries TOOMANYREQUESTS and "You have reached your pull rate
    # limit" (docker/hub-feedback#2464); RFC 6585 §4: Retry-After says how long.
    body = errors_body("TOOMANYREQUESTS", "You have reached your pull rate limit.")
    httpx_mock.add_response(url=MANIFEST_URL, status_code=429, headers={"Retry-After": "3600"}, json=body)
    with pytest.raises(RateLimitedError) as info:
        client.get_manifest("library/app", "latest")
    assert "asks to wait 3600s" in str(info.value)
    assert "retry after 2023-11-14T23:13:20Z (in 3600 s)" in str(info.value)


def test_429_until_the_last_attempt_says_when_to_retry(httpx_mock, client, clock):
    body = errors_body("TOOMANYREQUESTS", "Too Many Requests")
    httpx_mock.add_response(url=MANIFEST_URL, status_code=429, headers={"Retry-After": "5"}, json=body,
                            is_reusable=True)
    with pytest.raises(RateLimitedError) as info:
        client.get_manifest("library/app", "latest")
    text = str(info.value)
    assert "still rate limited (HTTP 429 TOOMANYREQUESTS: Too Many Requests) after 3 attempts" in text
    assert "retry after" in text and "(in 5 s)" in text


def test_a_spent_quota_names_its_window(httpx_mock, client, clock):
    # Docker Hub: "ratelimit-limit: 100;w=21600" — 100 pulls per 6 hours
    # (docs.docker.com/docker-hub/usage/pulls/, docker/hub-feedback#2464).
    httpx_mock.add_response(url=MANIFEST_URL, status_code=429,
                            headers={"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "0;w=21600"},
                            json=errors_body("TOOMANYREQUESTS", "You have reached your pull rate limit."))
    with pytest.raises(RateLimitedError) as info:
        client.get_manifest("library/app", "latest")
    assert "RateLimit-Remaining 0 of 100 per 21600 s window" in str(info.value)
    assert "pull rate limit" in str(info.value) and clock.sleeps == []


def test_plain_http_to_an_https_port_says_remove_insecure(httpx_mock, clock):
    # Go's net/http answers plain http on its TLS port with 400 "Client sent an HTTP
    # request to an HTTPS server." (what docker-registry does with TLS configured).
    c = make_client(clock, "127.0.0.1:5443", insecure=True)
    httpx_mock.add_response(url="http://127.0.0.1:5443/v2/library/app/manifests/latest", status_code=400,
                            text="Client sent an HTTP request to an HTTPS server.\n")
    with pytest.raises(RegistryError, match="serves https on that port.*remove insecure = true"):
        c.get_manifest("library/app", "latest")


# -- DNS, refused connections, TLS: real sockets --------------------------------------------


@pytest.fixture
def unknown_hosts(monkeypatch) -> List[str]:
    """Names the resolver answers "Name or service not known" for (EAI_NONAME),
    as it does for a typo or a host that left DNS; others resolve as usual."""
    names: List[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):  # type: ignore[no-untyped-def]
        if host in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def test_dns_failure_names_the_host_that_cannot_be_resolved(unknown_hosts, clock):
    unknown_hosts.append("registry-1.docker.io")
    with make_client(clock, "docker.io") as c:
        with pytest.raises(HostNotFoundError) as info:
            c.head_manifest("library/alpine", "latest")
    assert "cannot resolve host registry-1.docker.io (DNS): Name or service not known" in str(info.value)
    assert len(clock.sleeps) == 1  # tried again once (a resolver can fail for a moment), then reported


class _Server:
    """A tiny HTTP server on 127.0.0.1; `tls_context` wraps it in TLS."""

    def __init__(self, handler: type, tls_context: Optional[ssl.SSLContext] = None) -> None:
        self.accepted = 0
        outer = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # type: ignore[no-untyped-def]
                outer.accepted += 1  # before the TLS handshake, which may fail
                return super().get_request()

            def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
                pass  # failed handshakes are what these tests provoke

        self.httpd = Server(("127.0.0.1", 0), handler)
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Challenge(BaseHTTPRequestHandler):
    realm = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'Bearer realm="{self.realm}",service="registry.docker.io"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD


def test_dns_failure_of_the_token_service_names_the_token_host(unknown_hosts, clock):
    # Docker Hub's token service is another host than its registry
    # (auth.docker.io beside registry-1.docker.io: osism/ansible-collection-services#1049).
    unknown_hosts.append("auth.docker.example")

    class Handler(_Challenge):
        realm = "http://auth.docker.example/token"

    server = _Server(Handler)
    try:
        with make_client(clock, f"127.0.0.1:{server.port}", insecure=True) as c:
            with pytest.raises(HostNotFoundError, match=r"cannot resolve host auth\.docker\.example \(DNS\)"):
                c.head_manifest("library/alpine", "latest")
    finally:
        server.close()


def test_connection_refused_names_host_and_port(clock):
    port = free_port()  # nothing listens there
    with make_client(clock, f"127.0.0.1:{port}", insecure=True) as c:
        with pytest.raises(RegistryConnectionRefusedError, match=f"127.0.0.1:{port} refused the connection"):
            c.list_tags("library/app")


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry.internal")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def _tls_error(clock, server: "_Server") -> RegistryTLSError:
    """The error of a manifest HEAD at `server` (closed afterwards)."""
    try:
        with make_client(clock, f"127.0.0.1:{server.port}") as c:
            with pytest.raises(RegistryTLSError) as info:
                c.head_manifest("library/app", "latest")
    finally:
        server.close()
    return info.value


def test_unverifiable_certificate_names_the_host_and_is_not_retried(tmp_path, clock, monkeypatch):
    # A registry with a certificate from a private CA (or self-signed): httpx 0.28
    # verifies against certifi unless SSL_CERT_FILE names another bundle.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server = _Server(_Challenge, _self_signed(tmp_path))
    text = str(_tls_error(clock, server))
    assert "TLS certificate of 127.0.0.1 cannot be verified" in text and "SSL_CERT_FILE" in text
    assert "insecure = true is only for registries that serve plain http" in text
    assert server.accepted == 1 and clock.sleeps == []  # configuration, not weather: no retry


def test_plain_http_where_https_was_expected_suggests_insecure(clock):
    server = _Server(_Challenge)  # plain http
    text = str(_tls_error(clock, server))
    assert f"127.0.0.1:{server.port} answered in plain http, not TLS" in text
    assert f'set insecure = true under [registries."127.0.0.1:{server.port}"]' in text
    assert clock.sleeps == []


# -- 4. blob bytes as sent, whatever Content-Encoding says ------------------------------------

LAYER_BYTES = gzip.compress(b"a layer tar " * 2000, mtime=0)  # what a registry stores: a .tar.gz
LAYER = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip",
                   "sha256:" + hashlib.sha256(LAYER_BYTES).hexdigest(), len(LAYER_BYTES))
BLOB_URL = f"{BASE}/library/app/blobs/{LAYER.digest}"


def test_httpx_decodes_gzip_but_not_x_gzip():
    # Why blobs are read with iter_raw: httpx 0.28 decodes `gzip` (and deflate,
    # zstd) but leaves `x-gzip` alone, though RFC 9110 §8.4.1.3 makes them the same coding.
    assert httpx.Response(200, headers={"Content-Encoding": "x-gzip"}, content=LAYER_BYTES).read() == LAYER_BYTES
    assert httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=LAYER_BYTES).read() != LAYER_BYTES


@pytest.mark.parametrize("label", ["x-gzip", "gzip", "X-GZIP, identity"])
def test_a_gzip_layer_labelled_with_a_content_encoding_is_verified_as_sent(httpx_mock, client, label):
    # Apache's mime magic labels stored .tar.gz blobs `Content-Encoding: x-gzip`
    # (moby/moby#17595; docker stopped decoding them, moby/moby#25122); S3 objects
    # uploaded with `Content-Encoding: gzip` metadata are served so too (rclone/rclone#9337).
    # The digest is over the bytes as the registry stores and sends them.
    httpx_mock.add_response(url=BLOB_URL, content=LAYER_BYTES, headers={"Content-Encoding": label})
    sink = io.BytesIO()
    client.fetch_blob("library/app", LAYER, sink)
    assert sink.getvalue() == LAYER_BYTES


def test_a_blob_compressed_on_the_fly_fails_with_a_clear_message(httpx_mock, client):
    # A front end compressing although identity was asked (quay/quay#1310 saw
    # registry.access.redhat.com gzip config blobs for `Accept-Encoding: gzip`):
    # the bytes sent are not the blob's.
    config = json.dumps({"architecture": "amd64", "os": "linux", "padding": "x" * 4000}).encode()
    descriptor = Descriptor("application/vnd.oci.image.config.v1+json",
                            "sha256:" + hashlib.sha256(config).hexdigest(), len(config))
    httpx_mock.add_response(url=f"{BASE}/library/app/blobs/{descriptor.digest}", content=gzip.compress(config),
                            headers={"Content-Encoding": "gzip"})
    with pytest.raises(IntegrityError) as info:
        client.fetch_blob("library/app", descriptor, io.BytesIO())
    text = str(info.value)
    assert "Content-Encoding: gzip although identity was asked" in text and "ended at" in text
    assert len(httpx_mock.get_requests()) == 1  # no Range resume spliced onto a compressed body


def test_an_incompressible_blob_compressed_anyway_is_refused_as_too_long(httpx_mock, client):
    data = os.urandom(5000)
    descriptor = Descriptor("application/vnd.oci.image.layer.v1.tar", "sha256:" + hashlib.sha256(data).hexdigest(),
                            len(data))
    httpx_mock.add_response(url=f"{BASE}/library/app/blobs/{descriptor.digest}", content=gzip.compress(data),
                            headers={"Content-Encoding": "x-gzip"})
    with pytest.raises(IntegrityError, match="longer than its declared 5000 bytes.*x-gzip although identity"):
        client.fetch_blob("library/app", descriptor, io.BytesIO())


# -- the same through the real registry, the whole way to a published tree -------------------


def _publish_basic_through(proxy, tmp_path: Path):
    from reconciler.reconcile import Reconciler
    from reconciler.watchlist import load_watchlist

    path = tmp_path / "watchlist.toml"
    path.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[registries."{proxy.host}"]\ninsecure = true\n'
                    f'[[image]]\nsource = "{proxy.host}/fixtures/basic"\ntags = ["v1"]\ndest = "basic"\n')
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01, timeout=10))
    try:
        return reconciler.run_once()
    finally:
        reconciler.close()


@pytest.fixture
def proxy(fixture_registry):
    from tests.faultproxy import FaultProxy

    p = FaultProxy(fixture_registry.url)
    yield p
    p.close()


def test_blobs_labelled_x_gzip_by_the_server_publish(proxy, tmp_path):
    # Every blob labelled as Apache's mime magic does (moby/moby#17595).
    proxy.add(path="/blobs/", encoding="x-gzip", times=50)
    report = _publish_basic_through(proxy, tmp_path)
    assert not report.failed, report.summary()
    assert [o.status for o in report.outcomes] == ["published"]
    assert proxy.faults[0].hits >= 2  # the config and the layers went through it


def test_blobs_compressed_on_the_fly_fail_that_image_clearly(proxy, tmp_path):
    proxy.add(path="/blobs/", compress=True, times=50)
    report = _publish_basic_through(proxy, tmp_path)
    (outcome,) = report.outcomes
    assert outcome.status == "failed"
    assert "Content-Encoding: gzip although identity was asked" in outcome.reason
    assert not os.path.lexists(tmp_path / "publish" / "basic:v1")
