"""Image references, WWW-Authenticate parsing, and credential sources."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from reconciler.errors import CredentialError, InvalidReferenceError
from reconciler.registry.challenge import MalformedChallengeError, parse_www_authenticate
from reconciler.registry.credentials import Credentials, CredentialStore, DockerConfig, read_secret
from reconciler.registry.reference import parse_reference


@pytest.mark.parametrize("text,registry,repository,tag,digest,api", [
    ("alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", None, "registry-1.docker.io"),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
    ("index.docker.io/bitnami/redis:7", "docker.io", "bitnami/redis", "7", None, "registry-1.docker.io"),
    ("ghcr.io/org/team/img:v1.2", "ghcr.io", "org/team/img", "v1.2", None, "ghcr.io"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost"),
    ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000", "a/b", "t", None, "127.0.0.1:5000"),
    ("reg:5000/a@sha256:" + "a" * 64, "reg:5000", "a", None, "sha256:" + "a" * 64, "reg:5000"),
    ("reg.io/a:t@sha256:" + "b" * 64, "reg.io", "a", "t", "sha256:" + "b" * 64, "reg.io"),
])
def test_references(text, registry, repository, tag, digest, api):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest, ref.api_host) == (registry, repository, tag, digest, api)


@pytest.mark.parametrize("text,hint", [
    ("", "empty"), ("Alpine", "lowercase"), ("a//b", "lowercase"), ("reg.io/a:bad tag", "tag"),
    ("a@sha256:xyz", "digest"), ("a:" + "t" * 129, "tag"), ("reg.io/-a", "lowercase"), (" alpine", "spaces"),
])
def test_malformed_references(text, hint):
    with pytest.raises(InvalidReferenceError, match=hint):
        parse_reference(text)


def test_challenges_with_commas_in_quotes_and_several_schemes():
    (basic, bearer) = parse_www_authenticate(
        'Basic realm="Registry, with comma", BEARER realm="https://a/t?x=1",service=svc,'
        'scope="repository:a/b:pull,push repository:c:pull"')
    assert basic.scheme == "basic" and basic.get("realm") == "Registry, with comma"
    assert bearer.scheme == "bearer"
    assert bearer.get("REALM") == "https://a/t?x=1"  # names case-insensitive, values exact
    assert bearer.get("scope") == "repository:a/b:pull,push repository:c:pull"


def test_challenge_escapes():
    (c,) = parse_www_authenticate(r'Bearer realm="a\"b\\c"')
    assert c.get("realm") == 'a"b\\c'


@pytest.mark.parametrize("header", ["", 'Bearer realm="x', "=x", "Bearer realm=x,,=y"])
def test_malformed_challenges(header):
    with pytest.raises(MalformedChallengeError):
        parse_www_authenticate(header)


def test_credentials_repr_hides_secrets():
    creds = Credentials("robot$ci", "hunter2", "idtok")
    assert "hunter2" not in repr(creds) and "idtok" not in repr(creds)


def _write_config(tmp_path, data):
    (tmp_path / "config.json").write_text(json.dumps(data))
    return DockerConfig(env={"DOCKER_CONFIG": str(tmp_path)})


def test_docker_config_auths_and_identity_token(tmp_path):
    auth = base64.b64encode(b"robot$ci:pa:ss").decode()
    cfg = _write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "ghcr.io": {"username": "u", "password": "p"},
        "https://quay.io": {"identitytoken": "refresh-me", "auth": base64.b64encode(b"tok:").decode()},
    }})
    assert cfg.lookup("docker.io") == Credentials("robot$ci", "pa:ss")
    assert cfg.lookup("registry-1.docker.io") == Credentials("robot$ci", "pa:ss")
    assert cfg.lookup("ghcr.io") == Credentials("u", "p")
    assert cfg.lookup("quay.io").identity_token == "refresh-me"
    assert cfg.lookup("elsewhere.io") is None


def test_docker_config_bad_auth_names_the_file_and_key(tmp_path):
    cfg = _write_config(tmp_path, {"auths": {"ghcr.io": {"auth": "!!!notbase64"}}})
    with pytest.raises(CredentialError, match=r"config.json: auths\['ghcr.io'\].auth"):
        cfg.lookup("ghcr.io")


def test_docker_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(CredentialError, match="not valid JSON"):
        DockerConfig(env={"DOCKER_CONFIG": str(tmp_path)}).lookup("ghcr.io")


def test_credential_helpers(tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'case "$server" in\n'
        '  ghcr.io) echo \'{"ServerURL":"ghcr.io","Username":"helper-user","Secret":"helper-secret"}\' ;;\n'
        '  quay.io) echo \'{"ServerURL":"quay.io","Username":"<token>","Secret":"idtoken"}\' ;;\n'
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
        "esac\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = _write_config(tmp_path, {"credHelpers": {"ghcr.io": "fake"}, "credsStore": "fake"})
    assert cfg.lookup("ghcr.io") == Credentials("helper-user", "helper-secret")
    assert cfg.lookup("quay.io") == Credentials(identity_token="idtoken")
    assert cfg.lookup("nothing.io") is None


def test_missing_credential_helper_is_named(tmp_path):
    cfg = _write_config(tmp_path, {"credHelpers": {"ghcr.io": "does-not-exist"}})
    with pytest.raises(CredentialError, match="docker-credential-does-not-exist is not installed"):
        cfg.lookup("ghcr.io")


def test_explicit_credentials_win_over_docker_config(tmp_path):
    store = CredentialStore({"ghcr.io": Credentials("w", "x")},
                            _write_config(tmp_path, {"auths": {"ghcr.io": {"username": "d", "password": "y"}}}))
    assert store.lookup("ghcr.io") == Credentials("w", "x")


def test_read_secret(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    assert read_secret(owner="watchlist.toml: registries.x", password_file=str(tmp_path / "pw")) == "s3cret"
    assert read_secret(owner="w", password_env="PW", env={"PW": "e"}) == "e"
    with pytest.raises(CredentialError, match=r"registries.x.password_env: environment variable NOPE is not set"):
        read_secret(owner="watchlist.toml: registries.x", password_env="NOPE", env={})
    with pytest.raises(CredentialError, match="password_file: cannot read"):
        read_secret(owner="w", password_file=str(tmp_path / "missing"))
