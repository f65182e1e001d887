"""Delivery times, push to stratum 1, without CernVM-FS: the `.cvmfspublished`
reader, the push times webhooks carry, and the service's tracker against a
stratum 0 and a stratum 1 played by a loopback HTTP server (what they serve is
set by the test). The real thing is tests/test_replicas_real.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Dict

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.cycle.outcome import CycleReport, ImageOutcome
from reconciler.delivery import PUSH_KEEP_S, DeliveryLog, MemoryOnly
from reconciler.errors import ConfigError, PublishError
from reconciler.publish.replicas import parse_manifest, stratum0_url
from reconciler.registry.manifest import Platform
from reconciler.service.delivery import DeliveryTracker
from reconciler.service.page import render_page
from reconciler.state import StateDB
from reconciler.watchlist import load_watchlist
from reconciler.webhooks import _PARSERS, verify_body, verify_headers
from tests.loopback_http import LoopbackServer

SIGNED = b"--\n08ec80b0dbb11ca9f6619d51ed6e6f034f5e44ee\n\x8b\xc8\xd7v8\xd4\n\xae\x00S99\n"


def manifest(revision: int, stamp: int = 1796206204) -> bytes:
    """A `.cvmfspublished` as 2.11.5 writes it (fields, `--`, hash, binary signature)."""
    return (f"C6684aa8100fc9e421dc29de4408e792685637de1\nB57344\nD240\nS{revision}\nGno\nAno\n"
            f"Nreconciler.test.org\nT{stamp}\n").encode() + SIGNED


def test_the_manifest_gives_revision_and_time_and_ignores_the_signature():
    served = parse_manifest(manifest(64), "http://s1/cvmfs/r/.cvmfspublished")
    assert (served.revision, served.published, served.repository) == (64, 1796206204.0, "reconciler.test.org")
    with pytest.raises(PublishError, match=r"http://s1/x/.cvmfspublished is not a CernVM-FS manifest .*S<number>"):
        parse_manifest(b"<html>not found</html>\n", "http://s1/x/.cvmfspublished")
    with pytest.raises(PublishError):
        parse_manifest(b"Sabc\n--\nS12\n", "u")  # a revision only after the fields is the signature's bytes


def test_stratum0_url_is_read_from_the_repository_server_conf(tmp_path):
    (tmp_path / "r.org").mkdir()
    (tmp_path / "r.org" / "server.conf").write_text("CVMFS_REPOSITORY_NAME=r.org\n"
                                                    "CVMFS_STRATUM0=http://localhost/cvmfs/r.org\n")
    assert stratum0_url("r.org", tmp_path) == "http://localhost/cvmfs/r.org"
    assert stratum0_url("other.org", tmp_path) is None


def test_webhooks_carry_the_registry_push_time_where_the_provider_sends_one():
    distribution = {"events": [{"action": "push", "timestamp": "2026-12-02T10:00:05.123456789+01:00",
                                "target": {"repository": "team/app", "tag": "v2",
                                           "mediaType": "application/vnd.oci.image.manifest.v1+json"}}]}
    (hint,) = _PARSERS["distribution"](distribution)
    assert (hint.repository, hint.tag) == ("team/app", "v2")
    assert hint.pushed_at == pytest.approx(1796202005.123456, abs=1e-5)  # 09:00:05.123 UTC
    (hub,) = _PARSERS["dockerhub"]({"repository": {"repo_name": "alpine"},
                                    "push_data": {"pushed_at": 1796202005, "tag": "3"}})
    assert (hub.repository, hub.tag, hub.pushed_at) == ("library/alpine", "3", 1796202005.0)
    (harbor,) = _PARSERS["harbor"]({"occur_at": 1796202006, "event_data": {"repository": {"repo_full_name": "p/a"}}})
    assert harbor.pushed_at == 1796202006.0
    bad = {"events": [{"action": "push", "timestamp": "yesterday", "target": {"repository": "a", "tag": "1"}}]}
    assert _PARSERS["distribution"](bad)[0].pushed_at is None  # no time is no time, never a guess


def test_replicas_are_only_for_cvmfs_and_must_be_urls(tmp_path):
    path = tmp_path / "watchlist.toml"
    path.write_text('[publish]\nreplicas = ["http://s1/cvmfs/r"]\n')
    with pytest.raises(ConfigError, match=r'publish.replicas: only meaningful with backend = "cvmfs"'):
        load_watchlist(path)
    path.write_text('[publish]\nbackend = "cvmfs"\nrepository = "r.org"\nreplicas = ["s1.example.org"]\n')
    with pytest.raises(ConfigError, match=r"publish.replicas: expected URLs such as"):
        load_watchlist(path)


class Servers:
    """A stratum 0 and a stratum 1 on one loopback server: /s0/ and /s1/ serve the revisions set here."""

    def __init__(self) -> None:
        self.revisions: Dict[str, int] = {"s0": 7, "s1": 6}
        self.asked: Dict[str, int] = {"s0": 0, "s1": 0}
        self.server = LoopbackServer(self.handle)
        self.base = f"http://{self.server.host}"

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        match = re.fullmatch(r"/(s[01])/\.cvmfspublished", request.path)
        body = manifest(self.revisions[match.group(1)]) if match else b"no"
        if match:
            self.asked[match.group(1)] += 1
        request.send_response(200 if match else 404)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.server.close()


def tracker_for(tmp_path: Path, servers: Servers, lag: str, clock, registry: CollectorRegistry,
                stores=None) -> DeliveryTracker:
    path = tmp_path / "watchlist.toml"
    path.write_text(f'[publish]\nbackend = "cvmfs"\nrepository = "r.org"\nreplicas = ["{servers.base}/s1"]\n'
                    f'replica_lag_max = "{lag}"\n[[image]]\nsource = "reg.example.org/team/app"\ntags = ["v2"]\n'
                    'dest = "app"\n')
    return DeliveryTracker(load_watchlist(path), registry, clock=clock, stratum0=f"{servers.base}/s0", stores=stores)


def tracker_entries(tmp_path: Path):
    return load_watchlist(tmp_path / "watchlist.toml").images


def published_report(tmp_path: Path) -> CycleReport:
    """A cycle that published the watchlist's one entry's tag v2."""
    entry = tracker_entries(tmp_path)[0]
    outcome = ImageOutcome(entry, "v2", Platform("linux", "amd64"), "app:v2")
    outcome.unchanged_at = ("sha256:" + "a" * 64, "sha256:" + "b" * 64)
    outcome.status = outcome.status.__class__("published")
    return CycleReport(outcomes=[outcome], entries=[entry])


def test_a_delivery_from_push_to_the_stratum_1_with_status_page_and_metrics(tmp_path, servers):
    now = [1000.0]
    registry = CollectorRegistry()
    tracker = tracker_for(tmp_path, servers, "1m", lambda: now[0], registry)
    try:
        hints = _PARSERS["distribution"]({"events": [{
            "action": "push", "timestamp": "1970-01-01T00:16:30Z",  # 990
            "target": {"repository": "team/app", "tag": "v2", "mediaType": "application/vnd.oci.image.manifest.v1+json"}}]})
        tracker.hook(hints, tracker_entries(tmp_path), received=991.0)
        assert servers.asked == {"s0": 0, "s1": 0}  # nothing asked before anything is published
        (delivery,) = tracker.cycle_done(published_report(tmp_path), started=995.0, ended=1000.0)
        assert (delivery.pushed, delivery.seen, delivery.published, delivery.revision) == (990.0, 995.0, 1000.0, 7)
        assert delivery.replica_time(f"{servers.base}/s1") is None  # it serves 6: not yet
        status = tracker.status()
        (replica,) = status["replicas"]
        assert (replica["revision"], replica["lagging"]) == (6, False)
        (shown,) = status["images"]
        assert (shown["push_to_publish_seconds"], shown["seen_to_publish_seconds"]) == (10.0, 5.0)

        now[0] = 1100.0  # over a minute later, still revision 6: lagging, in red on the page
        status = tracker.status()
        assert status["replicas"][0]["lagging"] and status["images"][0]["replicas"][0]["lagging"]
        page = render_page({"now": "1970-01-01T00:18:20Z", "images": [], "delivery": status})
        assert re.search(r'<p class="replica lagging"[^>]*>.*<span class="bad">lagging', page)
        assert '<td class="lagging"><span class="bad">not yet</span></td>' in page

        assert tracker.poll_replicas() == []  # asked again (100 s after the last time): still 6
        servers.revisions["s1"] = 8  # the stratum 1 caught up (past it: a later revision serves it too)
        now[0] = 1130.0
        (caught,) = tracker.poll_replicas()
        assert (caught.at, caught.delivery.replica_time(f"{servers.base}/s1")) == (1130.0, 1130.0)
        status = tracker.status()
        assert not status["replicas"][0]["lagging"]
        assert status["images"][0]["replicas"][0]["after_push_seconds"] == 140.0
        asked = dict(servers.asked)
        assert tracker.poll_replicas(force=True) == [] and servers.asked == asked  # nothing waits: nothing asked
        metrics = generate_latest(registry).decode()
        assert re.search(r'reconciler_push_to_replica_seconds_sum\{replica="[^"]+/s1"\} 140\.0', metrics)
        assert "reconciler_push_to_publish_seconds_sum 10.0" in metrics
        assert "reconciler_seen_to_publish_seconds_count 1.0" in metrics
        assert json.dumps(status)  # /status is JSON
    finally:
        tracker.close()


def test_a_push_is_told_to_the_first_cycle_that_could_have_seen_it(tmp_path, servers):
    tracker = tracker_for(tmp_path, servers, "1m", lambda: 2000.0, CollectorRegistry())
    try:
        hint = _PARSERS["dockerhub"]({"repository": {"repo_name": "team/app"},
                                      "push_data": {"pushed_at": 1990, "tag": "v2"}})
        hint = [h.__class__(h.repository, None, h.pushed_at, h.tag) for h in hint]  # the hook names no registry
        tracker.hook(hint, tracker_entries(tmp_path), received=1996.0)  # while a cycle started at 1995 ran
        (during,) = tracker.cycle_done(published_report(tmp_path), started=1995.0, ended=2000.0)
        assert during.pushed is None  # that cycle's HEAD came before the push: not its push
        (after,) = tracker.cycle_done(published_report(tmp_path), started=2001.0, ended=2005.0)
        assert after.pushed == 1990.0
        (again,) = tracker.cycle_done(published_report(tmp_path), started=2010.0, ended=2012.0)
        assert again.pushed is None  # told once
    finally:
        tracker.close()


def test_a_generic_hooks_push_time_and_tag_reach_the_delivery_and_status(tmp_path, servers):
    tracker = tracker_for(tmp_path, servers, "1m", lambda: 2000.0, CollectorRegistry())
    try:
        body = json.dumps({"image": "reg.example.org/team/app", "tag": "v2",
                           "pushed_at": "1970-01-01T00:33:10.5Z"}).encode()  # 1990.5
        stamp = "1996"
        signature = "sha256=" + hmac.new(b"k" * 16, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        checked = verify_headers("generic", "k" * 16, {"x-reconciler-timestamp": stamp,
                                                        "x-reconciler-signature": signature}, now=1996.0)
        tracker.hook(verify_body(checked, "k" * 16, body, now=1996.0), tracker_entries(tmp_path), received=1996.0)
        (delivery,) = tracker.cycle_done(published_report(tmp_path), started=1997.0, ended=2000.0)
        assert delivery.pushed == 1990.5
        (shown,) = tracker.status()["images"]
        assert (shown["pushed"], shown["push_to_publish_seconds"]) == ("1970-01-01T00:33:10Z", 9.5)
    finally:
        tracker.close()


def test_delivery_times_survive_restarts_and_are_observed_once(tmp_path, servers):
    """Restarts between the hook and its publish, between the publish and the
    stratum 1 catching up, and after: each start a new tracker, registry and
    state database connection, as a restarted service has."""
    now = [991.0]
    s1 = f"{servers.base}/s1"

    def start():
        registry = CollectorRegistry()
        state = StateDB(tmp_path / "state.db")
        return tracker_for(tmp_path, servers, "1m", lambda: now[0], registry, stores={"": state}), registry, state

    def stop():
        tracker.close()
        state.close()

    def observed(registry, name):
        return registry.get_sample_value(f"reconciler_{name}_seconds_count", {"replica": s1} if "replica" in name
                                         else {}) or 0.0

    tracker, registry, state = start()
    hints = _PARSERS["dockerhub"]({"repository": {"repo_name": "team/app"}, "push_data": {"pushed_at": 990, "tag": "v2"}})
    tracker.hook([replace(h, registry=None) for h in hints], tracker_entries(tmp_path), received=991.0)
    stop()

    tracker, registry, state = start()  # the webhook came, the publish comes after the restart
    (delivery,) = tracker.cycle_done(published_report(tmp_path), started=995.0, ended=1000.0)
    assert (delivery.pushed, delivery.revision, delivery.replica_time(s1)) == (990.0, 7, None)  # s1 serves 6
    assert observed(registry, "push_to_publish") == 1.0
    stop()

    now[0] = 1100.0
    servers.revisions["s1"] = 8  # caught up while the service was down
    tracker, registry, state = start()
    (shown,) = tracker.status()["images"]
    assert (shown["pushed"], shown["revision"], shown["replicas"][0]["served"]) == ("1970-01-01T00:16:30Z", 7, None)
    assert shown["replicas"][0]["lagging"]  # published 100 s ago, still waiting: a minute is the limit
    assert observed(registry, "push_to_publish") == 0.0  # told before the restart, not again
    (caught,) = tracker.poll_replicas()
    assert caught.at == 1100.0 and observed(registry, "push_to_replica") == 1.0
    stop()

    now[0] = 1200.0
    tracker, registry, state = start()
    try:
        (shown,) = tracker.status()["images"]
        assert shown["replicas"][0]["after_push_seconds"] == 110.0 and not shown["replicas"][0]["lagging"]
        asked = dict(servers.asked)
        assert tracker.poll_replicas(force=True) == [] and servers.asked == asked  # nothing waits: nothing asked
        assert observed(registry, "publish_to_replica") == 0.0 and observed(registry, "push_to_replica") == 0.0
        (again,) = tracker.cycle_done(published_report(tmp_path), started=1150.0, ended=1160.0)
        assert again.pushed is None  # the push was taken by the first publish, before two restarts
    finally:
        stop()


def test_a_push_no_publish_took_within_a_day_is_forgotten(tmp_path):
    state = StateDB(tmp_path / "state.db")
    try:
        delivery_log = DeliveryLog([], store=state)
        delivery_log.pushed("app", "sha-1", 100.0, 101.0)  # a tag nobody watches: no publish ever takes it
        delivery_log.pushed("app", "v2", 200.0, 201.0 + PUSH_KEEP_S)
        assert state.pushes() == {("app", "v2"): (200.0, 201.0 + PUSH_KEEP_S)}
        assert DeliveryLog([], store=state).take_pushes([("app", "v2")], 1e9) == {("app", "v2"): 200.0}
        assert state.pushes() == {}
    finally:
        state.close()


def test_readers_of_the_log_do_not_wait_for_a_busy_store():
    """The state database is busy while a cycle records: the status page and
    the replica checks read the log meanwhile, and a store write that fails is
    only logged (the log keeps the figures in memory)."""
    release, writing, released = threading.Event(), threading.Event(), []

    class BusyStore(MemoryOnly):
        def record_delivery(self, delivery):
            writing.set()
            released.append(release.wait(5))  # True: the reader below came while this waited
            raise sqlite3.OperationalError("database is locked")

    delivery_log = DeliveryLog(["http://s1"], store=BusyStore())
    writer = threading.Thread(target=lambda: delivery_log.published(
        "app:v2", "reg/team/app:v2", "sha256:" + "a" * 64, pushed=None, seen=1.0, published=2.0, revision=7))
    writer.start()
    try:
        assert writing.wait(5)
        assert [d.tag_path for d in delivery_log.deliveries()] == ["app:v2"] and delivery_log.waiting()
    finally:
        release.set()
        writer.join(5)
    assert released == [True], "the reader waited for the store"
    assert not writer.is_alive() and delivery_log.deliveries()[0].revision == 7


def test_each_publish_target_has_its_own_stratum_1s_and_deliveries(tmp_path, servers):
    path = tmp_path / "watchlist.toml"
    path.write_text(f'[publish.grid]\nbackend = "cvmfs"\nrepository = "r.org"\nreplicas = ["{servers.base}/s1"]\n'
                    '[publish.site]\nroot = "pub"\n'
                    '[[image]]\nsource = "reg.example.org/team/app"\ntags = ["v2"]\ndest = "app"\npublish = "grid"\n'
                    '[[image]]\nsource = "reg.example.org/team/tool"\ntags = ["v2"]\ndest = "tool"\npublish = "site"\n')
    watchlist = load_watchlist(path)
    tracker = DeliveryTracker(watchlist, CollectorRegistry(), clock=lambda: 3000.0, stratum0=f"{servers.base}/s0")
    try:
        outcomes = []
        for entry in watchlist.images:
            outcome = ImageOutcome(entry, "v2", Platform("linux", "amd64"), f"{entry.dest}:v2")
            outcome.unchanged_at = ("sha256:" + "a" * 64, "sha256:" + "b" * 64)
            outcome.status = outcome.status.__class__("published")
            outcomes.append(outcome)
        tracker.cycle_done(CycleReport(outcomes=outcomes, entries=list(watchlist.images)), 2990.0, 2995.0)
        status = tracker.status()
        assert [(r["target"], r["url"]) for r in status["replicas"]] == [("grid", f"{servers.base}/s1")]
        shown = {d["target"]: d for d in status["images"]}
        assert shown["grid"]["revision"] == 7 and len(shown["grid"]["replicas"]) == 1
        # A local target: no revision, no stratum 1.
        assert (shown["site"]["path"], shown["site"]["revision"], shown["site"]["replicas"]) == ("tool:v2", None, [])
    finally:
        tracker.close()


def test_a_push_of_another_tag_waits_for_that_tags_publish():
    """A cycle that published v1 takes v1's push and a push naming no tag;
    v2's waits for v2's publish (before: every push of the dest went)."""
    delivery_log = DeliveryLog([])
    delivery_log.pushed("app", "v1", 100.0, 101.0)
    delivery_log.pushed("app", "v2", 110.0, 111.0)
    delivery_log.pushed("app", None, 120.0, 121.0)
    delivery_log.pushed("other", "v1", 130.0, 131.0)
    assert delivery_log.take_pushes([("app", "v1")], 200.0) == {("app", "v1"): 100.0, ("app", None): 120.0}
    assert delivery_log.take_pushes([("app", "v2")], 200.0) == {("app", "v2"): 110.0}
    assert delivery_log.take_pushes([("other", "v1")], 130.5) == {}  # received after the cycle began
