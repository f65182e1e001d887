"""Webhook verification (webhooks.py): anyone who can reach the listener
chooses the URL, the headers and the body."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Dict, List, Optional, Tuple

from hypothesis import example, given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from reconciler.webhooks import (
    MAX_BODY_BYTES,
    PROVIDERS,
    CheckedHeaders,
    HookRejected,
    ReplayGuard,
    RepositoryHint,
    matching_entries,
    verify_body,
    verify_headers,
)
from tests.fuzz.budget import budget

NOW = 1_700_000_000.0
SECRET = "s3cret token"
ENTRIES = [(1, "ghcr.io", "org/app"), (2, "docker.io", "library/alpine"), (3, "registry.example.org", "a/b/c")]
HEADER_NAMES = ["authorization", "x-gitlab-token", "x-hub-signature-256", "x-github-delivery",
                "x-reconciler-timestamp", "x-reconciler-signature", "content-type"]
# Header values as Starlette gives them: latin-1 text.
latin1 = st.text(st.characters(max_codepoint=0xFF), max_size=80)
header_values = st.one_of(
    latin1,
    st.sampled_from([f"Bearer {SECRET}", SECRET, "sha256=" + "0" * 64, "sha256=" + "A" * 64, str(int(NOW)),
                     f"{NOW:.3f}", "1e9", "nan", "inf", "-1", "\xb2", "0" * 13, "a" * 65, "1-2-3"]),
)
headers_strategy = st.dictionaries(st.one_of(st.sampled_from(HEADER_NAMES), st.text(st.sampled_from("abx-"), min_size=1, max_size=8)),
                                   header_values, max_size=5)
providers = st.one_of(st.sampled_from(PROVIDERS), st.text(max_size=10))
secrets = st.one_of(st.just(SECRET), st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))


def starlette_headers(headers: Dict[str, str]) -> Headers:
    return Headers(raw=[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()])


# Bodies: arbitrary bytes, arbitrary JSON and JSON shaped like each provider's payload.
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                      st.sampled_from(["push", "org/app", "library/alpine", "ghcr.io/org/app:v1", "a/b", "",
                                       "application/vnd.oci.image.manifest.v1+json", "ghcr.io", "/", "@", ":"]))
KEYS = ["events", "action", "target", "repository", "mediaType", "tag", "repo_name", "docker_url", "project",
        "path_with_namespace", "event_data", "data", "repo_full_name", "package", "registry_package",
        "namespace", "owner", "login", "name", "image"]
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), inner,
                                                 max_size=4)), max_leaves=25)
SHAPED = [
    {"events": [{"action": "push", "target": {"repository": "org/app", "mediaType": "application/vnd.oci.image.manifest.v1+json"}}]},
    {"repository": {"repo_name": "alpine"}},
    {"repository": "org/app", "docker_url": "quay.io/org/app"},
    {"project": {"path_with_namespace": "Group/Sub"}},
    {"event_data": {"repository": {"repo_full_name": "a/b"}}},
    {"package": {"namespace": "Org", "name": "App"}},
    {"image": "ghcr.io/org/app:v1"},
]
DEEP = b"[" * 50_000 + b"]" * 50_000
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(SHAPED).map(lambda v: json.dumps(v).encode()),
    st.builds(lambda shaped, key, value: json.dumps({**shaped, key: value}).encode(),
              st.sampled_from(SHAPED), st.sampled_from(KEYS), json_values),
    st.integers(0, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)


def check_hints(hints: List[RepositoryHint]) -> None:
    assert isinstance(hints, list) and all(isinstance(h, RepositoryHint) for h in hints)
    assert matching_entries(hints, ENTRIES) <= {index for index, _, _ in ENTRIES}


@given(providers, secrets, headers_strategy, st.none() | latin1)
@budget(400)
@example("generic", SECRET, {"x-reconciler-signature": "sha256=" + "0" * 64, "x-reconciler-timestamp": "9" * 12}, None)
@example("github", SECRET, {"x-hub-signature-256": "sha256=" + "0" * 64, "x-github-delivery": ""}, None)
@example("distribution", "é", {"authorization": "Bearer \xe9"}, None)
def test_any_request_headers_are_accepted_or_rejected(provider: str, secret: str, headers: Dict[str, str],
                                                      path_token: Optional[str]) -> None:
    try:
        checked = verify_headers(provider, secret, starlette_headers(headers), path_token=path_token, now=NOW)
    except HookRejected as exc:
        assert exc.status in (401, 404)
        return
    assert isinstance(checked, CheckedHeaders) and checked.provider == provider


@given(providers, headers_strategy, st.none() | st.just(SECRET), bodies)
@budget(300)
def test_any_request_is_hints_or_a_rejection(provider: str, headers: Dict[str, str], path_token: Optional[str],
                                             body: bytes) -> None:
    try:
        checked = verify_headers(provider, SECRET, starlette_headers(headers), path_token=path_token, now=NOW)
        check_hints(verify_body(checked, SECRET, body, now=NOW, replays=ReplayGuard()))
    except HookRejected as exc:
        assert exc.status in (400, 401, 404, 413)


def signed_request(provider: str, secret: str, body: bytes) -> Tuple[Dict[str, str], Optional[str]]:
    """Headers and URL token that authenticate `body` for `provider`."""
    if provider == "github":
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"x-hub-signature-256": "sha256=" + digest, "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}, None
    if provider == "generic":
        stamp = str(int(NOW))
        digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return {"x-reconciler-timestamp": stamp, "x-reconciler-signature": "sha256=" + digest}, None
    if provider == "distribution":
        return {"authorization": f"Bearer {secret}"}, None
    if provider == "gitlab":
        return {"x-gitlab-token": secret}, None
    if provider == "harbor":
        return {"authorization": secret}, None
    return {}, secret  # dockerhub, quay: the secret is the URL's last segment


# Secrets that can travel in a header: printable latin-1.
header_secrets = st.one_of(st.just(SECRET), st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                                                                  blacklist_characters="\x7f"), min_size=1, max_size=30))


@given(st.sampled_from(PROVIDERS), header_secrets, bodies)
@budget(400)
@example("generic", SECRET, DEEP)  # json's RecursionError escaped verify_body
@example("github", SECRET, b'{"package": {"namespace": "a", "name": "' + b"x" * 100 + b'"}}')
@example("quay", SECRET, b'{"repository": "a", "docker_url": "/"}')
def test_an_authenticated_body_is_accepted_or_refused_with_400(provider: str, secret: str, body: bytes) -> None:
    """Whoever holds the secret may send any body: it is understood or refused
    as a bad request (400), never a crash and never taken for a forgery (401)."""
    headers, path_token = signed_request(provider, secret, body)
    checked = verify_headers(provider, secret, starlette_headers(headers), path_token=path_token, now=NOW)
    try:
        hints = verify_body(checked, secret, body, now=NOW, replays=ReplayGuard())
    except HookRejected as exc:
        assert exc.status == (413 if len(body) > MAX_BODY_BYTES else 400), exc
        return
    check_hints(hints)


@given(st.sampled_from(["github", "generic"]), bodies, st.binary(min_size=1, max_size=8))
@budget(100)
def test_a_changed_body_is_refused_with_401(provider: str, body: bytes, suffix: bytes) -> None:
    headers, _ = signed_request(provider, SECRET, body)
    checked = verify_headers(provider, SECRET, starlette_headers(headers), now=NOW)
    try:
        verify_body(checked, SECRET, body + suffix, now=NOW)
    except HookRejected as exc:
        assert exc.status == 401
    else:
        raise AssertionError("a body that is not the signed one was accepted")
