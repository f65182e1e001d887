"""Shared test fixtures: the fixture images pushed to real loopback registries.

One anonymous registry receives the images (pushed with oras); a Basic-auth
and a token-auth registry then serve the same storage directory, so every
mode serves identical content without pushing three times.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterator

import pytest

from fixtures.build import BuiltImage
from fixtures.push import push_fixtures
from tests.registry_server import REGISTRY_BINARY, RegistryServer, start_registry

USERS = {"alice": "wonder land, \"quoted\"", "admin": "admin-secret"}
# alice may pull every fixture; anonymous token requests only fixtures/basic.
ACL = {"alice": ["fixtures/*"], "admin": ["*"], "": ["fixtures/basic"]}

needs_registry = pytest.mark.skipif(REGISTRY_BINARY is None, reason="docker-registry is not installed")


@pytest.fixture(scope="session")
def registry_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registries")


@pytest.fixture(scope="session")
def fixture_registry(registry_workdir: Path) -> Iterator[RegistryServer]:
    """An anonymous registry holding every fixture image."""
    if REGISTRY_BINARY is None:
        pytest.skip("docker-registry is not installed")
    server = start_registry(registry_workdir / "anonymous")
    try:
        logging.getLogger("oras").setLevel(logging.WARNING)
        server.images = push_fixtures(server.host, insecure=True)  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fixture_images(fixture_registry: RegistryServer) -> Dict[str, BuiltImage]:
    return fixture_registry.images  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def basic_registry(fixture_registry: RegistryServer, registry_workdir: Path) -> Iterator[RegistryServer]:
    """The fixture storage behind htpasswd Basic auth."""
    server = start_registry(registry_workdir / "basic", mode="basic", storage=fixture_registry.storage, users=USERS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(fixture_registry: RegistryServer, registry_workdir: Path) -> Iterator[RegistryServer]:
    """The fixture storage behind Bearer token auth with scoped grants."""
    server = start_registry(registry_workdir / "token", mode="token", storage=fixture_registry.storage,
                            users=USERS, acl=ACL)
    yield server
    server.stop()


@pytest.fixture(params=["anonymous", "basic", "token"])
def any_registry(request: pytest.FixtureRequest) -> RegistryServer:
    """Each auth mode in turn."""
    return request.getfixturevalue({"anonymous": "fixture_registry", "basic": "basic_registry",
                                    "token": "token_registry"}[request.param])
