"""One token for many repositories: fewer token requests per cycle.

The token spec lets a client repeat `scope` in one token request, and the
token server grants the intersection of what is asked and allowed, a partial
grant being no error (distribution docs/spec/auth/token.md, "Requesting a
Token"; the granted access is the JWT's `access` claim, docs/spec/auth/jwt.md).
Docker Hub's auth.docker.io works this way; `docker push` of several
repositories asks for their scopes together. Against the real registry in
token mode (its token server signs JWTs like Docker Hub's), and through
pytest-httpx for token services a local registry cannot imitate (opaque
tokens, refusing many scopes at once).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List
from urllib.parse import parse_qs

import httpx
import pytest

from reconciler.errors import AuthenticationError, TokenServiceUnavailableError
from reconciler.registry.auth import MAX_SCOPES_PER_TOKEN, granted_scopes
from reconciler.registry.client import RegistryClient, RetryPolicy
from reconciler.registry.credentials import Credentials
from tests.conftest import USERS
from tests.offline_dns import offline_dns  # noqa: F401 (a fixture)

# Made-up host names are judged by what they resolve to: never by a DNS query.
pytestmark = pytest.mark.usefixtures("offline_dns")

FIXTURES = ["fixtures/basic", "fixtures/special", "fixtures/multiarch", "fixtures/manytags", "fixtures/dockerlist"]


def counting_client(server, user, seen: List[httpx.Response]) -> RegistryClient:
    """A client whose every registry response is recorded."""
    http = httpx.Client(event_hooks={"response": [seen.append]})
    creds = Credentials(user, USERS[user]) if user else None
    return RegistryClient(server.host, insecure=True, credentials=creds, http=http, max_concurrency=8)


def test_one_token_request_covers_every_expected_repository(token_registry, fixture_images):
    seen: List[httpx.Response] = []
    before = len(token_registry.token_server.requests)
    client = counting_client(token_registry, "alice", seen)
    client.expect_repositories(FIXTURES)
    tags = {name: fixture_images[name.split("/")[1]].tags[0] for name in FIXTURES}
    # Concurrently, as the plan asks: the first request goes alone, so only it meets a 401.
    with ThreadPoolExecutor(8) as pool:
        heads = list(pool.map(lambda name: client.head_manifest(name, tags[name]), FIXTURES * 3))
    assert all(h is not None and h.digest for h in heads)
    tokens = token_registry.token_server.requests[before:]
    assert len(tokens) == 1, tokens
    assert sorted(tokens[0]["scopes"]) == sorted(f"repository:{n}:pull" for n in FIXTURES)
    registry_answers = [r.status_code for r in seen if r.url.path.startswith("/v2/")]
    assert registry_answers.count(401) == 1 and len(registry_answers) == len(FIXTURES) * 3 + 1


def test_a_partial_grant_shares_what_was_granted_and_refuses_the_rest(token_registry):
    """Anonymous may pull fixtures/basic only: the shared token serves it; the
    other repository still gets the usual refusal, and basic keeps working."""
    seen: List[httpx.Response] = []
    before = len(token_registry.token_server.requests)
    client = counting_client(token_registry, None, seen)
    client.expect_repositories(["fixtures/basic", "fixtures/special"])
    assert client.head_manifest("fixtures/basic", "v1").digest
    with pytest.raises(AuthenticationError, match="fixtures/special"):
        client.head_manifest("fixtures/special", "latest")
    asked = len(token_registry.token_server.requests) - before
    assert client.head_manifest("fixtures/basic", "v1").digest
    assert len(token_registry.token_server.requests) - before == asked  # its token was kept
    first = token_registry.token_server.requests[before]
    assert sorted(first["scopes"]) == ["repository:fixtures/basic:pull", "repository:fixtures/special:pull"]


def test_at_most_max_scopes_per_token_request(token_registry, fixture_images):
    before = len(token_registry.token_server.requests)
    client = RegistryClient(token_registry.host, insecure=True, credentials=Credentials("alice", USERS["alice"]))
    # More repositories than one token may name (most do not exist: a token is still granted).
    names = [f"fixtures/none{i:02d}" for i in range(MAX_SCOPES_PER_TOKEN + 5)]
    client.expect_repositories(["fixtures/basic", *names])
    assert client.head_manifest("fixtures/basic", "v1").digest
    first = token_registry.token_server.requests[before]
    assert len(first["scopes"]) == MAX_SCOPES_PER_TOKEN
    assert "repository:fixtures/basic:pull" in first["scopes"]


REG = "registry.example.org"
REALM = "https://auth.example.org/token"
CHALLENGE = f'Bearer realm="{REALM}",service="{REG}"'


def _realm_url_matcher() -> "re.Pattern[str]":
    return re.compile(re.escape(REALM) + r"\?.*")


def challenge_without_token(request: httpx.Request) -> httpx.Response:
    """A registry answering every request with a token, and challenging the others."""
    if request.headers.get("authorization") is None:
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
    return httpx.Response(200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64})


def serve(httpx_mock, token, registry) -> None:
    """Route token requests to `token`, manifest HEADs to `registry`."""
    httpx_mock.add_callback(token, method="GET", is_reusable=True, url=_realm_url_matcher())
    httpx_mock.add_callback(registry, method="HEAD", is_reusable=True)


def slow_token_service(httpx_mock, answer: httpx.Response, delay: float = 0.05) -> List[List[str]]:
    """A token service `delay` seconds away always giving `answer` (the others
    wait meanwhile), before a registry that challenges requests without a
    token; returns the scopes of each token request, as they come."""
    asked: List[List[str]] = []
    lock = threading.Lock()

    def token(request: httpx.Request) -> httpx.Response:
        with lock:
            asked.append(scopes_of(request))
        time.sleep(delay)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    serve(httpx_mock, token, challenge_without_token)
    return asked


def scopes_of(request: httpx.Request) -> List[str]:
    return sorted(parse_qs(request.url.query.decode())["scope"])


def test_an_opaque_token_refused_for_one_repository_keeps_serving_the_others(httpx_mock):
    """A token that is no JWT says nothing of what it grants: it is taken to
    cover what was asked until the registry refuses it for a repository, which
    then gets a token of its own; the others keep the shared one."""
    asked: List[List[str]] = []

    def token(request: httpx.Request) -> httpx.Response:
        asked.append(scopes_of(request))
        return httpx.Response(200, json={"token": f"opaque-{len(asked)}", "expires_in": 300})

    def registry(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        if auth is None or (auth == "Bearer opaque-1" and "/b/" in request.url.path):
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return httpx.Response(200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64})

    serve(httpx_mock, token, registry)
    client = RegistryClient(REG)
    client.expect_repositories(["org/a", "org/b", "org/c"])
    for name in ("org/a", "org/b", "org/c", "org/a", "org/b"):
        assert client.head_manifest(name, "latest").digest
    assert asked == [["repository:org/a:pull", "repository:org/b:pull", "repository:org/c:pull"],
                     ["repository:org/b:pull"]]


@pytest.mark.parametrize("status", [400, 401])
def test_a_token_service_refusing_many_scopes_is_asked_one_at_a_time(httpx_mock, status):
    """400: a service that takes one scope; 401: GHCR's anonymous realm, which
    refuses a request naming a repository it does not know."""
    asked: List[List[str]] = []

    def token(request: httpx.Request) -> httpx.Response:
        asked.append(scopes_of(request))
        if len(asked[-1]) > 1:
            return httpx.Response(status, json={"details": "only one scope per request"})
        return httpx.Response(200, json={"token": f"t{len(asked)}", "expires_in": 300})

    serve(httpx_mock, token, challenge_without_token)
    client = RegistryClient(REG)
    client.expect_repositories(["org/a", "org/b"])
    assert client.head_manifest("org/a", "latest").digest
    assert client.head_manifest("org/b", "latest").digest
    assert asked == [["repository:org/a:pull", "repository:org/b:pull"], ["repository:org/a:pull"],
                     ["repository:org/b:pull"]]


def test_granted_scopes_reads_the_access_claim_and_nothing_else():
    def jwt(claims: object) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJub25lIn0.{body}.sig"

    asked = ["repository:a:pull", "repository:b:pull", "repository:c:pull"]
    access = [{"type": "repository", "name": "a", "actions": ["pull"]},
              {"type": "repository", "name": "b", "actions": []},
              {"type": "repository", "name": "c", "actions": ["*"]}]
    assert granted_scopes(jwt({"access": access}), asked) == {"repository:a:pull", "repository:c:pull"}
    assert granted_scopes(jwt({"sub": "x"}), asked) is None  # no claim: opaque
    assert granted_scopes("not-a-jwt", asked) is None
    assert granted_scopes("a.%%%.c", asked) is None


def test_waiting_threads_do_not_each_ask_for_a_token(httpx_mock):
    """Requests in parallel that need a token none holds (a repository not
    expected, a token just expired) wait for one token request."""
    asked = slow_token_service(httpx_mock, httpx.Response(200, json={"token": "t", "expires_in": 300}))
    client = RegistryClient(REG, max_concurrency=8)
    assert client.head_manifest("org/first", "latest").digest
    with ThreadPoolExecutor(8) as pool:
        assert all(h.digest for h in pool.map(lambda _: client.head_manifest("org/next", "latest"), range(16)))
    assert asked == [["repository:org/first:pull"], ["repository:org/next:pull"]]


def test_refused_credentials_are_not_tried_again_with_fewer_scopes(httpx_mock):
    """With credentials, the token service's 401 refuses them (the spec): one
    more request would only count one more failed login (account lockouts)."""
    asked: List[List[str]] = []

    def token(request: httpx.Request) -> httpx.Response:
        asked.append(scopes_of(request))
        return httpx.Response(401, json={"details": "incorrect username or password"})

    serve(httpx_mock, token, challenge_without_token)
    client = RegistryClient(REG, credentials=Credentials("robot", "wrong-secret-7"))
    client.expect_repositories(["org/a", "org/b"])
    with pytest.raises(AuthenticationError) as info:
        client.head_manifest("org/a", "latest")
    assert len(asked) == 1 and "wrong-secret-7" not in str(info.value)


def test_opaque_tokens_granted_in_part_stop_being_shared(httpx_mock):
    """A token service that grants only the first scope asked, in an opaque
    token: three refusals, then one repository at a time (no 401 per repository)."""
    grants = {}
    seen: List[httpx.Request] = []

    def token(request: httpx.Request) -> httpx.Response:
        value = f"opaque-{len(grants)}"
        grants[value] = scopes_of(request)[0]
        return httpx.Response(200, json={"token": value, "expires_in": 300})

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        value = (request.headers.get("authorization") or " ").split(" ", 1)[1]
        repository = request.url.path.split("/manifests/")[0][len("/v2/"):]
        if grants.get(value) != f"repository:{repository}:pull":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return httpx.Response(200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64})

    serve(httpx_mock, token, registry)
    client = RegistryClient(REG)
    names = [f"org/{c}" for c in "abcdefghij"]
    client.expect_repositories(names)
    for name in names:
        assert client.head_manifest(name, "latest").digest
    refused = sum(1 for r in seen if "authorization" in r.headers) - len(names)
    assert refused == 3
    assert len(grants) == len(names)


def test_threads_waiting_for_a_failing_token_request_share_its_failure(httpx_mock):
    """A token service that is down is not asked once per waiting thread, in a
    row: the threads that waited for the failing request fail with it (and
    retry after their backoff)."""
    # 300 ms, and the threads start together: on a loaded machine a thread that
    # starts after the failure came back asks again, rightly (seen in CI).
    asked = slow_token_service(httpx_mock, httpx.Response(503, json={"details": "down"}), delay=0.3)
    client = RegistryClient(REG, max_concurrency=8, retry=RetryPolicy(attempts=1))
    with pytest.raises(TokenServiceUnavailableError):
        client.head_manifest("org/first", "latest")
    together = threading.Barrier(8)

    def head(_: int) -> str:
        together.wait(timeout=30)
        try:
            client.head_manifest("org/next", "latest")
        except TokenServiceUnavailableError as exc:
            return str(exc)
        return "no error"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(head, range(8)))
    assert all("503" in o for o in outcomes), outcomes
    assert 2 <= len(asked) <= 3, asked  # the first request's, then one (or two: a thread not yet waiting)
