"""The service end to end: the real registry notifies it on push, and with a
one-hour interval the new digest is published within seconds. On SIGTERM a
running cycle finishes first, and the last log line says the service stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fixtures.push import FixturePusher
from tests.registry_server import free_port, start_registry, wait_until
from tests.service_watchlist import write_service_watchlist

TOKEN = "hook-token-for-the-tests-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def log_messages(path: Path) -> list:
    """The messages of a service's JSON log, in order."""
    return [json.loads(line)["message"] for line in path.read_text().splitlines() if line.startswith("{")]


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
    wl = write_service_watchlist(tmp_path / "watchlist.toml", registry.host, [("team/app", "stable", "app")],
                                 listen=f"127.0.0.1:{registry.service_port}", webhook="distribution")
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
    messages = log_messages(tmp_path / "service.log")
    # The last word is that it stopped (how many cycles depends on how often the registry notified).
    assert messages[-2] == "SIGTERM received: stopping", messages[-5:]
    assert re.fullmatch(r"stopped after [2-9]\d* cycles", messages[-1]), messages[-5:]


def test_sigterm_during_a_cycle_lets_it_publish_then_logs_stopped(tmp_path, fixture_registry):
    host = fixture_registry.host
    wl = write_service_watchlist(tmp_path / "watchlist.toml", host, [("fixtures/basic", "v1", "basic")])
    # The real service, paused inside the first layer of its first cycle (tests/pause_runner.py).
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PAUSE_DIR": str(pause)}
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "pause_runner.py"), "--watchlist", str(wl),
                                 "--log-format", "json"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until((pause / "paused").exists, timeout=60, what="the first cycle to reach its first layer")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any(m.startswith("waiting for the running cycle") for m in log_messages(log_path)),
                   timeout=20, what="the service to say that it waits for the running cycle")
        assert proc.poll() is None, "the service exited in the middle of a cycle"
        (pause / "resume").touch()
        code = proc.wait(timeout=60)
    finally:
        (pause / "resume").touch()  # never leave the service waiting inside a layer
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    messages = log_messages(log_path)
    assert code == 0, messages
    published = [i for i, m in enumerate(messages) if "published as basic:v1" in m]
    waiting = [i for i, m in enumerate(messages) if m.startswith("waiting for the running cycle")]
    assert published and waiting and waiting[0] < published[0], messages
    assert "image[1] (" in messages[waiting[0]] and "nothing is left half-published" in messages[waiting[0]]
    assert messages[-1] == "stopped after 1 cycle", messages[-5:]
    assert (tmp_path / "publish" / "basic:v1").is_symlink()
