"""The service end to end: the real registry notifies it on push, and with a
one-hour interval the new digest is published within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fixtures.push import FixturePusher
from tests.registry_server import free_port, start_registry, wait_until

TOKEN = "hook-token-for-the-tests-0123456789"


@pytest.fixture
def notifying_registry(tmp_path):
    port = free_port()
    server = start_registry(tmp_path / "registry", notifications={"endpoints": [{
        "name": "reconciler", "url": f"http://127.0.0.1:{port}/hooks/distribution",
        "headers": {"Authorization": [f"Bearer {TOKEN}"]}, "timeout": "2s", "threshold": 5, "backoff": "1s"}]})
    server.service_port = port  # type: ignore[attr-defined]
    yield server
    server.stop()


def push_as(server, fixture_images, fixture: str, tag: str) -> str:
    image = fixture_images[fixture]
    FixturePusher(server.host).push(type(image)(image.name, "team/app", image.blobs, image.manifests, [tag],
                                                image.layer_tars))
    return image.top.digest


def test_push_is_published_within_seconds_and_sigterm_exits_cleanly(tmp_path, notifying_registry, fixture_images):
    registry = notifying_registry
    push_as(registry, fixture_images, "basic", "stable")
    wl = tmp_path / "watchlist.toml"
    wl.write_text(f'''
[publish]
root = "publish"
[state]
dir = "state"
[defaults]
interval = "1h"
[registries."{registry.host}"]
insecure = true
[service]
listen = "127.0.0.1:{registry.service_port}"
[webhooks.distribution]
token_env = "HOOK_TOKEN"
[[image]]
source = "{registry.host}/team/app"
tags = ["stable"]
dest = "app"
''')
    env = {**os.environ, "HOOK_TOKEN": TOKEN, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    log = (tmp_path / "service.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "--watchlist", str(wl), "--log-format", "json"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{registry.service_port}"
    link = tmp_path / "publish" / "app:stable"
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=30, what="the service to listen")
        wait_until(link.exists, timeout=30, what="the first poll to publish app:stable")
        first = os.readlink(link)
        new_digest = push_as(registry, fixture_images, "edges", "stable")
        pushed_at = time.monotonic()
        wait_until(lambda: new_digest.split(":")[1] in os.readlink(link), timeout=30,
                   what="the pushed digest to be published after the registry's notification")
        assert time.monotonic() - pushed_at < 30
        assert os.readlink(link) != first
        def status_published() -> str:
            (entry,) = httpx.get(f"{base}/status").json()["images"]
            return entry["tags"][0]["published"] if entry["tags"] else ""

        # the state is recorded right after the transaction: poll for it
        wait_until(lambda: status_published() == new_digest, timeout=10, what="/status to show the new digest")
        metrics = httpx.get(f"{base}/metrics").text
        assert 'reconciler_webhooks_total{outcome="accepted",provider="distribution"}' in metrics
        assert "reconciler_publishes_total" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "service.log").read_text()[-3000:]
    assert list((tmp_path / "publish" / ".staging").iterdir()) == []
