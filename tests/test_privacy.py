"""No private image in a public repository, and several publish targets.

A docker-registry in token mode serves the fixture storage: `alice` may pull
every repository, an anonymous client only those the test's ACL lists (what
the anonymous probe sees). Local targets declare `visibility = "public"` where
a test needs a public one; a restricted CernVM-FS repository is made with
`cvmfs_server mkfs -V` on the real stratum 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import httpx
import pytest

from fixtures.push import FixturePusher
from reconciler.cli import main
from reconciler.errors import ConfigError
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RegistryClient, RetryPolicy
from reconciler.watchlist import load_watchlist
from tests import cvmfs_real
from tests.conftest import USERS, needs_registry
from tests.registry_server import RegistryServer, free_port, start_registry, wait_until

pytestmark = needs_registry

PASSWORD_ENV = "RECONCILER_TEST_ALICE"


@pytest.fixture
def acl_registry(tmp_path, fixture_registry, monkeypatch):
    """The fixture images behind token auth; `acl[""]` is what anyone may pull
    (fixtures/basic only, at first): tests change it between cycles."""
    acl: Dict[str, List[str]] = {"alice": ["*"], "admin": ["*"], "": ["fixtures/basic"]}
    server = start_registry(tmp_path / "registry", mode="token", storage=fixture_registry.storage, users=USERS,
                            acl=acl)
    server.acl = acl  # type: ignore[attr-defined]
    monkeypatch.setenv(PASSWORD_ENV, USERS["alice"])
    yield server
    server.stop()


def write(tmp_path: Path, registry: RegistryServer, targets: str, images: List[str]) -> Path:
    host = registry.host
    text = (targets + f'[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\nusername = "alice"\n'
            f'password_env = "{PASSWORD_ENV}"\n')
    text += "".join(f"[[image]]\nsource = \"{host}/{body}\n" for body in images)
    path = tmp_path / "watchlist.toml"
    path.write_text(text)
    return path


PUBLIC = '[publish]\nroot = "public"\nvisibility = "public"\n'
TWO_TARGETS = ('[publish.open]\nroot = "public"\nvisibility = "public"\n'
               '[publish.members]\nroot = "restricted"\n')


def stored_blobs(state_dir: Path) -> set:
    return {f"sha256:{p.name}" for p in (state_dir / "blobs" / "sha256").glob("*/*")}


def test_a_private_image_is_refused_for_a_public_target_the_public_one_publishes(tmp_path, acl_registry, capsys,
                                                                                fixture_images):
    path = write(tmp_path, acl_registry, PUBLIC, ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"',
                                                 'fixtures/edges"\ntags = ["latest"]\ndest = "edges"'])
    assert main(["--once", "--watchlist", str(path)]) == 1
    out = capsys.readouterr().out
    assert (tmp_path / "public" / "basic:v1").is_dir()
    assert not os.path.lexists(tmp_path / "public" / "edges:latest")
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and f"{acl_registry.host}/fixtures/edges:latest" in failed[0]
    assert "needs credentials" in failed[0] and "not published to [publish]" in failed[0]
    assert "private_ok = true" in failed[0] and 'visibility = \\"restricted\\"' not in failed[0]
    # Refused before any layer was downloaded.
    stored = stored_blobs(tmp_path / "state")
    assert {b.digest for b in fixture_images["basic"].blobs} & stored
    assert not {b.digest for b in fixture_images["edges"].blobs if "layer" in b.media_type} & stored


def test_a_dry_run_shows_the_refusal(tmp_path, acl_registry, capsys):
    path = write(tmp_path, acl_registry, PUBLIC, ['fixtures/edges"\ntags = ["latest"]\ndest = "edges"'])
    assert main(["--once", "--dry-run", "--watchlist", str(path)]) == 1
    assert "needs credentials" in capsys.readouterr().out
    assert not (tmp_path / "public").exists() or not any((tmp_path / "public").iterdir())


def test_a_private_image_goes_to_a_restricted_target_in_the_same_cycle(tmp_path, acl_registry):
    path = write(tmp_path, acl_registry, TWO_TARGETS,
                 ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"\npublish = "open"',
                  'fixtures/edges"\ntags = ["latest"]\ndest = "edges"\npublish = "members"'])
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        report = reconciler.run_once()
        assert [(o.entry.dest, o.status.value) for o in report.outcomes] == [("basic", "published"),
                                                                           ("edges", "published")]
        assert report.transactions == 2  # one per target
        assert reconciler.targets[0].audience.public and not reconciler.targets[1].audience.public
    finally:
        reconciler.close()
    assert (tmp_path / "public" / "basic:v1").is_dir() and not os.path.lexists(tmp_path / "public" / "edges:latest")
    assert (tmp_path / "restricted" / "edges:latest").is_dir()
    # Each target keeps its own state; the blob store is shared.
    assert (tmp_path / "state" / "targets" / "open" / "state.db").is_file()
    assert (tmp_path / "state" / "targets" / "members" / "state.db").is_file()
    assert (tmp_path / "state" / "blobs").is_dir()


def test_the_summary_of_several_targets_names_the_target_of_each_line(tmp_path, acl_registry, capsys):
    path = write(tmp_path, acl_registry, TWO_TARGETS,
                 ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"\npublish = "open"',
                  'fixtures/edges"\ntags = ["latest"]\ndest = "edges"\npublish = "members"'])
    assert main(["--once", "--watchlist", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("2 published"))
    details = lines[start + 1:start + 5]
    assert details[0].startswith("  [publish.open] (") and details[0].endswith(":")
    assert details[1].strip().startswith("published") and "basic:v1" in details[1]
    assert details[2].startswith("  [publish.members] (")
    assert details[3].strip().startswith("published") and "edges:latest" in details[3]


def test_a_single_target_summary_has_no_target_lines(tmp_path, acl_registry, capsys):
    path = write(tmp_path, acl_registry, PUBLIC, ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"'])
    assert main(["--once", "--watchlist", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[lines.index("1 published") + 1:]] == ["published"]
    assert not any("[publish" in line for line in lines)


def test_private_ok_publishes_with_a_warning_at_each_publish(tmp_path, acl_registry, capsys):
    path = write(tmp_path, acl_registry, PUBLIC,
                 ['fixtures/edges"\ntags = ["latest"]\ndest = "edges"\nprivate_ok = true'])
    assert main(["--once", "--watchlist", str(path)]) == 0
    assert (tmp_path / "public" / "edges:latest").is_dir()
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert any("private_ok = true" in w and "fixtures/edges:latest" in w for w in warnings), warnings


@pytest.fixture
def own_token_registry(tmp_path, fixture_images, monkeypatch):
    """An empty token registry of the test's own: `team/app` is pushed by the test."""
    acl: Dict[str, List[str]] = {"alice": ["*"], "admin": ["*"], "": ["team/*"]}
    pushed_to = start_registry(tmp_path / "own-push")  # anonymous: oras pushes here, into the shared storage
    server = start_registry(tmp_path / "own", mode="token", storage=pushed_to.storage, users=USERS, acl=acl)
    monkeypatch.setenv(PASSWORD_ENV, USERS["alice"])

    def push(fixture: str, tag: str) -> str:
        image = fixture_images[fixture]
        image_copy = type(image)(image.name, "team/app", image.blobs, image.manifests, [tag], image.layer_tars)
        FixturePusher(pushed_to.host).push(image_copy)
        return image.top.digest

    server.acl = acl  # type: ignore[attr-defined]
    server.push = push  # type: ignore[attr-defined]
    yield server
    server.stop()
    pushed_to.stop()


def test_an_image_that_turns_private_is_not_published_again_and_status_says_so(tmp_path, own_token_registry):
    registry = own_token_registry
    first = registry.push("basic", "stable")
    path = write(tmp_path, registry, PUBLIC, ['team/app"\ntags = ["stable"]\ndest = "app"\ninterval = "1m"'])
    now = [1_000_000.0]
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01),
                            clock=lambda: now[0])
    try:
        assert [o.status.value for o in reconciler.run_once().outcomes] == ["published"]
        link = os.readlink(tmp_path / "public" / "app:stable")
        assert first.split(":")[1] in link
        registry.acl[""] = []  # the repository turns private...
        registry.push("edges", "stable")  # ...and the tag moves
        now[0] += 61  # past the entry's interval: the kept "public" is asked again
        report = reconciler.run_once()
        assert [o.status.value for o in report.outcomes] == ["failed"]
        assert "needs credentials" in report.outcomes[0].reason
        assert os.readlink(tmp_path / "public" / "app:stable") == link  # the published image stays
        seen = reconciler.state.visibilities()[f"{registry.host}/team/app"]
        assert seen.public is False and "needs credentials" in seen.reason
        failing = reconciler.state.get("app", "stable", "linux/amd64")
        assert failing is not None and "needs credentials" in (failing.failure_reason or "")
    finally:
        reconciler.close()


def test_the_public_answer_is_kept_for_the_entrys_interval(tmp_path, own_token_registry):
    registry = own_token_registry
    registry.push("basic", "stable")
    path = write(tmp_path, registry, PUBLIC, ['team/app"\ntags = ["stable"]\ndest = "app"\ninterval = "1h"'])
    now = [1_000_000.0]
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01),
                            clock=lambda: now[0])
    try:
        reconciler.run_once()
        anonymous = [r for r in registry.token_server.requests if r.get("user") == ""]
        assert len(anonymous) == 1  # the probe's one anonymous token
        registry.push("edges", "stable")
        now[0] += 60
        assert [o.status.value for o in reconciler.run_once().outcomes] == ["published"]
        assert [r for r in registry.token_server.requests if r.get("user") == ""] == anonymous
    finally:
        reconciler.close()


def test_a_probe_that_cannot_tell_refuses_for_a_public_target(tmp_path, acl_registry, monkeypatch):
    path = write(tmp_path, acl_registry, PUBLIC, ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"'])
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=1, base_delay=0.01))
    def closed(host: str) -> RegistryClient:  # nothing listens on port 1
        return RegistryClient("127.0.0.1:1", insecure=True, retry=RetryPolicy(attempts=1, base_delay=0.01))

    monkeypatch.setattr(reconciler, "anonymous", closed)
    try:
        outcome, = reconciler.run_once().outcomes
        assert outcome.status.value == "failed"
        assert "could not tell whether" in outcome.reason and "known to be public" in outcome.reason
        assert not os.path.lexists(tmp_path / "public" / "basic:v1")
    finally:
        reconciler.close()


def test_a_restricted_target_probes_nothing(tmp_path, acl_registry):
    path = write(tmp_path, acl_registry, '[publish]\nroot = "restricted"\n',
                 ['fixtures/edges"\ntags = ["latest"]\ndest = "edges"'])
    assert main(["--once", "--watchlist", str(path)]) == 0
    assert not [r for r in acl_registry.token_server.requests if r.get("user") == ""]


# -- the watchlist -------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    (TWO_TARGETS + '[[image]]\nsource = "alpine"\ntags = ["1"]\n',
     r"image\[1\] \(docker.io/library/alpine\).publish: required with several targets: one of 'open', 'members'"),
    (TWO_TARGETS + '[[image]]\nsource = "alpine"\ntags = ["1"]\npublish = "member"\n',
     r'publish: unknown target "member" \(did you mean "members"\?\)'),
    (TWO_TARGETS + '[defaults]\npublish = "nobody"\n[[image]]\nsource = "alpine"\ntags = ["1"]\n',
     r'defaults.publish: unknown target "nobody"'),
    ('[publish]\nroot = "x"\n[[image]]\nsource = "alpine"\ntags = ["1"]\npublish = "x"\n',
     r"publish: names a target, but the watchlist has one \[publish\] table"),
    ('[publish]\nroot = "x"\n[publish.other]\nroot = "y"\n[[image]]\nsource = "alpine"\ntags = ["1"]\n',
     r"publish.root: \[publish\] holds named targets \(\[publish.other\]\) beside keys of its own"),
    ('[publish.a]\nroot = "x"\n[publish.b]\nroot = "x/y"\n[[image]]\nsource = "alpine"\ntags = ["1"]\npublish = "a"\n',
     r"\[publish.b\]: publishes to .*/x/y, which overlaps \[publish.a\]'s"),
    ('[publish.a]\nbackend = "cvmfs"\nrepository = "r.org"\nlease_path = "a"\n'
     '[publish.b]\nbackend = "cvmfs"\nrepository = "r.org"\nlease_path = "b"\n',
     r"\[publish.b\]: the same CernVM-FS repository as \[publish.a\] \(r.org\); one node publishes"),
    ('[publish.a]\nroot = "x"\nvisibility = "secret"\n', r"publish.a.visibility: expected one of 'public', 'restricted'"),
    ('[publish."a b"]\nroot = "x"\n', r"publish.a b: expected a target name"),
    ('[publish.a]\nroot = "x"\nrooot = "y"\n', r'publish.a: unknown key "rooot" \(did you mean "root"\?\)'),
])
def test_target_mistakes_are_config_errors(tmp_path, text, message):
    path = tmp_path / "watchlist.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_watchlist(path)


def test_defaults_publish_chooses_the_target_of_entries_that_name_none(tmp_path):
    path = tmp_path / "watchlist.toml"
    path.write_text(TWO_TARGETS + '[defaults]\npublish = "members"\n[[image]]\nsource = "alpine"\ntags = ["1"]\n'
                    '[[image]]\nsource = "busybox"\ntags = ["1"]\npublish = "open"\n')
    watchlist = load_watchlist(path)
    assert [e.publish for e in watchlist.images] == ["members", "open"]
    assert [t.name for t in watchlist.publish_targets] == ["open", "members"]
    assert [e.source.name for e in watchlist.for_target(watchlist.publish_targets[1]).images] == [
        "docker.io/library/alpine"]


# -- CernVM-FS: a repository that says who may read it -----------------------------

def test_a_restricted_cvmfs_repository_takes_a_private_image(tmp_path, acl_registry):
    cvmfs_real.require()
    mount = cvmfs_real.fresh_repository(cvmfs_real.VOMS_REPO)
    path = write(tmp_path, acl_registry, f'[publish]\nbackend = "cvmfs"\nrepository = "{cvmfs_real.VOMS_REPO}"\n',
                 ['fixtures/edges"\ntags = ["latest"]\ndest = "edges"'])
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        assert not reconciler.targets[0].audience.public  # from CVMFS_VOMS_AUTHZ, no key in the file
        assert [o.status.value for o in reconciler.run_once().outcomes] == ["published"]
    finally:
        reconciler.close()
    assert (mount / "edges:latest").is_dir()
    cvmfs_real.assert_healthy(cvmfs_real.VOMS_REPO)


def test_a_cvmfs_repository_called_restricted_without_a_membership_requirement_is_refused(tmp_path, acl_registry,
                                                                                         capsys):
    cvmfs_real.require()
    cvmfs_real.fresh_repository(cvmfs_real.REPO)
    path = write(tmp_path, acl_registry, f'[publish]\nbackend = "cvmfs"\nrepository = "{cvmfs_real.REPO}"\n'
                                         'visibility = "restricted"\n',
                 ['fixtures/edges"\ntags = ["latest"]\ndest = "edges"'])
    assert main(["--once", "--watchlist", str(path)]) == 3
    err = capsys.readouterr().err
    assert 'sets visibility = "restricted"' in err and "no membership requirement" in err
    assert "Traceback" not in err
    done = subprocess.run(["cvmfs_server", "list"], capture_output=True, text=True)
    assert "in transaction" not in done.stdout


# -- what an admin sees ------------------------------------------------------------

def test_status_metrics_and_page_show_the_refusal_and_the_targets(tmp_path, acl_registry):
    port = free_port()
    path = write(tmp_path, acl_registry, TWO_TARGETS + f'[service]\nlisten = "127.0.0.1:{port}"\n',
                 ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"\npublish = "open"',
                  'fixtures/edges"\ntags = ["latest"]\ndest = "edges"\npublish = "open"',
                  'fixtures/manytags"\ntags = ["t000"]\ndest = "many"\npublish = "members"'])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with (tmp_path / "service.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "--watchlist", str(path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def images() -> Dict[str, dict]:
            try:
                return {i["dest"]: i for i in httpx.get(f"{base}/status", timeout=2).json()["images"]}
            except httpx.HTTPError:
                return {}

        def settled() -> bool:
            got = images()
            return len(got) == 3 and all(i["tags"] and i["tags"][0]["state"] != "waiting" for i in got.values())

        wait_until(settled, timeout=60, what="/status to show the first cycle")
        got = images()
        assert [got[d]["target"].split(" ")[0] for d in ("basic", "edges", "many")] == [
            "[publish.open]", "[publish.open]", "[publish.members]"]
        assert got["basic"]["target_public"] and not got["many"]["target_public"]
        assert got["basic"]["source_public"] is True and got["edges"]["source_public"] is False
        assert got["many"]["source_public"] is None  # a restricted target probes nothing
        edges = got["edges"]["tags"][0]
        assert edges["state"] == "failing" and "needs credentials" in edges["last_error"]
        assert got["many"]["tags"][0]["state"] == "published"
        metrics = httpx.get(f"{base}/metrics").text
        assert re.search(r'reconciler_refusals_total\{image="[^"]+/fixtures/edges",policy="private"\} 1\.0', metrics)
        assert re.search(r'reconciler_source_public\{image="[^"]+/fixtures/basic"\} 1\.0', metrics)
        page = httpx.get(f"{base}/").text
        assert "private source" in page and "[publish.members]" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, (tmp_path / "service.log").read_text()[-3000:]


def test_an_entry_moved_to_another_target_leaves_the_old_one(tmp_path, acl_registry):
    images = ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"\npublish = "{}"']
    path = write(tmp_path, acl_registry, TWO_TARGETS, [images[0].format("open")])
    assert main(["--once", "--watchlist", str(path)]) == 0
    assert (tmp_path / "public" / "basic:v1").is_dir()
    write(tmp_path, acl_registry, TWO_TARGETS, [images[0].format("members")])
    assert main(["--once", "--watchlist", str(path)]) == 0
    assert (tmp_path / "restricted" / "basic:v1").is_dir()
    assert not os.path.lexists(tmp_path / "public" / "basic:v1")


def test_a_service_cycle_of_other_entries_removes_the_tags_of_an_entry_moved_away(tmp_path, acl_registry):
    # The service plans only the entries due: the target an entry left has none of them.
    image = 'fixtures/basic"\ntags = ["v1"]\ndest = "basic"\npublish = "{}"'
    other = 'fixtures/manytags"\ntags = ["t000"]\ndest = "many"\npublish = "members"'
    path = write(tmp_path, acl_registry, TWO_TARGETS, [image.format("open"), other])
    assert main(["--once", "--watchlist", str(path)]) == 0
    assert (tmp_path / "public" / "basic:v1").is_dir()
    write(tmp_path, acl_registry, TWO_TARGETS, [image.format("members"), other])
    watchlist = load_watchlist(path)
    reconciler = Reconciler(watchlist, retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        reconciler.run_once(entries=[e for e in watchlist.images if e.dest == "many"])
    finally:
        reconciler.close()
    assert not os.path.lexists(tmp_path / "public" / "basic:v1")


def test_a_target_that_fails_as_a_whole_fails_its_entries_only(tmp_path, acl_registry, monkeypatch):
    from reconciler.errors import PublishError

    path = write(tmp_path, acl_registry, TWO_TARGETS,
                 ['fixtures/basic"\ntags = ["v1"]\ndest = "basic"\npublish = "open"',
                  'fixtures/edges"\ntags = ["latest"]\ndest = "edges"\npublish = "members"'])
    reconciler = Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=2, base_delay=0.01))
    broken = reconciler.targets[0].publisher

    def cannot_recover() -> None:
        raise PublishError("cvmfs_server: the repository is gone")

    monkeypatch.setattr(broken, "needs_recovery", True)
    monkeypatch.setattr(broken, "recover", cannot_recover)
    try:
        report = reconciler.run_once()
        assert [(e.dest, reason) for e, reason in report.entry_failures] == [
            ("basic", "the cycle of [publish.open] (the publish root " + str(tmp_path / "public")
             + ") failed: cvmfs_server: the repository is gone")]
        assert [(o.entry.dest, o.status.value) for o in report.outcomes] == [("edges", "published")]
        assert reconciler.targets[0].state.entry_failure("basic") is not None
    finally:
        reconciler.close()
    assert (tmp_path / "restricted" / "edges:latest").is_dir()


def test_a_dry_run_beside_a_state_database_of_version_3(tmp_path, own_token_registry, capsys):
    import sqlite3

    registry = own_token_registry
    registry.push("basic", "stable")
    path = write(tmp_path, registry, PUBLIC, ['team/app"\ntags = ["stable"]\ndest = "app"'])
    assert main(["--once", "--watchlist", str(path)]) == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:  # as a service not yet upgraded keeps it
        conn.execute("DROP TABLE visibility_state")
    registry.push("edges", "stable")
    capsys.readouterr()
    assert main(["--once", "--dry-run", "--watchlist", str(path)]) == 0
    captured = capsys.readouterr()
    assert "planned" in captured.out and "Traceback" not in captured.err


def test_named_targets_refuse_a_transaction_marker_of_the_single_target(tmp_path, acl_registry, capsys):
    path = write(tmp_path, acl_registry, TWO_TARGETS, ['fixtures/basic"\ntags = ["v1"]\npublish = "open"'])
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "cvmfs-transaction.json").write_text("{}")
    assert main(["--once", "--watchlist", str(path)]) == 3
    assert "records a transaction opened when the watchlist had one [publish] table" in capsys.readouterr().err
