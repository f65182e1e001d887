"""`signature = { keys, identity }` in the watchlist: inherited from
[defaults], "none" opts out, keys parsed when the file loads (a bad one is a
configuration error naming file, entry and key: exit 2)."""

from __future__ import annotations

import logging
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from reconciler.errors import ConfigError
from reconciler.watchlist import load_watchlist
from tests.cosign_signer import Signer
from tests.test_cli_errors import one_line
from tests.test_one_writer import reconcile


def write(tmp_path, body: str):
    path = tmp_path / "conf" / "watchlist.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    return path


def test_defaults_are_inherited_none_opts_out_and_an_entry_may_have_its_own(tmp_path, monkeypatch, caplog):
    (tmp_path / "conf").mkdir()
    ci, release = Signer(), Signer()
    ci.write(tmp_path / "conf" / "ci.pub")
    release.write(tmp_path / "conf" / "release.pub")
    path = write(tmp_path, '[defaults]\nsignature = { keys = ["ci.pub"] }\n'
                           '[[image]]\nsource = "r.example.org/a"\ntags = ["1"]\n'
                           '[[image]]\nsource = "r.example.org/b"\ntags = ["1"]\nsignature = "none"\n'
                           '[[image]]\nsource = "r.example.org/c"\ntags = ["1"]\n[image.signature]\n'
                           'keys = ["ci.pub", "release.pub"]\nidentity = "repository:docker.io/library/alpine"\n')
    monkeypatch.chdir(tmp_path)  # relative key paths are taken from the watchlist's directory, not the cwd
    with caplog.at_level(logging.INFO, logger="reconciler.watchlist"):
        a, b, c = load_watchlist(path).images
    assert [k.fingerprint for k in a.signature.keys] == [ci.fingerprint]
    assert str(a.signature.identity) == "repository"
    assert b.signature is None
    assert [k.fingerprint for k in c.signature.keys] == [ci.fingerprint, release.fingerprint]
    assert str(c.signature.identity) == "repository:docker.io/library/alpine"
    assert f"SHA-256 fingerprint {release.fingerprint}" in caplog.text


def p384() -> bytes:
    return Signer(ec.SECP384R1()).pem


def rsa_key() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("content, expected", [
    (p384, "an ECDSA key on secp384r1; only P-256 (secp256r1) is supported"),
    (rsa_key, "only ECDSA P-256 keys are supported"),
    (lambda: b"not a key", "not a PEM public key"),
    (None, "cannot read the key"),
])
def test_a_bad_key_is_a_configuration_error_naming_file_entry_and_key(tmp_path, content, expected):
    path = write(tmp_path, '[[image]]\nsource = "r.example.org/a"\ntags = ["1"]\n'
                           'signature = { keys = ["k.pub"] }\n')
    if content is not None:
        (path.parent / "k.pub").write_bytes(content())
    with pytest.raises(ConfigError) as raised:
        load_watchlist(path)
    assert str(raised.value).startswith(f"watchlist.toml: image[1] (r.example.org/a).signature.keys: "
                                        f"{'' if content is None else path.parent / 'k.pub'}")
    assert expected in str(raised.value) and str(path.parent / "k.pub") in str(raised.value)


@pytest.mark.parametrize("value, expected", [
    ('"nope"', 'expected a table { keys = ["cosign.pub"] } or "none"'),
    ("{ keys = [] }", "signature.keys: required"),
    ('{ keys = ["k.pub"], identity = "repo" }', "signature.identity: expected one of 'repository', 'exact'"),
    ('{ key = ["k.pub"] }', 'unknown key "key" (did you mean "keys"?)'),
])
def test_bad_signature_settings_are_configuration_errors(tmp_path, value, expected):
    path = write(tmp_path, f'[defaults]\nsignature = {value}\n[[image]]\nsource = "r.example.org/a"\ntags = ["1"]\n')
    Signer().write(path.parent / "k.pub")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_watchlist(path)


def test_a_bad_key_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, '[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                           '[[image]]\nsource = "r.example.org/a"\ntags = ["1"]\nsignature = { keys = ["k.pub"] }\n')
    (path.parent / "k.pub").write_bytes(p384())
    done = reconcile("--once", "--watchlist", str(path))
    assert done.returncode == 2
    assert "signature.keys" in one_line(done) and "secp384r1" in one_line(done)


def test_the_entries_of_a_list_take_the_defaults_signature(tmp_path):
    from reconciler.lists.entries import list_entries
    from reconciler.lists.read import read_list

    signer = Signer()
    path = write(tmp_path, '[defaults]\nsignature = { keys = ["ci.pub"] }\n'
                           '[[list]]\npath = "docker_images.txt"\nformat = "osg"\n')
    signer.write(path.parent / "ci.pub")
    (path.parent / "docker_images.txt").write_text("team/app:1\nother/tool:*\n")
    (config,) = load_watchlist(path).lists
    entries, problems = list_entries(read_list(config.path, "osg"), config, 1)
    assert not problems and len(entries) == 2
    assert all([k.fingerprint for k in e.signature.keys] == [signer.fingerprint] for e in entries)
