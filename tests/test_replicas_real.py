"""Push to stratum 1 on the real CernVM-FS: an image pushed to the loopback
registry, published by a cycle into the real stratum 0, and served by a real
stratum 1 (../shared/cvmfs/mkreplica.sh) once `cvmfs_server snapshot` caught
it up; the service's tracker times each step from the webhook's push time."""

from __future__ import annotations

import os
import time

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from fixtures.build import build_all
from fixtures.push import FixturePusher
from reconciler.publish.replicas import read_served, stratum0_url
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.service.delivery import DeliveryTracker
from reconciler.service.page import render_page
from reconciler.watchlist import load_watchlist
from reconciler.webhooks import RepositoryHint
from tests import cvmfs_real


def test_push_to_stratum_1_through_a_real_replica(tmp_path, monkeypatch, fixture_registry):
    cvmfs_real.require()
    repo = cvmfs_real.REPO
    cvmfs_real.fresh_repository(repo)
    s1 = cvmfs_real.replica(repo)
    cvmfs_real.snapshot(repo)  # the stratum 1 serves what the stratum 0 does before the push
    monkeypatch.setenv("PATH", f"{cvmfs_real.SHIM_DIR}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CVMFS_CALL_LOG", str(tmp_path / "calls.jsonl"))
    host = fixture_registry.host
    tag = f"push-{int(time.time() * 1000)}"
    watchlist = tmp_path / "watchlist.toml"
    watchlist.write_text(f'[publish]\nbackend = "cvmfs"\nrepository = "{repo}"\nreplicas = ["{s1}"]\n'
                         f'replica_lag_max = "0s"\n[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\n'
                         f'[[image]]\nsource = "{host}/fixtures/basic"\ntags = ["{tag}"]\ndest = "basic"\n')
    loaded = load_watchlist(watchlist)
    http = httpx.Client(timeout=10)
    metrics = CollectorRegistry()
    tracker = DeliveryTracker(loaded, metrics, http=http)
    reconciler = Reconciler(loaded, retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        assert tracker.targets[""].stratum0 == stratum0_url(repo) == f"http://localhost/cvmfs/{repo}"
        before = read_served(http, s1).revision
        image = build_all()["basic"]
        FixturePusher(host).push_manifest(image.repository, image.top, tag)  # its blobs are there already
        pushed = time.time()
        # What a registry's webhook says (its time parsed in test_delivery.py).
        tracker.hook([RepositoryHint("fixtures/basic", pushed_at=pushed, tag=tag)], loaded.images, received=time.time())

        started = time.time()
        report = reconciler.run_once()
        ended = time.time()
        assert not report.failed, report.summary()
        (delivery,) = tracker.cycle_done(report, started, ended)
        published = read_served(http, f"http://localhost/cvmfs/{repo}").revision
        assert delivery.revision == published > before and delivery.pushed == pushed
        assert delivery.replica_time(s1) is None  # not snapshotted yet: the stratum 1 serves the old revision
        status = tracker.status()
        assert status["replicas"][0]["revision"] == before and status["replicas"][0]["lagging"]
        assert '<span class="bad">lagging' in render_page({"now": None, "images": [], "delivery": status})

        cvmfs_real.snapshot(repo)
        caught = tracker.poll_replicas(force=True)
        assert [c.url for c in caught] == [s1]
        served = caught[0].delivery.replica_time(s1)
        assert served is not None and pushed <= delivery.seen <= delivery.published <= served
        assert read_served(http, s1).revision >= delivery.revision
        status = tracker.status()
        assert not status["replicas"][0]["lagging"]
        times = status["images"][0]
        exported = generate_latest(metrics).decode()
        assert f'reconciler_push_to_replica_seconds_count{{replica="{s1}"}} 1.0' in exported
        print(f"\npush to stratum 1 on loopback: push→publish {times['push_to_publish_seconds']:.2f}s, "
              f"seen→publish {times['seen_to_publish_seconds']:.2f}s, publish→stratum 1 "
              f"{times['replicas'][0]['after_publish_seconds']:.2f}s (a snapshot), push→stratum 1 "
              f"{times['replicas'][0]['after_push_seconds']:.2f}s")
    finally:
        reconciler.close()
        tracker.close()
        http.close()
    cvmfs_real.assert_healthy(repo)
