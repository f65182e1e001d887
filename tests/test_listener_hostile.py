"""The listener cannot be held from outside (issue 19): stalled clients cost
bounded memory and file descriptors, are dropped after the head and body
timeouts, leave room for a real hook and /healthz, and do not delay SIGTERM.

The real service runs as a process (tests/listener_runner.py, with short
timeouts); its RSS and open fds are read from /proc. Every wait polls with a
deadline.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.registry_server import REGISTRY_BINARY, start_registry, wait_until
from tests.stalled_clients import TOKEN, Stallers, _head, fd_count, rss_kib, start_service

# Short enough for a test, and the same order as the defaults (head < body < grace).
LIMITS = {"head_timeout_s": 1.0, "body_timeout_s": 2.0, "shutdown_grace_s": 1.0}
FORGED_BODIES = 64  # 1 MiB each: the service grew by 89 MiB when it buffered them all


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """An empty registry: the watched tag is not there, so each cycle ends at once."""
    if REGISTRY_BINARY is None:
        pytest.skip("docker-registry is not installed")
    server = start_registry(tmp_path_factory.mktemp("empty-registry"))
    yield server.host
    server.stop()


def test_stalled_clients_cost_bounded_memory_and_are_dropped(tmp_path, registry):
    service = start_service(tmp_path, registry, LIMITS)
    pid = service.proc.pid
    stallers = Stallers(service.port)
    try:
        # Warm the paths the strangers take (a refused hook, the pages) before the baseline.
        assert service.valid_hook() == 202
        httpx.get(f"{service.base}/status", timeout=5)
        rss0, fds0 = rss_kib(pid), fd_count(pid)

        stallers.half_head(20)
        stallers.trickle_head(10)
        stallers.trickle_body(10)
        stallers.forged_body(FORGED_BODIES)
        fds1 = fd_count(pid)
        # Strangers stall, a real sender and a health check still get through.
        assert service.valid_hook() == 202
        assert service.healthy()

        # Until the head and body timeouts have closed every stalled connection
        # (or the deadline): the largest resident set seen.
        peak, deadline = rss_kib(pid), time.monotonic() + 15
        while fd_count(pid) > fds0 + 2 and time.monotonic() < deadline:
            peak = max(peak, rss_kib(pid))
            time.sleep(0.05)
        grown_mib = (peak - rss0) / 1024
        # The unverified bodies are capped at 4 MiB together (server.MAX_UNVERIFIED_BYTES),
        # 15 to 30 MiB of growth with the copies on the way and the allocator's slack,
        # for 40 to 200 stalled clients alike.
        assert grown_mib < 40, f"RSS grew by {grown_mib:.1f} MiB with {FORGED_BODIES} forged 1 MiB bodies"
        assert fd_count(pid) <= fds0 + 2, \
            f"stalled connections still open after 15 s: fds {fds0} before, {fds1} during, {fd_count(pid)} now"
        assert service.valid_hook() == 202
    finally:
        stallers.close()
        code = service.terminate(timeout=30)
    assert code == 0, service.messages()[-10:]


def test_sigterm_with_stalled_connections_exits_promptly_and_starts_no_cycle(tmp_path, registry):
    # Timeouts longer than the test: only the shutdown can end these connections.
    service = start_service(tmp_path, registry, {**LIMITS, "head_timeout_s": 60.0, "body_timeout_s": 60.0,
                                                 "shutdown_grace_s": 3.0})
    stallers = Stallers(service.port)
    try:
        stallers.half_head(5)
        stallers.forged_body(5)
        stallers.trickle_body(5)
        # A hook nudges the entry: its cycle would start 2 s later (the debounce),
        # inside the shutdown grace, if the scheduler still ran.
        assert service.valid_hook() == 202
        cycles_before = sum(m.startswith("cycle done") for m in service.messages())
        started = time.monotonic()
        code = service.terminate(timeout=20)
        took = time.monotonic() - started
    finally:
        stallers.close()
    messages = service.messages()
    assert code == 0, f"exit {code} (None: still running 20 s after SIGTERM); {messages[-10:]}"
    assert took < 3.0 + 5, f"{took:.1f} s from SIGTERM to exit"
    assert "SIGTERM received: stopping" in messages
    # The stalled reads were answered (503, "stopping"), not cancelled with a traceback.
    assert "Traceback" not in service.log_path.read_text()
    assert any("the service is stopping" in m for m in messages), messages
    # No cycle started after the signal: the nudged one never ran.
    assert sum(m.startswith("cycle done") for m in messages) == cycles_before, messages
    assert messages[-1] == f"stopped after {cycles_before} cycle{'' if cycles_before == 1 else 's'}", messages[-5:]


def test_a_client_that_hangs_up_mid_body_is_a_plain_refusal(tmp_path, registry):
    """A token-authenticated hook whose sender closes the connection halfway
    through its body: refused like any bad hook, no traceback in the log."""
    service = start_service(tmp_path, registry, LIMITS)
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
                sock.sendall(_head("/hooks/distribution", service.port, f"Authorization: Bearer {TOKEN}\r\n", 1000)
                             + b'{"events": [')
        wait_until(lambda: sum("went away before its body was complete" in m for m in service.messages()) == 3,
                   timeout=15, what="the three refusals in the log")
        assert service.valid_hook() == 202 and service.healthy()
    finally:
        code = service.terminate(timeout=20)
    assert code == 0
    assert "Traceback" not in service.log_path.read_text()
