"""One backoff, in the state database (issue #19): the record stage writes when
a failing entry or tag is due again, the service schedules its retries from
that alone, and a restart keeps backing off instead of polling a failing
registry at once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest

from reconciler.reconcile import Reconciler
from reconciler.service.scheduler import Service
from reconciler.watchlist import load_watchlist
from tests.garbage_registry import GarbageRegistry

HOUR = 3600


@pytest.fixture
def garbage() -> Iterator[GarbageRegistry]:
    server = GarbageRegistry()
    yield server
    server.close()


def _watchlist(tmp_path: Path, garbage: GarbageRegistry, healthy: str) -> Path:
    path = tmp_path / "watchlist.toml"
    path.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                    f'[registries."{garbage.host}"]\ninsecure = true\n[registries."{healthy}"]\ninsecure = true\n'
                    f'[[image]]\nsource = "{garbage.host}/hostile/tags-notjson"\ntag_pattern = "."\ndest = "bad"\n'
                    f'interval = "{HOUR}s"\n'
                    f'[[image]]\nsource = "{healthy}/fixtures/basic"\ntags = ["v1"]\ndest = "good"\n'
                    f'interval = "{HOUR}s"\n')
    return path


def _run_once(path: Path, now: float) -> None:
    reconciler = Reconciler(load_watchlist(path), clock=lambda: now, backoff_base=60)
    try:
        reconciler.run_once()
    finally:
        reconciler.close()


def test_an_entry_failing_as_a_whole_backs_off_and_a_success_clears_it(tmp_path, garbage, fixture_registry):
    path = _watchlist(tmp_path, garbage, fixture_registry.host)
    for n, delay in enumerate((60, 120, 240), start=1):  # 1, 2, 4 minutes: one more failure each time
        _run_once(path, now=1000.0 * n)
        reconciler = Reconciler(load_watchlist(path))
        try:
            failing = reconciler.state.entry_failure("bad")
            assert failing is not None and failing.failures == n and "cannot list tags" in failing.failure_reason
            assert reconciler.state.retry_due() == {"bad": 1000.0 * n + delay}
        finally:
            reconciler.close()
    # The same dest, now listable (exact tags of a healthy registry): it no longer fails.
    healthy = path.read_text().replace(f'{garbage.host}/hostile/tags-notjson"\ntag_pattern = "."',
                                       f'{fixture_registry.host}/fixtures/basic"\ntags = ["latest"]')
    path.write_text(healthy)
    _run_once(path, now=5000.0)
    reconciler = Reconciler(load_watchlist(path))
    try:
        assert reconciler.state.entry_failure("bad") is None and reconciler.state.retry_due() == {}
    finally:
        reconciler.close()


def test_a_restarted_service_keeps_backing_off_a_failing_entry(tmp_path, garbage, fixture_registry):
    path = _watchlist(tmp_path, garbage, fixture_registry.host)
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    _run_once(path, now=now)  # the failure before the restart: due again a minute later
    watchlist = load_watchlist(path)
    service = Service(watchlist, Reconciler(watchlist))
    try:
        service.start()
        first_poll = {e.dest: service.scheduler.get_job(f"poll-{e.index}").next_run_time.timestamp()
                      for e in watchlist.images}
        status = {image["dest"]: image for image in service.status()["images"]}
    finally:
        service.stop()
        service.reconciler.close()
    # Not at once, nor a whole interval later: when the backoff before the restart said.
    assert now + 59 <= first_poll["bad"] <= now + 61, first_poll
    # The entry's error is the state's, so the page shows it after a restart too.
    assert status["bad"]["error"] and "cannot list tags" in status["bad"]["error"]["reason"]
    assert status["good"]["error"] is None


def test_an_entry_failing_as_a_whole_waits_for_its_own_time_not_its_stale_tag_rows(tmp_path):
    """Its tags failed earlier (due again long ago); now its listing fails: the
    tags were not tried, so only the entry's own backoff counts. Taking the
    earliest of all would retry at once, again and again."""
    from reconciler.state import StateDB, TagKey

    state = StateDB(tmp_path / "state.db")
    try:
        state.record_failure(TagKey("app", "v1", "linux/amd64", "reg/app", "app:v1"), "HTTP 429", next_due=1060.0,
                             now=1000.0)
        state.record_failure(TagKey("other", "v1", "linux/amd64", "reg/o", "other:v1"), "HTTP 429", next_due=1070.0,
                             now=1000.0)
        state.record_entry_failure("app", "reg/app", "cannot list tags: HTTP 429", next_due=1300.0, now=1120.0)
        assert state.retry_due() == {"app": 1300.0, "other": 1070.0}
    finally:
        state.close()


def test_the_failure_of_an_entry_no_longer_watched_is_forgotten_at_start(tmp_path, garbage, fixture_registry):
    """Its dest taken by a new entry later, that entry starts afresh: no
    inherited error on the page, no delayed first poll."""
    path = _watchlist(tmp_path, garbage, fixture_registry.host)
    _run_once(path, now=1000.0)
    path.write_text(path.read_text().split("[[image]]")[0] + "[[image]]" + path.read_text().split("[[image]]")[2])
    reconciler = Reconciler(load_watchlist(path))
    try:
        assert reconciler.state.entry_failure("bad") is None and "bad" not in reconciler.state.retry_due()
    finally:
        reconciler.close()
