"""Registry habits documented in the wild, reproduced through pytest-httpx.

Each test names where the behaviour is recorded (a registry's issue tracker,
a client's, or the RFC the server bends). The host names are placeholders:
what matters is which origin answers what.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from typing import Callable, List, Optional, Tuple

import httpx
import pytest

from reconciler import __version__
from reconciler.blobstore import BlobStore
from reconciler.errors import (
    AuthenticationError,
    IncompleteListingError,
    NotFoundError,
    RateLimitedError,
    TransferError,
)
from reconciler.fetch import current_digest, resolve_image
from reconciler.registry.challenge import MalformedChallengeError, parse_challenges, parse_www_authenticate
from reconciler.registry.client import RegistryClient, RetryPolicy
from reconciler.registry.credentials import Credentials
from reconciler.registry.manifest import OCI_CONFIG, OCI_MANIFEST, Platform
from reconciler.registry.reference import parse_reference
from tests.fake_registry import BASE, BLOB, BLOB_URL, CHALLENGE, LAYER, REALM, REG, SCOPE
from tests.offline_dns import offline_dns  # noqa: F401 (a fixture)

# Made-up host names are judged by what they resolve to: never by a DNS query.
pytestmark = pytest.mark.usefixtures("offline_dns")

STORAGE = "https://storage.example.net"
SECRET = "s3cr3t-password"

MANIFEST_URL = f"{BASE}/library/app/manifests/latest"

CONFIG = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": CONFIG_DIGEST, "size": len(CONFIG)},
                       "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
AMD64 = Platform("linux", "amd64")


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.sleeps: List[float] = []
        self.on_first_sleep: Optional[Callable[[], None]] = None  # runs before the clock first moves

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        hook, self.on_first_sleep = self.on_first_sleep, None
        if hook is not None:
            hook()
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def time_():
    return FakeTime()


def make_client(time_: FakeTime, **kw) -> RegistryClient:
    return RegistryClient(REG, sleep=time_.sleep, clock=time_.clock,
                          retry=RetryPolicy(attempts=4, base_delay=0.01), **kw)


@pytest.fixture
def client(time_):
    c = make_client(time_)
    yield c
    c.close()


def token_url(user: str = "") -> httpx.URL:
    params = {"client_id": "reconciler", "service": REG, "scope": SCOPE}
    if user:
        params["account"] = user
    return httpx.URL(REALM, params=params)


def fetch(client: RegistryClient) -> bytes:
    sink = io.BytesIO()
    client.fetch_blob("library/app", LAYER, sink)
    return sink.getvalue()


def resolve(client: RegistryClient, store: BlobStore):
    ref = parse_reference(f"{REG}/library/app:latest")
    return resolve_image(client, store, ref, AMD64, known_digest=current_digest(client, ref))


# -- 1. WWW-Authenticate as registries really send it ------------------------------


@pytest.mark.parametrize("header,scheme,params", [
    # RFC 7235 §2.2: "Recipients might have to support both token and quoted-string
    # syntax"; registries behind some proxies send `Basic realm=Registry` unquoted
    # (greenbone/openvas-scanner#2077, "allow Basic auth realm values without quotes").
    ("Basic realm=/", "basic", {"realm": "/"}),
    ('Bearer realm="https://a.example/token",scope=repository:a/b:pull',
     "bearer", {"realm": "https://a.example/token", "scope": "repository:a/b:pull"}),
    ("Bearer realm=https://a.example/token,service=reg.example",
     "bearer", {"realm": "https://a.example/token", "service": "reg.example"}),
    ('BASIC realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
])
def test_unquoted_values_and_upper_case_schemes_are_read(header, scheme, params):
    (challenge,) = parse_www_authenticate(header)
    assert challenge.scheme == scheme and challenge.params == params


def test_basic_credentials_answer_an_unquoted_realm(httpx_mock, time_):
    # The symptom of issue 13: an unquoted realm aborted the parse, so configured
    # Basic credentials were never tried.
    c = make_client(time_, credentials=Credentials("robot", SECRET))
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=401,
                            headers={"WWW-Authenticate": "Basic realm=/"})
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST},
                            match_headers={"Authorization": Credentials("robot", SECRET).basic_header()})
    assert c.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST


def test_negotiate_header_beside_a_basic_header(httpx_mock, time_):
    # SPNEGO front ends send `Negotiate` and `Basic` as two headers; the usable one
    # must be found (google/go-containerregistry#1075, "Handle multiple
    # www-authenticate headers").
    c = make_client(time_, credentials=Credentials("robot", SECRET))
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=401,
                            headers=[("WWW-Authenticate", "Negotiate"),
                                     ("WWW-Authenticate", 'BASIC realm="Artifactory Realm"')])
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST},
                            match_headers={"Authorization": Credentials("robot", SECRET).basic_header()})
    assert c.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST


def test_bearer_is_preferred_and_an_unreadable_header_does_not_hide_it():
    challenges = parse_challenges(['Basic realm="x"', 'Kerberos ="broken', f"Bearer realm={REALM}"])
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    with pytest.raises(MalformedChallengeError):
        parse_challenges(['Negotiate ="broken'])


# -- 2. manifest HEAD and GET --------------------------------------------------------


def _store_config(tmp_path) -> BlobStore:
    store = BlobStore(tmp_path / "blobs")
    store.put_bytes(CONFIG_DIGEST, CONFIG)
    return store


@pytest.mark.parametrize("status", [403, 400, 405])
def test_a_failed_head_falls_back_to_get(httpx_mock, client, tmp_path, status):
    # registry.centos.org answers manifest HEAD with 403; docker (distribution's
    # client) falls back to GET on any HEAD error (containerd/containerd#6684).
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=status)
    httpx_mock.add_response(url=MANIFEST_URL, method="GET", content=MANIFEST,
                            headers={"Content-Type": OCI_MANIFEST})
    resolved = resolve(client, _store_config(tmp_path))
    assert resolved.tag_digest == MANIFEST_DIGEST
    assert (client.stats.manifest_heads, client.stats.manifest_gets) == (1, 1)


def test_a_head_404_is_not_found_and_no_get_follows(httpx_mock, client, tmp_path):
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=404)
    with pytest.raises(NotFoundError):
        resolve(client, _store_config(tmp_path))
    assert len(httpx_mock.get_requests()) == 1


def test_a_known_digest_from_head_means_no_get(httpx_mock, client, tmp_path):
    store = _store_config(tmp_path)
    store.put_bytes(MANIFEST_DIGEST, MANIFEST)
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST})
    assert resolve(client, store).tag_digest == MANIFEST_DIGEST
    assert client.stats.manifest_gets == 0


def test_the_manifest_is_fetched_by_the_digest_the_head_gave(httpx_mock, client, tmp_path):
    # docker resolves the tag, then pulls the manifest by digest "all the time"
    # (moby/moby#41749; goharbor/harbor#13828 for containerd): a tag moving in
    # between is then no integrity error.
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST})
    httpx_mock.add_response(url=f"{BASE}/library/app/manifests/{MANIFEST_DIGEST}", method="GET", content=MANIFEST,
                            headers={"Content-Type": OCI_MANIFEST})
    assert resolve(client, _store_config(tmp_path)).tag_digest == MANIFEST_DIGEST


def test_a_registry_that_knows_only_the_tag_is_asked_by_tag(httpx_mock, client, tmp_path):
    # "Some registries seem to be non-conformant and return a not found error when
    # pulling by digest", so docker falls back to the tag (moby/moby#41749); the body
    # is still checked against the digest the HEAD gave.
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST})
    httpx_mock.add_response(url=f"{BASE}/library/app/manifests/{MANIFEST_DIGEST}", method="GET", status_code=404)
    httpx_mock.add_response(url=MANIFEST_URL, method="GET", content=MANIFEST, headers={"Content-Type": OCI_MANIFEST})
    assert resolve(client, _store_config(tmp_path)).tag_digest == MANIFEST_DIGEST


# -- 3. Link headers -------------------------------------------------------------------


def _tags(url: str, tags: List[str], links: List[str] = ()) -> dict:
    return dict(url=url, json={"name": "library/app", "tags": tags}, headers=[("Link", link) for link in links])


def test_links_with_several_relations_and_several_link_headers(httpx_mock, client):
    # RFC 8288 §3: a Link header holds a comma-separated list of link-values, and
    # the field may be repeated (httpx joins repeats with ", ").
    list_url = f"{BASE}/library/app/tags/list"
    httpx_mock.add_response(**_tags(f"{list_url}?n=100", ["a", "b"], [
        f'<{list_url}?n=100&last=0>; rel="prev", </v2/library/app/tags/list?n=100&last=b>; rel="next"']))
    httpx_mock.add_response(**_tags(f"{list_url}?n=100&last=b", ["c"], [
        '</v2/library/app/tags/list?n=100>; rel="first"',
        '</v2/library/app/tags/list?n=100&last=c>; title="page, two"; rel="next last"']))
    httpx_mock.add_response(**_tags(f"{list_url}?n=100&last=c", ["d"]))
    assert client.list_tags("library/app") == ["a", "b", "c", "d"]


def test_a_relative_link_resolves_against_the_url_that_answered(httpx_mock, client):
    # registry.k8s.io redirects tags/list to its backend (kubernetes/registry.k8s.io#326);
    # a relative reference resolves against the final URL (RFC 3986 §5.1.3), and
    # the next page is on that host, which gets no credentials.
    backend = "https://backend.example.net/v2/k8s-artifacts-prod/images/library/app/tags/list"
    httpx_mock.add_response(url=f"{BASE}/library/app/tags/list?n=100", status_code=307,
                            headers={"Location": f"{backend}?n=100"})
    httpx_mock.add_response(**_tags(f"{backend}?n=100", ["a", "b"], ['<list?n=100&last=b>; rel="next"']))
    httpx_mock.add_response(**_tags(f"{backend}?n=100&last=b", ["c"]))
    assert client.list_tags("library/app") == ["a", "b", "c"]


def test_a_link_to_a_third_host_after_a_redirect_is_refused(httpx_mock, client):
    backend = "https://backend.example.net/v2/app/tags/list"
    httpx_mock.add_response(url=f"{BASE}/library/app/tags/list?n=100", status_code=307,
                            headers={"Location": f"{backend}?n=100"})
    httpx_mock.add_response(**_tags(f"{backend}?n=100", ["a"],
                                    ['<https://elsewhere.example.com/v2/app/tags/list?last=a>; rel="next"']))
    with pytest.raises(IncompleteListingError, match="elsewhere.example.com"):
        client.list_tags("library/app")


# -- 4. token endpoint rate limits -----------------------------------------------------


def test_token_endpoint_429_and_503_honour_retry_after(httpx_mock, client, time_):
    # Docker Hub's token service answers 429 under load ("failed to fetch oauth token:
    # unexpected status: 429 Too Many Requests", docker/hub-feedback#2204); RFC 6585 §4
    # lets a 429 carry Retry-After, RFC 9110 §10.2.3 a 503.
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url(), status_code=429, headers={"Retry-After": "9"})
    httpx_mock.add_response(url=token_url(), status_code=503, headers={"Retry-After": "4"})
    httpx_mock.add_response(url=token_url(), json={"token": "t1", "expires_in": 300})
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST},
                            match_headers={"Authorization": "Bearer t1"})
    assert client.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST
    assert time_.sleeps == [9, 4]


def test_token_endpoint_asking_for_too_long_is_left_to_the_next_cycle(httpx_mock, client):
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url(), status_code=429, headers={"Retry-After": "3600"})
    with pytest.raises(RateLimitedError, match="asks to wait 3600s"):
        client.head_manifest("library/app", "latest")


# -- 5. challenges learned again -------------------------------------------------------


def _head(httpx_mock, token: str = None, **kw) -> None:
    match = {"match_headers": {"Authorization": f"Bearer {token}"}} if token else {}
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", **match, **kw)


def test_harbor_basic_challenge_after_a_rejected_token_starts_over(httpx_mock, client):
    # Harbor answers any request carrying a token it rejects with `Basic realm="harbor"`
    # (goharbor/harbor#18856); without credentials, a bare request gets the Bearer
    # challenge back. Before, the Basic challenge stuck and every later request failed.
    ok = {"headers": {"Docker-Content-Digest": MANIFEST_DIGEST}}
    _head(httpx_mock, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url(), json={"token": "t1", "expires_in": 300})
    _head(httpx_mock, "t1", **ok)
    _head(httpx_mock, "t1", status_code=401, headers={"WWW-Authenticate": 'Basic realm="harbor"'})
    _head(httpx_mock, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url(), json={"token": "t2", "expires_in": 300})
    _head(httpx_mock, "t2", **ok)
    _head(httpx_mock, "t2", **ok)  # the Bearer challenge is known again: no 401 round trip
    for _ in range(3):
        assert client.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST
    heads = [r for r in httpx_mock.get_requests(method="HEAD")]
    assert [r.headers.get("authorization") for r in heads] == [None, "Bearer t1", "Bearer t1", None, "Bearer t2",
                                                                "Bearer t2"]


def test_harbor_basic_challenge_with_credentials_is_answered_with_them(httpx_mock, time_):
    creds = Credentials("robot$ci", SECRET)
    c = make_client(time_, credentials=creds)
    ok = {"headers": {"Docker-Content-Digest": MANIFEST_DIGEST}}
    _head(httpx_mock, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url("robot$ci"), json={"token": "t1", "expires_in": 300})
    _head(httpx_mock, "t1", **ok)
    _head(httpx_mock, "t1", status_code=401, headers={"WWW-Authenticate": 'Basic realm="harbor"'})
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", match_headers={"Authorization": creds.basic_header()},
                            is_reusable=True, **ok)
    for _ in range(3):  # then Basic is what this registry is answered with
        assert c.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST


def test_nvcr_realm_switch_after_expiry_is_learned_again(httpx_mock, client, time_):
    # nvcr.io names another realm once a token expired, and that realm refuses
    # anonymous refreshes (NVIDIA/nvidia-container-toolkit#1945): ask again without
    # a token and follow the first realm.
    other = "https://authn.example.com/token"
    ok = {"headers": {"Docker-Content-Digest": MANIFEST_DIGEST}}
    _head(httpx_mock, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url(), json={"token": "t1", "expires_in": 300})
    _head(httpx_mock, "t1", **ok)
    _head(httpx_mock, "t1", status_code=401,
          headers={"WWW-Authenticate": f'Bearer realm="{other}",service="registry",error="invalid_token"'})
    httpx_mock.add_response(url=httpx.URL(other, params={"client_id": "reconciler", "service": "registry",
                                                         "scope": SCOPE}), status_code=401)
    _head(httpx_mock, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url(), json={"token": "t2", "expires_in": 300})
    _head(httpx_mock, "t2", **ok)
    client.head_manifest("library/app", "latest")
    assert client.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST


@pytest.mark.parametrize("allowed", [(), ("10.0.0.5:5001",), ("10.0.0.5",)])
def test_a_private_token_realm_needs_the_operators_consent(httpx_mock, time_, allowed):
    # On-premises token services (cesanta/docker_auth beside registry:2) run as their
    # own container on a private address (cesanta/docker_auth#390); the SSRF guard
    # refuses such a realm unless it is allowed for this registry.
    realm = "https://10.0.0.5:5001/auth"
    c = make_client(time_, private_realms=allowed)
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=401,
                            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="Docker registry"'})
    if not allowed:
        with pytest.raises(AuthenticationError, match="private address other than the registry.*allow it"):
            c.head_manifest("library/app", "latest")
        return
    httpx_mock.add_response(url=httpx.URL(realm, params={"client_id": "reconciler", "service": "Docker registry",
                                                         "scope": SCOPE}), json={"token": "t1"})
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST},
                            match_headers={"Authorization": "Bearer t1"})
    assert c.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST


# -- 6. credentials stay with the registry ----------------------------------------------


def test_a_storage_401_is_a_failed_download_never_a_challenge(httpx_mock, time_):
    # ECR and S3-backed registries redirect blobs to presigned S3 URLs, which refuse
    # any Authorization header (open-policy-agent/opa#6728, renovatebot/renovate#3877).
    # A 401 there is the storage's business: answering its challenge would send the
    # registry's credentials to whatever realm it names.
    creds = Credentials("robot", SECRET)
    c = make_client(time_, credentials=creds)
    storage_url = f"{STORAGE}/blobs/abc?X-Amz-Signature=expired"
    foreign_realm = "https://attacker.example.com/token"
    httpx_mock.add_response(url=BLOB_URL, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url("robot"), json={"token": "tok-1", "expires_in": 300})
    httpx_mock.add_response(url=BLOB_URL, status_code=307, headers={"Location": storage_url},
                            match_headers={"Authorization": "Bearer tok-1"})
    httpx_mock.add_response(url=storage_url, status_code=401,
                            headers={"WWW-Authenticate": f'Bearer realm="{foreign_realm}",service="s3"'})
    with pytest.raises(TransferError) as info:
        fetch(c)
    assert "storage.example.net" in str(info.value) and SECRET not in str(info.value)
    assert "authorization" not in httpx_mock.get_requests(url=storage_url)[0].headers
    assert not [r for r in httpx_mock.get_requests() if r.url.host == "attacker.example.com"]
    # The registry's own challenge is still the one answered.
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST},
                            match_headers={"Authorization": "Bearer tok-1"})
    assert c.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST


def test_no_authorization_reaches_storage_along_a_redirect_chain(httpx_mock, time_):
    c = make_client(time_, credentials=Credentials("robot", SECRET))
    hop = f"{BASE}/library/app/blobs/redirected"
    cdn = f"{STORAGE}/blob?sig=1"
    edge = "https://edge.example.net/blob?sig=2"
    httpx_mock.add_response(url=BLOB_URL, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url("robot"), json={"token": "tok-1", "expires_in": 300})
    httpx_mock.add_response(url=BLOB_URL, status_code=302, headers={"Location": "/v2/library/app/blobs/redirected"},
                            match_headers={"Authorization": "Bearer tok-1"})
    httpx_mock.add_response(url=hop, status_code=307, headers={"Location": cdn},
                            match_headers={"Authorization": "Bearer tok-1"})  # same origin: still the registry
    httpx_mock.add_response(url=cdn, status_code=302, headers={"Location": edge})
    httpx_mock.add_response(url=edge, content=BLOB)
    assert fetch(c) == BLOB
    for request in httpx_mock.get_requests():
        if request.url.host not in (REG, "auth.example.org"):  # the token realm the registry named
            assert "authorization" not in request.headers, request.url


# -- 7. request headers ------------------------------------------------------------------


def test_user_agent_everywhere_and_identity_encoding_for_blobs(httpx_mock, time_):
    # A front end compressing on the fly changes byte counts and breaks resumable
    # downloads (conan-io/conan#6996, Artifactory behind Apache); RFC 9110 §10.1.5
    # asks a client to send User-Agent with each request.
    c = make_client(time_, credentials=Credentials("robot", SECRET))
    storage_url = f"{STORAGE}/blobs/abc?sig=1"
    httpx_mock.add_response(url=BLOB_URL, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url("robot"), json={"token": "tok-1", "expires_in": 300})
    httpx_mock.add_response(url=BLOB_URL, status_code=307, headers={"Location": storage_url})
    httpx_mock.add_response(url=storage_url, content=BLOB)
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": MANIFEST_DIGEST})
    assert fetch(c) == BLOB
    c.head_manifest("library/app", "latest")
    requests = httpx_mock.get_requests()
    assert {r.headers["user-agent"] for r in requests} == {f"reconciler/{__version__}"}
    blob_requests = [r for r in requests if "/blobs/" in r.url.path]
    assert len(blob_requests) == 3  # registry (401, then 307), storage
    assert {r.headers["accept-encoding"] for r in blob_requests} == {"identity"}


# -- 8. one backoff per registry host --------------------------------------------------------


def test_retry_after_seen_by_one_request_holds_the_others(httpx_mock, time_):
    """While request A sleeps off a 429, request B to the same host must wait too.
    B runs inside A's sleep, as another thread would; the fake clock only moves
    when someone sleeps, so no test time passes."""
    # Docker Hub answers 429 once the quota is spent ("toomanyrequests",
    # docker/hub-feedback#2464); RFC 6585 §4: Retry-After says how long to wait.
    c = make_client(time_)
    start = time_.now
    sent_at: List[Tuple[str, float]] = []
    other_url = f"{BASE}/library/other/manifests/latest"

    def respond(request: httpx.Request) -> httpx.Response:
        sent_at.append((request.url.path, time_.now))
        if request.url.path.endswith("/app/manifests/latest") and len(sent_at) == 1:
            return httpx.Response(429, headers={"Retry-After": "20"})
        return httpx.Response(200, headers={"Docker-Content-Digest": MANIFEST_DIGEST})

    httpx_mock.add_callback(respond, url=MANIFEST_URL, method="HEAD", is_reusable=True)
    httpx_mock.add_callback(respond, url=other_url, method="HEAD", is_reusable=True)
    c.head_manifest("library/other", "latest")  # the first contact goes alone: it is not the case here
    sent_at.clear()
    results = {}

    def run_b() -> None:
        # B starts while A is asleep, before the clock moves, as another thread would.
        thread = threading.Thread(target=lambda: results.update(b=c.head_manifest("library/other", "latest")))
        thread.start()
        thread.join(timeout=10)

    time_.on_first_sleep = run_b
    assert c.head_manifest("library/app", "latest").digest == MANIFEST_DIGEST
    assert results["b"].digest == MANIFEST_DIGEST
    b_sent = [t for path, t in sent_at if path.endswith("/other/manifests/latest")]
    assert b_sent and b_sent[0] >= start + 20


def test_429_with_a_spent_quota_is_left_to_the_next_cycle_at_once(httpx_mock, client, time_):
    # Docker Hub reports its pull quota in RateLimit-Remaining ("0;w=21600",
    # docker/hub-feedback#2464, docs.docker.com/docker-hub/usage/pulls/): retrying
    # within the cycle cannot succeed.
    httpx_mock.add_response(url=MANIFEST_URL, method="GET", status_code=429,
                            headers={"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "0;w=21600"})
    with pytest.raises(RateLimitedError, match="RateLimit-Remaining 0 of 100"):
        client.get_manifest("library/app", "latest")
    assert time_.sleeps == [] and len(httpx_mock.get_requests()) == 1
