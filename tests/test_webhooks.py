"""Webhook providers through the HTTP app: a valid and an invalid request each."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from dataclasses import replace

import httpx
import pytest

from reconciler.errors import ConfigError
from reconciler.registry.reference import ImageReference
from reconciler.service.app import build_app
from reconciler.service.delivery import DeliveryTracker
from reconciler.service.hook_secrets import load_hook_secrets
from reconciler.service.metrics import Metrics
from reconciler.watchlist import WebhookConfig, load_watchlist
from reconciler.webhooks import _PARSERS, MAX_HINT_TAGS

SECRET = "s3cret-s3cret-s3cret"


class AppClient:
    """A synchronous client that calls the ASGI app in-process (httpx.ASGITransport)."""

    def __init__(self, app) -> None:
        self.app = app

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://hooks") as c:
                return await c.request(method, path, **kw)
        return asyncio.run(go())

    def post(self, path: str, **kw) -> httpx.Response:
        return self._call("POST", path, **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return self._call("GET", path, **kw)


class FakeService:
    """What build_app needs of a service; records nudges."""

    def __init__(self, watchlist) -> None:
        self.watchlist = watchlist
        self.metrics = Metrics()
        self.delivery = DeliveryTracker(watchlist, self.metrics.registry)
        self.nudged = []
        self.healthy = True

    def nudge(self, indexes):
        self.nudged.append(sorted(indexes))

    def status(self):
        return {"images": []}


@pytest.fixture
def client(tmp_path):
    (tmp_path / "watchlist.toml").write_text('''
[[image]]
source = "registry.example.org/team/app"
tags = ["1"]
[[image]]
source = "docker.io/library/alpine"
tags = ["3"]
[[image]]
source = "ghcr.io/octo/tool"
tags = ["1"]
[[image]]
source = "quay.io/org/thing"
tags = ["1"]
[[image]]
source = "gitlab.example.org/group/project/sub"
tags = ["1"]
''')
    service = FakeService(load_watchlist(tmp_path / "watchlist.toml"))
    secrets = {p: SECRET for p in ("distribution", "dockerhub", "gitlab", "harbor", "quay", "github", "generic")}
    c = AppClient(build_app(service, secrets))
    c.service = service
    return c


def envelope(repository: str) -> bytes:
    return json.dumps({"events": [
        {"id": "1", "action": "push", "target": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                                 "repository": repository, "digest": "sha256:" + "1" * 64}},
        {"id": "2", "action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                 "repository": repository, "tag": "1", "digest": "sha256:" + "2" * 64}},
        {"id": "3", "action": "pull", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                 "repository": "elsewhere/x"}},
    ]}).encode()


def github_sig(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def generic_headers(body: bytes, stamp=None, secret: str = SECRET):
    stamp = str(int(time.time())) if stamp is None else stamp
    sig = "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Reconciler-Timestamp": stamp, "X-Reconciler-Signature": sig}


GITHUB_BODY = json.dumps({"action": "published", "package": {
    "name": "Tool", "namespace": "octo", "package_type": "CONTAINER",
    "package_version": {"container_metadata": {"tag": {"name": "1", "digest": "sha256:" + "3" * 64}}}}}).encode()
GENERIC_BODY = json.dumps({"image": "registry.example.org/team/app:1"}).encode()
BAD_TIME_BODY = json.dumps({"image": "registry.example.org/team/app", "pushed_at": "yesterday"}).encode()

VALID = [
    ("distribution", "/hooks/distribution", {"Authorization": f"Bearer {SECRET}"}, envelope("team/app"), [1]),
    ("dockerhub", f"/hooks/dockerhub/{SECRET}", {}, json.dumps({"repository": {"repo_name": "alpine"},
                                                                "push_data": {"tag": "3"}}).encode(), [2]),
    ("gitlab", "/hooks/gitlab", {"X-Gitlab-Token": SECRET},
     json.dumps({"object_kind": "pipeline", "project": {"path_with_namespace": "group/project"}}).encode(), [5]),
    ("harbor", "/hooks/harbor", {"Authorization": SECRET}, json.dumps(
        {"type": "PUSH_ARTIFACT", "event_data": {"repository": {"repo_full_name": "team/app"}}}).encode(), [1]),
    ("quay", f"/hooks/quay/{SECRET}", {}, json.dumps({"repository": "org/thing", "docker_url": "quay.io/org/thing",
                                                      "updated_tags": ["1"]}).encode(), [4]),
    ("github", "/hooks/github", {"X-Hub-Signature-256": github_sig(GITHUB_BODY), "X-GitHub-Event": "package"},
     GITHUB_BODY, [3]),
    # A callable: signed when the test runs, so the timestamp is fresh however
    # long the suite took to get here (it once failed after 5 minutes).
    ("generic", "/hooks/generic", lambda: generic_headers(GENERIC_BODY), GENERIC_BODY, [1]),
]


def headers_now(headers):
    """`headers`, or what it makes when it is a callable (headers signed now)."""
    return headers() if callable(headers) else headers


@pytest.mark.parametrize("provider,path,headers,body,expected", VALID, ids=[v[0] for v in VALID])
def test_valid_hook_nudges_only_the_matching_entry(client, provider, path, headers, body, expected):
    response = client.post(path, content=body, headers=headers_now(headers))
    assert response.status_code == 202
    assert client.service.nudged == [expected]


INVALID = [
    ("distribution", "/hooks/distribution", {"Authorization": "Bearer wrong"}, envelope("team/app"), 401),
    ("distribution", "/hooks/distribution", {"Authorization": f"Bearer {SECRET}"}, b"{not json", 400),
    ("dockerhub", "/hooks/dockerhub/wrong-token", {}, b'{"repository": {"repo_name": "alpine"}}', 401),
    ("dockerhub", "/hooks/dockerhub", {}, b'{"repository": {"repo_name": "alpine"}}', 401),
    ("gitlab", "/hooks/gitlab", {}, b'{"project": {"path_with_namespace": "group/project"}}', 401),
    ("gitlab", "/hooks/gitlab", {"X-Gitlab-Token": SECRET}, b'{"object_kind": "push"}', 400),
    ("harbor", "/hooks/harbor", {"Authorization": SECRET + "x"}, b"{}", 401),
    ("harbor", "/hooks/harbor", {"Authorization": SECRET}, b'{"type": "PUSH_ARTIFACT"}', 400),
    ("quay", f"/hooks/quay/{SECRET}", {}, b'["not", "an", "object"]', 400),
    ("github", "/hooks/github", {"X-Hub-Signature-256": github_sig(GITHUB_BODY, "other-secret")}, GITHUB_BODY, 401),
    ("generic", "/hooks/generic", lambda: generic_headers(GENERIC_BODY, stamp=str(int(time.time()) - 3600)),
     GENERIC_BODY, 401),
    ("generic", "/hooks/generic", lambda: generic_headers(GENERIC_BODY, secret="other-secret"), GENERIC_BODY, 401),
    ("nonesuch", "/hooks/nonesuch", {}, b"{}", 404),
]


@pytest.mark.parametrize("provider,path,headers,body,status", INVALID,
                         ids=[f"{i[0]}-{i[4]}-{n}" for n, i in enumerate(INVALID)])
def test_invalid_hook_changes_nothing(client, provider, path, headers, body, status):
    response = client.post(path, content=body, headers=headers_now(headers))
    assert response.status_code == status
    assert client.service.nudged == []


def test_generic_replay_is_refused(client):
    headers = generic_headers(GENERIC_BODY)
    assert client.post("/hooks/generic", content=GENERIC_BODY, headers=headers).status_code == 202
    assert client.post("/hooks/generic", content=GENERIC_BODY, headers=headers).status_code == 401
    assert client.service.nudged == [[1]]


def test_oversized_body_is_refused(client):
    body = b"{" + b" " * (2 << 20) + b"}"
    response = client.post("/hooks/distribution", content=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 413 and client.service.nudged == []


def test_unknown_images_are_ignored(client):
    response = client.post("/hooks/distribution", content=envelope("someone/else"),
                           headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 202 and client.service.nudged == []


def test_health_metrics_and_status(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    client.post("/hooks/harbor", content=b"{}", headers={"Authorization": "nope"})
    metrics = client.get("/metrics").text
    assert 'reconciler_webhooks_total{outcome="rejected",provider="harbor"} 1.0' in metrics
    assert client.get("/status").json() == {"images": []}


def test_hook_secrets_are_required_and_strong(tmp_path, monkeypatch):
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"webhooks.distribution.token_env: environment variable HOOK_TOKEN is not set"):
        load_hook_secrets({"distribution": WebhookConfig("distribution", token_env="HOOK_TOKEN")}, "watchlist.toml")
    monkeypatch.setenv("HOOK_TOKEN", "short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_hook_secrets({"distribution": WebhookConfig("distribution", token_env="HOOK_TOKEN")}, "watchlist.toml")
    (tmp_path / "tok").write_text(SECRET + "\n")
    assert load_hook_secrets({"github": WebhookConfig("github", token_file=str(tmp_path / "tok"))}, "w") == \
        {"github": SECRET}


# --- headers first, timestamps, replays (issue: "nan passes the window; body read before the token") ---

class RecordingBody:
    """A 64 MiB request body streamed in 64 KiB chunks, counting how much the app pulled."""

    def __init__(self, total: int = 64 << 20, chunk: int = 64 << 10) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self):
        while self.sent < self.total:
            self.sent += self.chunk
            yield b" " * self.chunk


def well_formed_signature() -> str:
    return "sha256=" + "0" * 64


REFUSED_BEFORE_THE_BODY = [
    ("distribution-wrong", "/hooks/distribution", {"Authorization": "Bearer wrong"}),
    ("distribution-missing", "/hooks/distribution", {}),
    ("dockerhub-wrong", "/hooks/dockerhub/wrong-token", {}),
    ("quay-missing", "/hooks/quay", {}),
    ("gitlab-wrong", "/hooks/gitlab", {"X-Gitlab-Token": "wrong"}),
    ("harbor-missing", "/hooks/harbor", {}),
    ("github-missing-signature", "/hooks/github", {}),
    ("github-malformed-signature", "/hooks/github", {"X-Hub-Signature-256": "sha256=not-hex"}),
    ("github-bad-delivery", "/hooks/github", {"X-Hub-Signature-256": well_formed_signature(),
                                              "X-GitHub-Delivery": "x" * 500}),
    ("generic-missing-signature", "/hooks/generic", lambda: {"X-Reconciler-Timestamp": str(int(time.time()))}),
    ("generic-missing-timestamp", "/hooks/generic", {"X-Reconciler-Signature": well_formed_signature()}),
    ("generic-nan", "/hooks/generic", {"X-Reconciler-Timestamp": "nan",
                                       "X-Reconciler-Signature": well_formed_signature()}),
]


@pytest.mark.parametrize("name,path,headers", REFUSED_BEFORE_THE_BODY, ids=[r[0] for r in REFUSED_BEFORE_THE_BODY])
def test_bad_headers_are_refused_without_reading_the_body(client, name, path, headers):
    body = RecordingBody()
    response = client.post(path, content=body, headers=headers_now(headers))
    assert response.status_code == 401
    assert body.sent == 0, f"the app read {body.sent} bytes of a request it could refuse from its headers"
    assert client.service.nudged == []


def _now() -> str:
    return str(int(time.time()))


BAD_STAMPS = [
    ("nan", lambda: "nan"), ("NaN", lambda: "NaN"), ("inf", lambda: "inf"), ("minus-inf", lambda: "-inf"),
    ("1e400", lambda: "1e400"), ("empty", lambda: ""), ("hex", lambda: hex(int(time.time()))),
    ("underscores", lambda: f"{int(time.time()):_}"), ("plus-sign", lambda: "+" + _now()),
    ("exponent", lambda: _now() + "e0"), ("an-hour-ago", lambda: str(int(time.time()) - 3600)),
    ("in-an-hour", lambda: str(int(time.time()) + 3600)),
]


@pytest.mark.parametrize("name,stamp", BAD_STAMPS, ids=[b[0] for b in BAD_STAMPS])
def test_generic_timestamp_must_be_plain_unix_seconds_within_the_window(client, name, stamp):
    # Correctly signed, so only the timestamp is at fault.
    response = client.post("/hooks/generic", content=GENERIC_BODY, headers=generic_headers(GENERIC_BODY, stamp()))
    assert response.status_code == 401, response.text
    assert "X-Reconciler-Timestamp" in response.json()["error"]
    assert client.service.nudged == []


def test_generic_timestamp_with_a_fraction_is_accepted(client):
    stamp = f"{time.time():.3f}"
    response = client.post("/hooks/generic", content=GENERIC_BODY, headers=generic_headers(GENERIC_BODY, stamp))
    assert response.status_code == 202 and client.service.nudged == [[1]]


def test_verify_headers_refuses_nan_before_any_body():
    from reconciler.webhooks import HookRejected, verify_headers
    headers = {"x-reconciler-timestamp": "nan", "x-reconciler-signature": well_formed_signature()}
    with pytest.raises(HookRejected) as refused:
        verify_headers("generic", SECRET, headers, now=time.time())
    assert refused.value.status == 401


def github_headers(body: bytes, delivery: str) -> dict:
    return {"X-Hub-Signature-256": github_sig(body), "X-GitHub-Event": "package", "X-GitHub-Delivery": delivery}


def test_github_replay_is_refused(client):
    first = client.post("/hooks/github", content=GITHUB_BODY, headers=github_headers(GITHUB_BODY, "72d3162e-cc78-11e3"))
    again = client.post("/hooks/github", content=GITHUB_BODY, headers=github_headers(GITHUB_BODY, "72d3162e-cc78-11e3"))
    assert (first.status_code, again.status_code) == (202, 401)
    assert "replay" in again.json()["error"]
    assert client.service.nudged == [[3]]


def test_github_replay_with_a_new_delivery_id_is_refused(client):
    # The delivery ID is not signed: an attacker can change it, the signature they cannot.
    assert client.post("/hooks/github", content=GITHUB_BODY, headers=github_headers(GITHUB_BODY, "a-1")).status_code == 202
    assert client.post("/hooks/github", content=GITHUB_BODY, headers=github_headers(GITHUB_BODY, "a-2")).status_code == 401
    assert client.service.nudged == [[3]]


def test_github_delivery_id_seen_before_is_refused_even_with_a_new_body(client):
    other = GITHUB_BODY.replace(b'"Tool"', b'"tool"')
    assert client.post("/hooks/github", content=GITHUB_BODY, headers=github_headers(GITHUB_BODY, "d-1")).status_code == 202
    assert client.post("/hooks/github", content=other, headers=github_headers(other, "d-1")).status_code == 401


def test_github_forged_requests_are_not_remembered(client):
    # A wrong signature must not poison the guard for the real delivery that follows.
    forged = {**github_headers(GITHUB_BODY, "d-9"), "X-Hub-Signature-256": github_sig(GITHUB_BODY, "other-secret")}
    assert client.post("/hooks/github", content=GITHUB_BODY, headers=forged).status_code == 401
    assert client.post("/hooks/github", content=GITHUB_BODY, headers=github_headers(GITHUB_BODY, "d-9")).status_code == 202


def test_replay_guard_is_bounded_and_drops_the_oldest():
    from reconciler.webhooks import ReplayGuard
    guard = ReplayGuard(max_entries=3)
    for i in range(10):
        assert guard.first_time(f"key-{i}", now=1000.0 + i)
    assert len(guard) == 3
    assert not guard.first_time("key-9", now=1010.0)
    assert guard.first_time("key-0", now=1010.0)  # dropped to make room: the oldest go first


def test_replay_guard_forgets_after_its_memory():
    from reconciler.webhooks import REPLAY_MEMORY_S, ReplayGuard
    guard = ReplayGuard()
    assert guard.first_time("a", "b", now=0.0)
    assert not guard.first_time("b", "c", now=REPLAY_MEMORY_S - 1)
    assert len(guard) == 2  # a refused call remembers nothing new
    assert guard.first_time("a", now=REPLAY_MEMORY_S + 1)
    assert len(guard) == 1


def test_signed_cases_are_signed_when_they_run(client, monkeypatch):
    # The suite may take longer than the replay window to reach a test (CI on a
    # slow machine did): signed at import, the generic case then failed with 401.
    from reconciler.webhooks import REPLAY_WINDOW_S
    later = time.time() + 2 * REPLAY_WINDOW_S
    monkeypatch.setattr(time, "time", lambda: later)
    _, path, headers, body, expected = next(v for v in VALID if v[0] == "generic")
    headers = headers() if callable(headers) else headers
    assert client.post(path, content=body, headers=headers).status_code == 202
    assert client.service.nudged == [expected]


# --- the listener's limits (issue 19: "nothing from outside can stop the service") ---

from reconciler.registry.credentials import read_secret  # noqa: E402
from reconciler.service.limits import ListenerLimits  # noqa: E402  (kept beside the tests that use it)


def app_for(client, **limits):
    """The test app again, with other listener limits."""
    secrets = {p: SECRET for p in ("distribution", "github", "generic")}
    return build_app(client.service, secrets, ListenerLimits(**limits))


class Stalled:
    """A request body that sends `first`, then nothing until released (a client gone quiet)."""

    def __init__(self, first: bytes = b'{"package": ') -> None:
        self.first = first
        self.released = asyncio.Event()
        self.quiet = False  # the app has taken the first chunk and waits for more

    async def __aiter__(self):
        yield self.first
        self.quiet = True
        await self.released.wait()


async def until(predicate, what: str, timeout: float = 5.0) -> None:
    """Poll `predicate` on the event loop until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def run_requests(app, scenario):
    """Run `scenario(client)` against the app in one event loop, at most 10 s."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hooks") as c:
            return await asyncio.wait_for(scenario(c), 10)
    return asyncio.run(go())


def test_a_body_that_stops_arriving_is_answered_408_and_the_connection_closed(client):
    app = app_for(client, body_timeout_s=0.3)

    async def scenario(c):
        return await c.post("/hooks/github", content=Stalled(), headers={"X-Hub-Signature-256": well_formed_signature()})

    response = run_requests(app, scenario)
    assert response.status_code == 408, response.text
    assert response.headers["connection"] == "close"
    assert "did not arrive within 0.3 s" in response.json()["error"]
    assert client.service.nudged == []


def test_unverified_body_reads_beyond_the_cap_get_503_at_once_and_token_hooks_still_pass(client):
    app = app_for(client, unverified_reads=2, body_timeout_s=8)
    forged = {"X-Hub-Signature-256": well_formed_signature()}

    async def scenario(c):
        stalled = [Stalled(), Stalled()]
        held = [asyncio.ensure_future(c.post("/hooks/github", content=body, headers=forged)) for body in stalled]
        await until(lambda: all(body.quiet for body in stalled), "both stalled bodies to be read from")
        third = await c.post("/hooks/github", content=GITHUB_BODY, headers=github_headers(GITHUB_BODY, "cap-1"))
        token = await c.post("/hooks/distribution", content=envelope("team/app"),
                             headers={"Authorization": f"Bearer {SECRET}"})
        for body in stalled:
            body.released.set()
        return third, token, await asyncio.gather(*held)

    third, token, held = run_requests(app, scenario)
    assert third.status_code == 503 and "unverified webhook bodies" in third.json()["error"]
    assert third.headers["connection"] == "close"
    assert token.status_code == 202  # its sender was verified by the header: no unverified slot needed
    assert [r.status_code for r in held] == [401, 401]  # released: read to the end, then refused (forged)
    assert client.service.nudged == [[1]]


def test_unverified_bodies_over_the_byte_budget_are_refused_before_they_are_read(client):
    app = AppClient(app_for(client, unverified_bytes=256 << 10))
    body = RecordingBody(total=1 << 20, chunk=64 << 10)
    response = app.post("/hooks/github", content=body, headers={"X-Hub-Signature-256": well_formed_signature()})
    assert response.status_code == 503, response.text
    assert body.sent <= (256 << 10) + (64 << 10), f"{body.sent} bytes read of a stranger's body"
    # A verified sender is not held to the strangers' share...
    body = RecordingBody(total=1 << 20, chunk=64 << 10)
    response = app.post("/hooks/distribution", content=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 400 and body.sent == 1 << 20  # read whole: not JSON
    # ...only to the total.
    app = AppClient(app_for(client, buffered_bytes=256 << 10))
    body = RecordingBody(total=1 << 20, chunk=64 << 10)
    response = app.post("/hooks/distribution", content=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 503 and body.sent < 1 << 20


@pytest.mark.parametrize("path", ["/status", "/"])
def test_pages_do_not_block_the_event_loop(client, path):
    # A status that takes long (the state database busy recording a cycle) must
    # not hold up webhooks and health checks: the page runs in a worker thread.
    import threading
    release = threading.Event()
    entered, waited = [], []

    def slow_status():
        entered.append(True)
        waited.append(release.wait(5))  # True: /healthz answered while this waited
        return {"images": []}

    client.service.status = slow_status
    app = build_app(client.service, {"distribution": SECRET})

    async def scenario(c):
        page = asyncio.ensure_future(c.get(path))
        await until(lambda: entered, "the page handler to ask for the status")
        health = await c.get("/healthz")
        release.set()
        return health, await page

    health, page = run_requests(app, scenario)
    assert health.status_code == 200 and page.status_code == 200
    assert waited == [True], "the status handler blocked the event loop until it gave up waiting"


def test_a_hooks_push_time_is_kept_without_blocking_the_event_loop(client):
    # The push time goes to the state database, busy while a cycle records: the
    # hook waits for it in a worker thread, and /healthz answers meanwhile.
    import threading
    release = threading.Event()
    entered, waited = [], []

    def slow_hook(hints, entries, received):
        entered.append([h.repository for h in hints])
        waited.append(release.wait(5))

    client.service.delivery.hook = slow_hook
    app = build_app(client.service, {"distribution": SECRET})

    async def scenario(c):
        hook = asyncio.ensure_future(c.post("/hooks/distribution", content=envelope("team/app"),
                                            headers={"Authorization": f"Bearer {SECRET}"}))
        await until(lambda: entered, "the hook to hand its push time over")
        health = await c.get("/healthz")
        release.set()
        return health, await hook

    health, hook = run_requests(app, scenario)
    assert health.status_code == 200 and hook.status_code == 202
    assert entered == [["team/app"]] and waited == [True], "the hook blocked the event loop"


def test_hook_secrets_are_read_as_registry_passwords_are(tmp_path):
    # One reader: only the file's trailing line break is dropped, as for a registry password.
    (tmp_path / "tok").write_text(f" {SECRET} \r\n")
    secrets = load_hook_secrets({"github": WebhookConfig("github", token_file=str(tmp_path / "tok"))}, "w")
    assert secrets == {"github": read_secret(owner="w", password_file=str(tmp_path / "tok"))} == \
        {"github": f" {SECRET} "}
    with pytest.raises(ConfigError, match=r"^w: webhooks.github.token_file: cannot read .*missing"):
        load_hook_secrets({"github": WebhookConfig("github", token_file=str(tmp_path / "missing"))}, "w")


@contextlib.contextmanager
def listening(app, limits):
    """The app on a real uvicorn with the service's protocol (serve.py), on a
    free loopback port, in a thread; yields (server, address)."""
    import socket
    import threading

    import uvicorn

    from reconciler.service.listener import _protocol_class
    from tests.registry_server import wait_until

    listener = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=_protocol_class(limits), lifespan="off", log_level="warning",
                            timeout_keep_alive=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10, what="the server to start")
        yield server, listener.getsockname()
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def test_a_client_that_never_reads_its_answer_is_dropped_after_the_head_timeout(client):
    # A big status page asked for by a client that never reads it: the answer
    # waits in the connection's buffer. uvicorn's keep-alive timer closes such a
    # connection gracefully, i.e. after the buffer is sent: never. The head
    # deadline (no next request in time) drops it, buffer and all.
    import socket

    from tests.registry_server import wait_until

    client.service.status = lambda: {"images": ["x" * 1000] * 8_000}  # 8 MB of JSON
    limits = ListenerLimits(head_timeout_s=1.0)
    with listening(build_app(client.service, {}, limits), limits) as (server, address), socket.socket() as reader:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(address)
        reader.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: server.server_state.total_requests == 1, timeout=10, what="the answer to be written")
        wait_until(lambda: not server.server_state.connections, timeout=5,
                   what="the connection of a client that does not read to be dropped")


def test_connections_over_the_cap_are_closed_at_once(client):
    import socket

    from tests.registry_server import wait_until

    limits = ListenerLimits(connections=3, head_timeout_s=60)
    with listening(build_app(client.service, {}, limits), limits) as (server, address):
        quiet = [socket.create_connection(address, timeout=5) for _ in range(6)]
        try:
            wait_until(lambda: len(server.server_state.connections) == 3, timeout=5, what="3 connections kept")
            closed: set = set()

            def count_closed() -> int:
                # The refused ones' close can come after the kept ones are counted: poll.
                for i, sock in enumerate(quiet):
                    sock.setblocking(False)
                    try:
                        if sock.recv(1) == b"":
                            closed.add(i)
                    except BlockingIOError:
                        pass  # still open: nothing sent, nothing to read
                    except ConnectionResetError:
                        closed.add(i)
                return len(closed)

            wait_until(lambda: count_closed() >= 3, timeout=5, what="the 3 over the cap closed")
            assert count_closed() == 3 and len(server.server_state.connections) == 3
        finally:
            for sock in quiet:
                sock.close()


def test_a_hook_matches_entries_a_list_added_after_the_start(client):
    """The service's watchlist grows when a [[list]] file is read again at a
    cycle: the hooks match the entries of now, not those of the start."""
    images = client.service.watchlist.images
    added = replace(images[0], index=len(images) + 1, source=ImageReference("registry.example.org", "team/new"),
                    dest="team/new", origin="docker_images.txt:3")
    client.service.watchlist = replace(client.service.watchlist, images=images + (added,))
    response = client.post("/hooks/distribution", content=envelope("team/new"),
                           headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 202
    assert client.service.nudged == [[len(images) + 1]]


# --- push times and tags in the payloads -------------------------------------
# (distribution, dockerhub and harbor: tests/test_delivery.py)

def test_quay_repo_push_gives_one_hint_per_updated_tag_and_no_time():
    # https://docs.quay.io/guides/notifications.html, "Repository Push"; older Quay sent an object tag -> digest.
    body = {"name": "repository", "repository": "org/thing", "namespace": "org", "docker_url": "quay.io/org/thing",
            "homepage": "https://quay.io/repository/org/thing", "updated_tags": ["1", "latest", "1"]}
    hints = _PARSERS["quay"](body)
    assert [(h.repository, h.registry, h.tag, h.pushed_at) for h in hints] == [
        ("org/thing", "quay.io", "1", None), ("org/thing", "quay.io", "latest", None)]
    (old,) = _PARSERS["quay"](dict(body, updated_tags={"2": "b750fe79269d2ec9a3c593ef05b4332b1d1a02a6"}))
    assert old.tag == "2"
    (many,) = _PARSERS["quay"](dict(body, updated_tags=[str(n) for n in range(MAX_HINT_TAGS + 1)]))
    assert many.tag is None  # one hint for the repository, not a hundred


def test_gitlab_registry_notifications_carry_push_time_and_tag_project_hooks_none():
    # GitLab's registry sends the distribution registry's envelope.
    events = {"events": [{"id": "a582a0f3-e620-43e6-8e98-ff850fc9d984", "timestamp": "2023-01-25T14:45:54.17327+11:00",
                          "action": "push", "target": {
                              "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528,
                              "digest": "sha256:" + "af" * 32, "repository": "group/project/sub", "tag": "1"}}]}
    (hint,) = _PARSERS["gitlab"](events)
    assert (hint.repository, hint.tag) == ("group/project/sub", "1")
    assert hint.pushed_at == pytest.approx(1674618354.17327, abs=1e-5)  # 03:45:54.17327 UTC
    (project,) = _PARSERS["gitlab"]({"object_kind": "pipeline", "project": {"path_with_namespace": "Group/Project"}})
    assert (project.repository, project.tag, project.pushed_at) == ("group/project", None, None)


GITHUB_PACKAGE = {"action": "updated", "package": {
    "id": 1733456, "name": "Tool", "namespace": "octo", "ecosystem": "CONTAINER", "package_type": "CONTAINER",
    "created_at": "2022-05-26T16:06:54Z", "updated_at": "2022-05-26T16:06:54Z", "owner": {"login": "octo"},
    "package_version": {
        "id": 21547813, "version": "sha256:" + "3" * 64, "name": "sha256:" + "3" * 64,
        "created_at": "2026-12-02T09:00:01Z", "updated_at": "2026-12-02T09:00:05.5Z",
        "container_metadata": {"tag": {"name": "1", "digest": "sha256:" + "3" * 64}, "labels": {}, "manifest": {}},
        "package_url": "ghcr.io/octo/tool:1"}}}


def test_github_package_event_gives_the_version_time_and_tag():
    # https://docs.github.com/en/webhooks/webhook-events-and-payloads#package
    (hint,) = _PARSERS["github"](GITHUB_PACKAGE)
    assert (hint.repository, hint.registry, hint.tag) == ("octo/tool", "ghcr.io", "1")
    assert hint.pushed_at == 1796202005.5  # updated_at: a version tagged again is "updated"
    version = dict(GITHUB_PACKAGE["package"]["package_version"], updated_at=None, container_metadata={"tag": {"name": ""}})
    (published,) = _PARSERS["github"]({"action": "published", "registry_package": dict(
        GITHUB_PACKAGE["package"], package_version=version)})
    assert (published.pushed_at, published.tag) == (1796202001.0, None)  # created_at; an untagged platform manifest


def test_generic_hook_takes_an_optional_push_time_and_tag():
    (stamp,) = _PARSERS["generic"]({"image": "registry.example.org/team/app:1", "pushed_at": 1796202005})
    assert (stamp.repository, stamp.registry, stamp.tag, stamp.pushed_at) == (
        "team/app", "registry.example.org", "1", 1796202005.0)
    (iso,) = _PARSERS["generic"]({"repository": "team/app", "tag": "2", "pushed_at": "2026-12-02T10:00:05.25+01:00"})
    assert (iso.tag, iso.pushed_at) == ("2", 1796202005.25)
    (plain,) = _PARSERS["generic"]({"image": "registry.example.org/team/app@sha256:" + "4" * 64})
    assert (plain.repository, plain.tag, plain.pushed_at) == ("team/app", None, None)
    (lower,) = _PARSERS["generic"]({"repository": "team/app", "pushed_at": "2026-12-02t09:00:05z"})
    assert lower.pushed_at == 1796202005.0  # RFC 3339 allows lower case
    # What cannot be read is ignored, with a warning: the hook still polls (a hint, never trusted).
    for bad in ({"pushed_at": "yesterday"}, {"pushed_at": True}, {"pushed_at": -1}, {"tag": ""}, {"tag": 3},
                {"tag": "\ud800"}, {"tag": "a/b"}, {"pushed_at": "0001-01-01T00:00:00+00:01"},
                {"pushed_at": "9999-12-31T23:59:59Z"}, {"pushed_at": "2026-12-02T10:00:05"}):
        (hint,) = _PARSERS["generic"](dict({"repository": "team/app"}, **bad))
        assert (hint.repository, hint.tag, hint.pushed_at) == ("team/app", None, None), bad


def test_a_generic_hook_with_an_unreadable_push_time_still_polls(client, caplog):
    response = client.post("/hooks/generic", content=BAD_TIME_BODY, headers=generic_headers(BAD_TIME_BODY))
    assert response.status_code == 202
    assert client.service.nudged == [[1]]
    assert "pushed_at 'yesterday' is neither an RFC 3339 time" in caplog.text


def test_a_hook_whose_push_time_cannot_be_recorded_still_polls(client, caplog, monkeypatch):
    def refuse(*args):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")  # what SQLite says of one

    monkeypatch.setattr(client.service.delivery, "hook", refuse)
    body = json.dumps({"repository": "team/app", "pushed_at": 1796202005}).encode()
    response = client.post("/hooks/generic", content=body, headers=generic_headers(body))
    assert response.status_code == 202
    assert client.service.nudged == [[1]]
    assert "webhook generic: cannot record its push times" in caplog.text


@pytest.mark.parametrize("bogus", ["a/b", "-lead", "x" * 129, "t\u00e9", "v1 v2"])
def test_a_tag_that_is_no_tag_name_makes_a_repository_hint_in_every_provider(bogus, caplog):
    """Nothing is matched or recorded under a string that cannot be a tag: the
    hint names the whole repository, so the poll still happens (and says why)."""
    distribution = {"events": [{"action": "push", "timestamp": "2026-12-02T10:00:05Z", "target": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "team/app", "tag": bogus}}]}
    version = dict(GITHUB_PACKAGE["package"]["package_version"], container_metadata={"tag": {"name": bogus}})
    bodies = {
        "distribution": distribution,
        "gitlab": distribution,
        "dockerhub": {"repository": {"repo_name": "team/app"}, "push_data": {"tag": bogus, "pushed_at": 1796202005}},
        "quay": {"repository": "team/app", "docker_url": "quay.io/team/app", "updated_tags": [bogus]},
        "github": {"action": "published", "package": dict(GITHUB_PACKAGE["package"], package_version=version)},
        "generic": {"repository": "team/app", "tag": bogus},
    }
    for provider, body in bodies.items():
        caplog.clear()
        (hint,) = _PARSERS[provider](body)
        assert hint.tag is None, provider
        assert f"webhook {provider}: tag" in caplog.text and "is not a tag name" in caplog.text, provider
    (image,) = _PARSERS["generic"]({"image": f"registry.example.org/team/app:{bogus}"})
    assert image.tag is None
