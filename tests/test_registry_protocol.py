"""Protocol corners a real registry will not produce, through pytest-httpx:
429 with Retry-After, redirects to a storage host, bodies cut short and
resumed, wrong content, expiring tokens, malformed challenges, paging quirks."""

from __future__ import annotations

import email.utils
import io
import json

import httpx
import pytest

from reconciler.blobstore import BlobStore
from reconciler.errors import (
    AuthenticationError,
    IncompleteListingError,
    IntegrityError,
    RateLimitedError,
    RegistryError,
    TransferError,
    UnsupportedManifestError,
)
from reconciler.registry.client import RegistryClient, RetryPolicy, parse_retry_after
from reconciler.registry.credentials import Credentials
from tests.fake_registry import BASE, BLOB, BLOB_URL, CHALLENGE, LAYER, REALM, REG
from tests.offline_dns import offline_dns  # noqa: F401 (a fixture)

# Made-up host names are judged by what they resolve to: never by a DNS query.
pytestmark = pytest.mark.usefixtures("offline_dns")


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    c = RegistryClient(REG, sleep=sleeps.append, retry=RetryPolicy(attempts=4, base_delay=0.01))
    yield c
    c.close()


def fetch(client) -> bytes:
    sink = io.BytesIO()
    client.fetch_blob("library/app", LAYER, sink)
    return sink.getvalue()


def test_429_honours_retry_after_seconds_and_http_date(httpx_mock, client, sleeps):
    httpx_mock.add_response(url=BLOB_URL, status_code=429, headers={"Retry-After": "7"})
    date = email.utils.formatdate(__import__("time").time() + 30, usegmt=True)
    httpx_mock.add_response(url=BLOB_URL, status_code=503, headers={"Retry-After": date})
    httpx_mock.add_response(url=BLOB_URL, content=BLOB)
    assert fetch(client) == BLOB
    assert sleeps[0] == 7
    assert 25 <= sleeps[1] <= 31
    assert client.stats.retries == 2


def test_retry_after_too_long_is_left_to_the_next_cycle(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, status_code=429, headers={"Retry-After": "3600"})
    with pytest.raises(RateLimitedError, match="asks to wait 3600s"):
        fetch(client)


def test_persistent_5xx_gives_up_with_a_transfer_error(httpx_mock, client, sleeps):
    for _ in range(4):
        httpx_mock.add_response(url=BLOB_URL, status_code=502)
    with pytest.raises(TransferError, match="HTTP 502 after 4 attempts"):
        fetch(client)
    assert len(sleeps) == 3
    assert sleeps == sorted(sleeps)  # exponential


def test_connection_errors_are_retried(httpx_mock, client):
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=BLOB_URL)
    httpx_mock.add_response(url=BLOB_URL, content=BLOB)
    assert fetch(client) == BLOB


@pytest.mark.parametrize("value,expected", [("120", 120.0), ("0", 0.0), ("garbage", None), (None, None),
                                            ("2000000100", 100.0)])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=2_000_000_000) == expected


def test_redirect_to_storage_host_drops_authorization(httpx_mock):
    creds = Credentials("robot", "pw")
    c = RegistryClient(REG, credentials=creds)
    httpx_mock.add_response(url=BLOB_URL, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=httpx.URL(REALM, params={"client_id": "reconciler", "service": REG,
                                                         "scope": "repository:library/app:pull", "account": "robot"}),
                            json={"token": "tok-1", "expires_in": 300})
    storage = "https://storage.example.net/blobs/abc?signature=xyz"
    httpx_mock.add_response(url=BLOB_URL, status_code=307, headers={"Location": storage},
                            match_headers={"Authorization": "Bearer tok-1"})
    httpx_mock.add_response(url=storage, content=BLOB)
    assert fetch(c) == BLOB
    storage_request = httpx_mock.get_requests(url=storage)[0]
    assert "authorization" not in storage_request.headers


def test_https_to_http_redirect_is_refused(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, status_code=302, headers={"Location": "http://cdn.example.net/x"})
    with pytest.raises(RegistryError, match="refusing redirect from https to http"):
        fetch(client)


def test_body_cut_short_is_resumed_with_range(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, content=BLOB[:5000])
    httpx_mock.add_response(url=BLOB_URL, status_code=206, content=BLOB[5000:],
                            headers={"Content-Range": f"bytes 5000-{len(BLOB) - 1}/{len(BLOB)}"},
                            match_headers={"Range": "bytes=5000-"})
    assert fetch(client) == BLOB
    assert client.stats.blob_bytes == len(BLOB)


def test_resume_ignored_by_server_restarts_from_zero(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, content=BLOB[:3000])
    httpx_mock.add_response(url=BLOB_URL, status_code=200, content=BLOB, match_headers={"Range": "bytes=3000-"})
    assert fetch(client) == BLOB


def test_resume_with_wrong_content_range_is_refused(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, content=BLOB[:3000])
    httpx_mock.add_response(url=BLOB_URL, status_code=206, content=BLOB[10:],
                            headers={"Content-Range": f"bytes 10-{len(BLOB) - 1}/{len(BLOB)}"})
    with pytest.raises(TransferError, match="mismatched Content-Range"):
        fetch(client)


def test_blob_with_wrong_content_never_enters_the_store(httpx_mock, client, tmp_path):
    evil = BLOB[:-1] + b"!"
    httpx_mock.add_response(url=BLOB_URL, content=evil)
    store = BlobStore(tmp_path)
    with pytest.raises(IntegrityError, match="hashes to"):
        store.ensure(LAYER.digest, LAYER.size, lambda sink: client.fetch_blob("library/app", LAYER, sink))
    assert not store.has(LAYER.digest)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_blob_longer_than_declared_is_refused(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, content=BLOB + b"extra")
    with pytest.raises(IntegrityError, match="longer than its declared"):
        fetch(client)


def test_token_expiring_mid_download_is_refreshed_once(httpx_mock):
    c = RegistryClient(REG, credentials=Credentials("robot", "pw"), sleep=lambda s: None)
    token_url = httpx.URL(REALM, params={"client_id": "reconciler", "service": REG,
                                         "scope": "repository:library/app:pull", "account": "robot"})
    httpx_mock.add_response(url=BLOB_URL, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url, json={"token": "tok-1", "expires_in": 300})
    httpx_mock.add_response(url=BLOB_URL, content=BLOB[:4000], match_headers={"Authorization": "Bearer tok-1"})
    # the resume finds the token revoked
    httpx_mock.add_response(url=BLOB_URL, status_code=401, match_headers={"Authorization": "Bearer tok-1"},
                            headers={"WWW-Authenticate": CHALLENGE + ',error="invalid_token"'})
    httpx_mock.add_response(url=token_url, json={"access_token": "tok-2", "expires_in": 300})
    httpx_mock.add_response(url=BLOB_URL, status_code=206, content=BLOB[4000:],
                            headers={"Content-Range": f"bytes 4000-{len(BLOB) - 1}/{len(BLOB)}"},
                            match_headers={"Authorization": "Bearer tok-2", "Range": "bytes=4000-"})
    assert fetch(c) == BLOB


def test_token_cache_honours_expires_in(httpx_mock):
    now = [1_000_000.0]
    c = RegistryClient(REG, clock=lambda: now[0])
    manifest_url = f"{BASE}/library/app/manifests/latest"
    token_url = httpx.URL(REALM, params={"client_id": "reconciler", "service": REG,
                                         "scope": "repository:library/app:pull"})
    head = {"Docker-Content-Digest": "sha256:" + "a" * 64}
    httpx_mock.add_response(url=manifest_url, method="HEAD", status_code=401, headers={"WWW-Authenticate": CHALLENGE})
    httpx_mock.add_response(url=token_url, json={"token": "t1", "expires_in": 10})  # raised to the 60 s minimum
    httpx_mock.add_response(url=manifest_url, method="HEAD", headers=head, match_headers={"Authorization": "Bearer t1"})
    httpx_mock.add_response(url=manifest_url, method="HEAD", headers=head, match_headers={"Authorization": "Bearer t1"})
    httpx_mock.add_response(url=token_url, json={"token": "t2", "expires_in": 300})
    httpx_mock.add_response(url=manifest_url, method="HEAD", headers=head, match_headers={"Authorization": "Bearer t2"})
    c.head_manifest("library/app", "latest")
    now[0] += 40  # still valid: 60 s minimum lifetime
    c.head_manifest("library/app", "latest")
    now[0] += 30  # expired: a new token, without a 401 round trip
    c.head_manifest("library/app", "latest")
    assert len(httpx_mock.get_requests(url=token_url)) == 2


def test_malformed_challenge_is_an_authentication_error(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="unterminated'})
    with pytest.raises(AuthenticationError, match="unterminated quoted string"):
        fetch(client)


def test_private_realm_for_public_registry_is_refused(httpx_mock, client):
    httpx_mock.add_response(url=BLOB_URL, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="http://169.254.169.254/latest",service="x"'})
    with pytest.raises(AuthenticationError, match="plain-http token realm|private address"):
        fetch(client)


def _tags_url(query: str = "n=100") -> str:
    return f"{BASE}/library/app/tags/list?{query}"


def test_tags_follow_link_relative_and_unbracketed(httpx_mock, client):
    httpx_mock.add_response(url=_tags_url(), json={"name": "library/app", "tags": ["a", "b"]},
                            headers={"Link": '</v2/library/app/tags/list?n=100&last=b>; rel="next"'})
    httpx_mock.add_response(url=_tags_url("n=100&last=b"), json={"name": "library/app", "tags": ["c"]},
                            headers={"Link": f"{BASE}/library/app/tags/list?next_page=opaque%3D%3D; rel=next"})
    httpx_mock.add_response(url=f"{BASE}/library/app/tags/list?next_page=opaque%3D%3D",
                            json={"name": "library/app", "tags": ["d"]})
    assert client.list_tags("library/app") == ["a", "b", "c", "d"]


def test_tags_link_to_another_host_is_refused(httpx_mock, client):
    httpx_mock.add_response(url=_tags_url(), json={"tags": ["a"]},
                            headers={"Link": '<https://evil.example.net/v2/x/tags/list?n=1>; rel="next"'})
    with pytest.raises(IncompleteListingError, match="another host"):
        client.list_tags("library/app")


def test_tags_link_cycle_is_detected(httpx_mock, client):
    httpx_mock.add_response(url=_tags_url(), json={"tags": ["a"]},
                            headers={"Link": '</v2/library/app/tags/list?n=100>; rel="next"'})
    with pytest.raises(IncompleteListingError, match="loops back"):
        client.list_tags("library/app")


def test_tags_page_two_failing_is_never_a_partial_list(httpx_mock, client):
    httpx_mock.add_response(url=_tags_url(), json={"tags": ["a"]},
                            headers={"Link": '</v2/library/app/tags/list?n=100&last=a>; rel="next"'})
    for _ in range(4):
        httpx_mock.add_response(url=_tags_url("n=100&last=a"), status_code=429)
    with pytest.raises(IncompleteListingError, match="page 2"):
        client.list_tags("library/app")


def test_tags_full_page_without_link_continues_with_last(httpx_mock, client):
    httpx_mock.add_response(url=_tags_url("n=2"), json={"tags": ["a", "b"]})
    httpx_mock.add_response(url=_tags_url("n=2&last=b"), json={"tags": ["c"]})
    assert client.list_tags("library/app", page_size=2) == ["a", "b", "c"]


def test_manifest_body_not_matching_its_digest_is_refused(httpx_mock, client):
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()
    wrong = "sha256:" + "b" * 64
    httpx_mock.add_response(url=f"{BASE}/library/app/manifests/{wrong}", content=body,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    with pytest.raises(IntegrityError, match="requested digest"):
        client.get_manifest("library/app", wrong)


def test_schema1_manifest_is_unsupported(httpx_mock, client):
    body = json.dumps({"schemaVersion": 1, "name": "library/app", "fsLayers": []}).encode()
    httpx_mock.add_response(url=f"{BASE}/library/app/manifests/old", content=body,
                            headers={"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"})
    with pytest.raises(UnsupportedManifestError, match="schema 1"):
        client.get_manifest("library/app", "old").parse()


def test_rate_limit_headers_are_recorded(httpx_mock, client):
    httpx_mock.add_response(url=f"{BASE}/library/app/manifests/latest", method="HEAD",
                            headers={"Docker-Content-Digest": "sha256:" + "c" * 64,
                                     "RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "76;w=21600"})
    head = client.head_manifest("library/app", "latest")
    assert head.digest == "sha256:" + "c" * 64
    assert (client.rate_limit_remaining, client.rate_limit_limit) == (76, 100)
