"""Hosts a registry names (token realms, redirect targets) judged as addresses,
and token requests that only ever ask to pull (issue 19).

A hostile registry names a token realm on the service's own network in a
spelling the resolver accepts but `ipaddress` does not (`127.1`,
`2130706433`, `0x7f000001`: inet_aton(3), "the parts ... may be given in
decimal, octal or hexadecimal"; a missing part fills the last one), or by a
name that resolves there. Before, those realms got the registry's Basic
credentials; each test below sets up the token service so that it would
have answered, and asserts it was never asked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import pytest

from reconciler.errors import AuthenticationError, HostNotFoundError, RegistryError
from reconciler.registry.addresses import HostRule, canonical, is_internal, parse_address
from reconciler.registry.auth import pull_scopes
from reconciler.registry.client import RegistryClient, RetryPolicy
from reconciler.registry.credentials import Credentials
from tests.fake_registry import BASE, BLOB, BLOB_URL, LAYER, REG
from tests.offline_dns import offline_dns  # noqa: F401 (a fixture)

# Made-up host names are judged by what they resolve to: never by a DNS query.
pytestmark = pytest.mark.usefixtures("offline_dns")

SECRET = "s3cr3t-password"
MANIFEST_URL = f"{BASE}/library/app/manifests/latest"
DIGEST = "sha256:" + "a" * 64

# Every spelling of 127.0.0.1 (or another internal address) a resolver or
# httpx takes, as the host of a URL.
INTERNAL_SPELLINGS = [
    ("127.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ("[::ffff:7f00:1]", "127.0.0.1"),
    ("[::127.0.0.1]", "::7f00:1"),
    ("[::1]", "::1"),
    ("0", "0.0.0.0"),
    ("0.0.0.0", "0.0.0.0"),
    ("[::]", "::"),
    ("[fe80::1%25eth0]", "fe80::1"),
    ("169.254.169.254", "169.254.169.254"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("10.1", "10.0.0.1"),
    ("100.64.0.1", "100.64.0.1"),
    ("[2002:7f00:1::]", "2002:7f00:1::"),  # 6to4 of 127.0.0.1
    ("[64:ff9b::a00:1]", "64:ff9b::a00:1"),  # NAT64 of 10.0.0.1
]


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_client(registry: str = REG, **kw) -> RegistryClient:
    time_ = FakeTime()
    return RegistryClient(registry, sleep=time_.sleep, clock=time_.clock,
                          retry=RetryPolicy(attempts=2, base_delay=0.01), **kw)


@pytest.fixture
def names(monkeypatch) -> Dict[str, List[str]]:
    """Host names the resolver answers with the given addresses (others as usual)."""
    table: Dict[str, List[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kw):  # type: ignore[no-untyped-def]
        if host in table:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
                    for a in table[host]]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


# -- spellings ---------------------------------------------------------------------------


@pytest.mark.parametrize("host,address", INTERNAL_SPELLINGS)
def test_every_spelling_reads_as_its_address_and_is_internal(host, address):
    parsed = canonical(parse_address(urlsplit(f"http://{host}/").hostname or ""))
    assert parsed == ipaddress.ip_address(address)
    assert is_internal(parsed)


@pytest.mark.parametrize("host", ["auth.docker.io", "cafe", "1.2.3.4.5", "0x", "ghcr.io", ""])
def test_names_are_not_addresses(host):
    assert parse_address(host) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_not_internal(address):
    assert not is_internal(ipaddress.ip_address(address))


def test_names_under_localhost_are_loopback_without_a_lookup():
    from reconciler.registry.addresses import resolve_host

    assert resolve_host("auth.LOCALHOST.") == (ipaddress.ip_address("127.0.0.1"),)
    assert HostRule("registry.example.org").foreign_internal("https://auth.localhost/t")


def test_the_registrys_own_host_is_compared_as_an_address():
    rule = HostRule("127.0.0.1:5000")
    assert rule.foreign_internal("http://127.1:5001/token") == ()  # the same host, another port
    assert rule.foreign_internal("http://0x7f000002:5001/token") == (ipaddress.ip_address("127.0.0.2"),)
    assert HostRule("reg:5000", ["127.0.0.1:5001"]).foreign_internal("http://2130706433:5001/t") == ()
    assert HostRule("reg:5000", ["127.0.0.1:5001"]).foreign_internal("http://2130706433:5002/t") != ()


# -- token realms: pytest-httpx ----------------------------------------------------------


def _challenge_with_realm(httpx_mock, realm: str, scope: str = "repository:library/app:pull") -> None:
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", status_code=401,
                            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="{REG}",scope="{scope}"'})
    # The token service would answer: before, it was asked, with the credentials.
    httpx_mock.add_response(url=re.compile(re.escape(realm) + r"(\?.*)?$"), json={"token": "t1"}, is_optional=True)
    httpx_mock.add_response(url=MANIFEST_URL, method="HEAD", headers={"Docker-Content-Digest": DIGEST},
                            is_optional=True)


def _realm_requests(httpx_mock) -> list:
    """The requests that went to the token realm (anywhere but the registry)."""
    return [r for r in httpx_mock.get_requests() if r.url.host != REG]


# httpx refuses a dotted quad with a leading zero (it reads it as decimal): never connected to.
@pytest.mark.parametrize("host,address", [s for s in INTERNAL_SPELLINGS if s[0] != "0177.0.0.1"])
def test_a_realm_on_an_internal_address_gets_no_credentials_in_any_spelling(httpx_mock, host, address):
    realm = f"https://{host}:5001/token"
    _challenge_with_realm(httpx_mock, realm)
    with make_client(credentials=Credentials("robot", SECRET)) as c:
        with pytest.raises(AuthenticationError) as info:
            c.head_manifest("library/app", "latest")
    assert not _realm_requests(httpx_mock)
    message = str(info.value)
    assert "private address other than the registry" in message and "no credentials were sent" in message
    assert "token_realms = [" in message and SECRET not in message


def test_a_realm_whose_name_resolves_inward_gets_no_credentials(httpx_mock, names):
    names["auth.evil.example"] = ["93.184.216.34", "10.9.8.7"]  # one internal address is enough
    realm = "https://auth.evil.example/token"
    _challenge_with_realm(httpx_mock, realm)
    with make_client(credentials=Credentials("robot", SECRET)) as c:
        with pytest.raises(AuthenticationError, match=r"auth\.evil\.example.*10\.9\.8\.7.*token_realms"):
            c.head_manifest("library/app", "latest")
    assert not _realm_requests(httpx_mock)


def test_a_realm_whose_name_resolves_outward_is_asked(httpx_mock, names):
    names["auth.example.org"] = ["93.184.216.34"]
    realm = "https://auth.example.org/token"
    _challenge_with_realm(httpx_mock, realm)
    with make_client(credentials=Credentials("robot", SECRET)) as c:
        assert c.head_manifest("library/app", "latest").digest == DIGEST
    assert len(_realm_requests(httpx_mock)) == 1


def test_a_realm_allowed_in_one_spelling_is_allowed_in_another(httpx_mock):
    realm = "https://2130706433:5001/token"
    _challenge_with_realm(httpx_mock, realm)
    with make_client(credentials=Credentials("robot", SECRET), private_realms=["127.0.0.1:5001"]) as c:
        assert c.head_manifest("library/app", "latest").digest == DIGEST


# -- scopes ------------------------------------------------------------------------------


@pytest.mark.parametrize("challenge_scope,asked", [
    ("repository:library/app:pull,push", ["repository:library/app:pull"]),
    ("repository:library/app:*", ["repository:library/app:pull"]),
    ("repository:library/app:push", ["repository:library/app:pull"]),  # the request's own scope stays
    ("registry:catalog:*", ["repository:library/app:pull"]),
    ("repository:library/app:pull repository:other/secret:push,delete registry:catalog:*",
     ["repository:library/app:pull"]),
    ("repository:other/repo:*", ["repository:library/app:pull", "repository:other/repo:pull"]),
])
def test_token_requests_ask_only_to_pull(httpx_mock, challenge_scope, asked):
    realm = "https://auth.example.org/token"
    _challenge_with_realm(httpx_mock, realm, challenge_scope)
    with make_client(credentials=Credentials("robot", SECRET)) as c:
        c.head_manifest("library/app", "latest")
    (token_request,) = _realm_requests(httpx_mock)
    assert sorted(parse_qs(token_request.url.query.decode())["scope"]) == asked


def test_pull_scopes_keeps_pull_of_repositories_only():
    assert pull_scopes(["repository:a/b:pull,push", "repository:a/b:pull", "registry:catalog:*",
                        "repository:c:delete", "repository(plugin):d:pull", "repository:e:x:pull",
                        "repository:F:pull", "repository:g: pull"]) == ("repository:a/b:pull", "repository:g:pull")
    assert pull_scopes(["registry:catalog:*"]) == ()


# -- redirects ---------------------------------------------------------------------------


def _fetch(c: RegistryClient) -> bytes:
    import io
    sink = io.BytesIO()
    c.fetch_blob("library/app", LAYER, sink)
    return sink.getvalue()


@pytest.mark.parametrize("target", ["https://127.1:8080/admin", "https://0xa9fea9fe/latest/meta-data/",
                                    "https://storage.evil.example/blob"])
def test_a_public_registry_cannot_redirect_inward(httpx_mock, names, target):
    names["storage.evil.example"] = ["192.168.1.1"]
    httpx_mock.add_response(url=BLOB_URL, status_code=307, headers={"Location": target})
    httpx_mock.add_response(url=target, content=BLOB, is_optional=True)
    with make_client() as c:
        with pytest.raises(RegistryError, match=r"refusing the redirect .* a private address"):
            _fetch(c)
    assert [r.url.host for r in httpx_mock.get_requests()] == [REG]


def test_an_internal_registry_may_redirect_to_its_internal_storage(httpx_mock, names):
    names[REG] = ["10.0.0.4"]
    names["minio.internal"] = ["10.0.0.9"]
    target = "https://minio.internal:9000/blob?sig=1"
    httpx_mock.add_response(url=BLOB_URL, status_code=307, headers={"Location": target})
    httpx_mock.add_response(url=target, content=BLOB)
    with make_client() as c:
        assert _fetch(c) == BLOB


def test_a_public_registry_may_redirect_to_allowed_internal_storage(httpx_mock, names):
    names["minio.internal"] = ["10.0.0.9"]
    target = "https://minio.internal:9000/blob?sig=1"
    httpx_mock.add_response(url=BLOB_URL, status_code=307, headers={"Location": target})
    httpx_mock.add_response(url=target, content=BLOB)
    with make_client(private_realms=["minio.internal"]) as c:
        assert _fetch(c) == BLOB


# -- end to end: real sockets and the real resolver --------------------------------------


class _Recorder:
    """An HTTP server on `host` that answers every request with `answer` and
    records (path, Authorization) of each."""

    def __init__(self, host: str, answer) -> None:  # type: ignore[no-untyped-def]
        self.seen: List[Tuple[str, Optional[str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def token_service():
    server = _Recorder("127.0.0.2", lambda path: (200, {"Content-Type": "application/json"}, b'{"token": "t1"}'))
    yield server
    server.close()


@pytest.mark.parametrize("spelling", ["0x7f000002", "2130706434", "127.2", "0177.0.0.2", "127.0.2", "localhost"])
def test_end_to_end_no_credentials_reach_another_loopback_token_service(token_service, spelling):
    # The registry on 127.0.0.1 names a token service on 127.0.0.2 (or, for
    # `localhost`, on 127.0.0.1 while the registry is reached as 127.0.0.2).
    registry_host = "127.0.0.1"
    if spelling == "localhost":
        registry_host, realm_host = "127.0.0.2", "localhost"
        token_service.close()
        tokens = _Recorder("127.0.0.1", lambda path: (200, {"Content-Type": "application/json"}, b'{"token": "t"}'))
    else:
        realm_host, tokens = spelling, token_service
    realm = f"http://{realm_host}:{tokens.port}/token"
    registry = _Recorder(registry_host, lambda path: (
        401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}, b""))
    try:
        with make_client(f"{registry_host}:{registry.port}", insecure=True,
                         credentials=Credentials("robot", SECRET)) as c:
            with pytest.raises(AuthenticationError, match="private address other than the registry"):
                c.head_manifest("library/app", "latest")
        assert registry.seen and tokens.seen == []
    finally:
        registry.close()
        if tokens is not token_service:
            tokens.close()


def test_dry_run_sends_no_credentials_to_a_realm_on_another_loopback_address(token_service, tmp_path, monkeypatch,
                                                                             capsys):
    from reconciler.cli import main

    realm = f"http://0x7f000002:{token_service.port}/token"
    registry = _Recorder("127.0.0.1", lambda path: (
        401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}, b""))
    host = f"127.0.0.1:{registry.port}"
    monkeypatch.setenv("RECONCILER_TEST_PASSWORD", SECRET)
    watchlist = tmp_path / "watchlist.toml"
    watchlist.write_text(
        f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\n'
        f'username = "robot"\npassword_env = "RECONCILER_TEST_PASSWORD"\n'
        f'[[image]]\nsource = "{host}/team/app"\ntags = ["latest"]\n')
    try:
        assert main(["--dry-run", "--watchlist", str(watchlist)]) == 1
    finally:
        registry.close()
    assert registry.seen and token_service.seen == []  # before: GET /token with Basic robot's password
    out = capsys.readouterr().out
    assert f"{host}/team/app:latest" in out and "private address other than the registry" in out
    assert SECRET not in out


@pytest.mark.parametrize("url,hint", [
    ("https://0x7f000001:5001/token", "127.0.0.1:5001"),
    ("https://[::ffff:10.0.0.5]/token", "10.0.0.5"),
    ("https://[fe80::1%25eth0]:8443/t", "[fe80::1]:8443"),
    ("https://Auth.Internal/token", "auth.internal"),
    ("https://auth\u00e9.internal/token", "auth\\xe9.internal"),
])
def test_the_watchlist_hint_names_the_host_in_a_canonical_printable_spelling(url, hint):
    from reconciler.registry.addresses import host_port

    assert host_port(url) == hint


@pytest.mark.parametrize("first", [["93.184.216.34"], None], ids=["public-first", "no-answer-first"])
def test_a_realm_name_rebinding_inward_after_the_judgement_gets_no_credentials(token_service, monkeypatch, first):
    # DNS rebinding: the realm's name answers a public address (or nothing) when
    # judged, then 127.0.0.2 (where a token service listens) when the connection
    # is made. The connection goes to what was judged; no second lookup is made.
    answers = iter([first])
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection
    lookups: List[str] = []
    attempts: List[Tuple[str, int]] = []

    def getaddrinfo(host, port, *args, **kw):  # type: ignore[no-untyped-def]
        if host != "rebind.example":
            return real_getaddrinfo(host, port, *args, **kw)
        lookups.append(host)
        answer = next(answers, ["127.0.0.2"])
        if answer is None:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0)) for a in answer]

    def create_connection(address, *args, **kw):  # type: ignore[no-untyped-def]
        # As the real one (resolving with the getaddrinfo above), but traffic stays on loopback.
        host, port = address
        for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            attempts.append((info[4][0], port))
            if ipaddress.ip_address(info[4][0]).is_loopback:
                return real_connect((info[4][0], port), *args, **kw)
        raise ConnectionRefusedError(111, "Connection refused (not loopback: refused by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    realm = f"http://rebind.example:{token_service.port}/token"
    registry = _Recorder("127.0.0.1", lambda path: (
        401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}, b""))
    try:
        with make_client(f"127.0.0.1:{registry.port}", insecure=True, credentials=Credentials("robot", SECRET)) as c:
            with pytest.raises(RegistryError) as info:
                c.head_manifest("library/app", "latest")
    finally:
        registry.close()
    assert token_service.seen == []  # before: GET /token with robot's password, on 127.0.0.2
    assert lookups  # judged by its answer
    token_attempts = {a for a in attempts if a[1] == token_service.port}
    if first is None:
        # The lookup failed (retried: judged again, then refused as inward); never connected.
        assert isinstance(info.value, (HostNotFoundError, AuthenticationError))
        assert token_attempts == set()
    else:
        assert token_attempts == {("93.184.216.34", token_service.port)}


def test_a_judged_host_is_pinned_for_a_minute_and_a_refused_one_never(names):
    names["cdn.example"] = ["93.184.216.34"]
    names["inside.example"] = ["10.0.0.7"]
    now = [0.0]
    rule = HostRule("registry.example.org", clock=lambda: now[0])
    assert rule.foreign_internal("https://CDN.example/blob") == ()
    assert rule.pinned("cdn.example") == (ipaddress.ip_address("93.184.216.34"),)
    assert rule.foreign_internal("https://inside.example/x") and rule.pinned("inside.example") is None
    now[0] += 61
    assert rule.pinned("cdn.example") is None
