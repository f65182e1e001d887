"""The registry client against the real distribution registry, in all three auth modes."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
import zstandard

from reconciler.blobstore import BlobStore
from reconciler.errors import AuthenticationError, PlatformNotFoundError
from reconciler.fetch import current_digest, fetch_layers, resolve_image
from reconciler.registry.client import RegistryClient
from reconciler.registry.credentials import Credentials
from reconciler.registry.manifest import Platform
from reconciler.registry.reference import parse_reference
from tests.conftest import USERS

AMD64 = Platform("linux", "amd64")


def client_for(server, user: str = "alice", **kw) -> RegistryClient:
    creds = None if server.mode == "anonymous" or user is None else Credentials(user, USERS.get(user, "wrong"))
    return RegistryClient(server.host, insecure=True, credentials=creds, **kw)


def pull(client: RegistryClient, store: BlobStore, image: str, platform: Platform = AMD64):
    ref = parse_reference(f"{client.registry}/{image}")
    resolved = resolve_image(client, store, ref, platform, known_digest=current_digest(client, ref))
    fetch_layers(client, store, resolved)
    return resolved


def test_every_fixture_pulls_and_a_second_pull_downloads_nothing(any_registry, fixture_images, tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    with client_for(any_registry) as client:
        for built in fixture_images.values():
            resolved = pull(client, store, f"{built.repository}:{built.tags[0]}")
            assert resolved.tag_digest == built.top.digest
            for layer in resolved.layers:
                assert store.has(layer.digest)
        first = (client.stats.blob_bytes, client.stats.manifest_gets)
        assert first[0] > 0 and first[1] >= len(fixture_images)
    with client_for(any_registry) as again:
        for built in fixture_images.values():
            pull(again, store, f"{built.repository}:{built.tags[0]}")
        assert again.stats.blob_bytes == 0
        assert again.stats.blob_gets == 0
        assert again.stats.manifest_gets == 0  # HEAD only: the digests are known
        assert again.stats.manifest_heads == len(fixture_images)


def test_more_than_100_tags_are_listed_completely(any_registry, fixture_images):
    # distribution 2.8 ignores n= and answers in one page; Link paging is
    # covered against pytest-httpx in test_registry_protocol.py.
    with client_for(any_registry) as client:
        tags = client.list_tags("fixtures/manytags")
        small_pages = client.list_tags("fixtures/manytags", page_size=7)
    assert sorted(tags) == sorted(fixture_images["manytags"].tags)
    assert len(tags) == 120
    assert sorted(small_pages) == sorted(tags)


@pytest.mark.parametrize("name,platform,expected", [
    ("multiarch", "linux/amd64", b"amd64\n"),
    ("multiarch", "linux/arm64", b"arm64\n"),
    ("multiarch", "linux/arm64/v8", b"arm64\n"),
    ("multiarch", "linux/arm/v7", b"armv7\n"),
    ("dockerlist", "linux/amd64", b"amd64\n"),
    ("dockerlist", "linux/ppc64le", b"ppc64le\n"),
])
def test_index_selects_the_platform(fixture_registry, tmp_path, name, platform, expected):
    store = BlobStore(tmp_path / "blobs")
    with client_for(fixture_registry) as client:
        resolved = pull(client, store, f"fixtures/{name}:latest", Platform.parse(platform))
    (layer,) = resolved.layers
    tar = gzip.decompress(store.read_bytes(layer.digest))
    assert expected in tar
    assert resolved.manifest_digest != resolved.tag_digest


def test_missing_platform_is_a_clear_error(fixture_registry, tmp_path):
    with client_for(fixture_registry) as client, pytest.raises(PlatformNotFoundError, match="linux/s390x.*offers: linux/amd64"):
        ref = parse_reference(f"{fixture_registry.host}/fixtures/multiarch")
        resolve_image(client, BlobStore(tmp_path), ref, Platform("linux", "s390x"), known_digest=current_digest(client, ref))


def test_zstd_layers_arrive_intact(fixture_registry, fixture_images, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    with client_for(fixture_registry) as client:
        resolved = pull(client, store, "fixtures/basic-zstd:v1")
    built_tars = fixture_images["basic-zstd"].layer_tars[0]
    for layer, tar in zip(resolved.layers, built_tars):
        assert layer.media_type.endswith("+zstd")
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(store.read_bytes(layer.digest)),
                                                            read_across_frames=True)
        assert reader.read() == tar


def test_token_mode_enforces_pull_scopes(token_registry, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    before = len(token_registry.token_server.requests)
    with RegistryClient(token_registry.host, insecure=True) as anonymous:
        pull(anonymous, store, "fixtures/basic:v1")  # anonymous token grants pull on fixtures/basic only
        with pytest.raises(AuthenticationError):
            anonymous.head_manifest("fixtures/special", "latest")
    with client_for(token_registry, "alice") as alice:
        pull(alice, store, "fixtures/special:latest")
        pull(alice, store, "fixtures/basic:latest")
    # one token per (scope, credential), reused across the manifest, config and layer requests
    alice_tokens = [r for r in token_registry.token_server.requests[before:] if r["user"] == "alice"]
    assert len(alice_tokens) == 2


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_wrong_password_is_refused_without_leaking_it(request, mode, tmp_path):
    server = request.getfixturevalue(f"{mode}_registry")
    secret = "not-the-password-42"
    with RegistryClient(server.host, insecure=True, credentials=Credentials("alice", secret)) as client:
        with pytest.raises(AuthenticationError) as info:
            client.head_manifest("fixtures/basic", "v1")
    assert secret not in str(info.value)
    assert "alice" in str(info.value)


def test_basic_mode_without_credentials_says_what_to_do(basic_registry):
    with RegistryClient(basic_registry.host, insecure=True) as client:
        with pytest.raises(AuthenticationError, match="requires a username and password"):
            client.list_tags("fixtures/basic")
