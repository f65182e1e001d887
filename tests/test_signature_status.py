"""Provenance on /status, the page and /metrics: per published tag the key
that signed it, "no policy" where none applies, "unverified" where a policy
came after the publish."""

from __future__ import annotations

from prometheus_client import generate_latest

from reconciler.cycle.outcome import CycleReport
from reconciler.reconcile import Reconciler
from reconciler.service.metrics import Metrics
from reconciler.service.page import render_page
from reconciler.service.scheduler import Service
from reconciler.state import RepositoryVisibility, TagKey
from reconciler.watchlist import load_watchlist
from tests.cosign_signer import Signer

SOURCE = "registry.example.org/team/app"
OTHER = "registry.example.org/team/other"
# A local target in the test's directory; the tests add their [[image]] tables.
HEADER = '[publish]\nroot = "publish"\n[state]\ndir = "state"\n'


def test_status_page_and_metrics_say_who_signed_each_published_tag(tmp_path):
    signer = Signer()
    signer.write(tmp_path / "ci.pub")
    (tmp_path / "watchlist.toml").write_text(HEADER + f'''
[[image]]
source = "{SOURCE}"
tags = ["signed", "old", "new"]
dest = "app"
signature = {{ keys = ["ci.pub"] }}
[[image]]
source = "{SOURCE}"
tags = ["1"]
dest = "plain"
''')
    watchlist = load_watchlist(tmp_path / "watchlist.toml")
    reconciler = Reconciler(watchlist)
    digest = "sha256:" + "1" * 64
    where = f"{SOURCE}:sha256-111111111111….sig layer 0"
    try:
        state = reconciler.state
        state.record_success(TagKey("app", "signed", "linux/amd64", SOURCE, "app:signed"), digest, digest,
                             signature=(signer.fingerprint, where))
        state.record_success(TagKey("app", "old", "linux/amd64", SOURCE, "app:old"), digest, digest)
        state.record_success(TagKey("plain", "1", "linux/amd64", SOURCE, "plain:1"), digest, digest,
                             signature=(None, None))
        status = Service(watchlist, reconciler).status()
        metrics = Metrics()
        metrics.record(CycleReport(), 0.1, reconciler)
    finally:
        reconciler.close()
    app, plain = status["images"]
    rows = {t["tag"]: t for t in app["tags"]}
    assert (rows["signed"]["signed_by"], rows["signed"]["signed_where"]) == (signer.fingerprint, where)
    assert rows["old"]["signed_by"] == "unverified"  # published before the policy
    assert rows["new"]["signed_by"] is None  # not published yet
    assert plain["tags"][0]["signed_by"] == "no policy"
    page = render_page(status)
    assert f'signed by <span class="digest">{signer.fingerprint[:16]}</span>' in page
    assert "no policy" in page and "unverified" in page
    text = generate_latest(metrics.registry).decode()
    assert (f'reconciler_published_signer{{dest="app",platform="linux/amd64",signed_by="{signer.fingerprint}",'
            'tag="signed"} 1.0') in text
    assert 'reconciler_published_signer{dest="plain",platform="linux/amd64",signed_by="no policy",tag="1"} 1.0' \
        in text


def test_source_public_names_only_watched_repositories_and_their_last_answer(tmp_path):
    """A repository that left the watchlist, or whose last probe could not
    tell, is no longer in reconciler_source_public (before: its last 0 or 1
    stayed until the service restarted)."""
    (tmp_path / "watchlist.toml").write_text(HEADER + f'''
[[image]]
source = "{SOURCE}"
tags = ["1"]
dest = "app"
[[image]]
source = "{OTHER}"
tags = ["1"]
dest = "other"
''')
    watchlist = load_watchlist(tmp_path / "watchlist.toml")
    reconciler = Reconciler(watchlist)
    metrics = Metrics()
    try:
        state = reconciler.state
        state.record_visibility(RepositoryVisibility(SOURCE, True, "", 1.0))
        state.record_visibility(RepositoryVisibility(OTHER, False, "needs credentials", 1.0))
        state.record_visibility(RepositoryVisibility("registry.example.org/team/gone", True, "", 1.0))
        metrics.record(CycleReport(), 0.1, reconciler)
        first = generate_latest(metrics.registry).decode()
        state.record_visibility(RepositoryVisibility(OTHER, None, "probe failed", 2.0))
        metrics.record(CycleReport(), 0.1, reconciler)
        second = generate_latest(metrics.registry).decode()
    finally:
        reconciler.close()
    assert f'reconciler_source_public{{image="{SOURCE}"}} 1.0' in first
    assert f'reconciler_source_public{{image="{OTHER}"}} 0.0' in first
    assert "team/gone" not in first  # not watched: its old answer is no metric
    assert f'reconciler_source_public{{image="{SOURCE}"}} 1.0' in second
    assert "team/other" not in second  # the last probe could not tell
