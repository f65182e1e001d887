"""A resolver for tests that sends no query: numeric hosts and `localhost`
(from /etc/hosts) resolve as usual, any other name is unknown (EAI_NONAME).

The registry client judges the hosts a registry names by what they resolve
to (reconciler/registry/addresses.py); the pytest-httpx tests name made-up
hosts (auth.example.org, storage.example.net), which must not cost a DNS
query leaving the machine. Use with `pytestmark = pytest.mark.usefixtures("offline_dns")`
after importing the fixture into the test module.
"""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def offline_dns(monkeypatch):
    """socket.getaddrinfo without DNS queries (see the module docstring)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name == "localhost":
            return real(host, port, family, type, proto, flags)
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
