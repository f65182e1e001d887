"""Several publisher nodes on the real gateway: one watchlist shared out by
lease path (`reconcile --target <name>` on each node), reconcilers publishing
at the same time, overlapping leases, a node killed (before its publish, or
during it: before or after the gateway commits, the whole node or reconciler
alone), the gateway restarted and a lease that expires under a run
(tests/cvmfs_nodes.py).

Every scenario checks every revision it published, not only the last: each
publish makes an auto-tag, and each revision's catalogs (read over HTTP) must
show every tag link pointing at a complete image, the same tree as in the
final revision; then `cvmfs_server check` is clean and no node is left in a
transaction.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from tests import cvmfs_nodes, cvmfs_real
from tests.cvmfs_nodes import Node, finish, kill_group, read_calls, wait_for
from tests.treecompare import apply_image

GW = cvmfs_real.GW_REPO
# What we add to every image (Apptainer's files, bind points, the catalog marker);
# `etc` and `var` when the image has none.
_OURS = (".singularity.d", "cvmfs", "srv", "dev", "proc", "sys", "home", "root", "tmp", "var/tmp", ".run", ".exec",
         ".shell", ".test", "environment", "singularity", ".cvmfscatalog")
_OUR_PARENTS = ("etc", "var")


@pytest.fixture
def repo(tmp_path):
    cvmfs_real.require()
    cvmfs_real.fresh_repository(GW, gateway=True)
    yield cvmfs_nodes.published_revision(GW)
    # The host's mount shows other nodes' revisions only after its own remount (an
    # abort does one): the next fresh_repository must see everything to empty it.
    cvmfs_real.assert_healthy(GW)
    cvmfs_real._run("transaction", GW)
    cvmfs_real._run("abort", "-f", GW)


def sharded(tmp_path: Path, host: str, entries: Dict[str, List[str]]) -> Path:
    """One watchlist: a [publish.<node>] target per node, each on lease path
    <node> of the gateway repository, and entries (fixture, tag, dest) by node."""
    text = "".join(f'[publish.{node}]\nbackend = "cvmfs"\nrepository = "{GW}"\nlease_path = "{node}"\n'
                   for node in entries)
    text += f'[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\n'
    for node, images in entries.items():
        for spec in images:
            fixture, tag, dest = spec.split(" ")
            text += (f'[[image]]\nsource = "{host}/fixtures/{fixture}"\ntags = ["{tag}"]\ndest = "{dest}"\n'
                     f'publish = "{node}"\n')
    path = tmp_path / "watchlist.toml"
    path.write_text(text)
    return path


def image_paths(built, scratch: Path) -> Tuple[Set[str], Set[str]]:
    """The paths applying every layer of a fixture image gives, and those of
    them that are device nodes or FIFOs."""
    apply_image(built, scratch)
    found, special = set(), set()
    for dirpath, dirnames, filenames in os.walk(scratch):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found.add(os.path.relpath(path, scratch))
            if stat.S_ISCHR(os.lstat(path).st_mode) or stat.S_ISBLK(os.lstat(path).st_mode) \
                    or stat.S_ISFIFO(os.lstat(path).st_mode):
                special.add(os.path.relpath(path, scratch))
    return found, special


def check_every_revision(start: int, scratch: Path, expected: Dict[str, object], images) -> int:
    """Every revision after `start`: each tag link names a complete image
    (its completion record there, the same tree as in the last revision). The
    last revision holds exactly the `expected` links ({"a/app:v1": fixture
    name}), each image as applying its layers gives. Returns how many
    revisions were checked."""
    end = cvmfs_nodes.published_revision(GW)
    tags = cvmfs_nodes.revisions(GW)
    missing = set(range(start + 1, end + 1)) - set(tags)
    assert not missing, f"revisions without a named snapshot: {sorted(missing)}"
    scratch.mkdir()
    final = cvmfs_nodes.read_tree(GW, tags[end], scratch)
    links = cvmfs_nodes.tag_links(final)
    assert set(links) == set(expected)
    for link, fixture in expected.items():
        published = {p for p in final.below(links[link]) if not p.startswith(_OURS)}
        want, special = image_paths(images[fixture], scratch / link.replace("/", "_").replace(":", "_"))
        want = {p for p in want if not p.startswith(_OURS)}
        # Measured on 2.11.5: a publish through the gateway drops device nodes and FIFOs
        # (a stratum 0's own publish keeps them).
        assert published - set(_OUR_PARENTS) == want - special - set(_OUR_PARENTS), link
    for revision in range(start + 1, end):
        tree = cvmfs_nodes.read_tree(GW, tags[revision], scratch)
        for link, image in cvmfs_nodes.tag_links(tree).items():
            assert image + ".complete" in tree.entries, f"revision {revision}: {link} -> {image} is not complete"
            assert tree.below(image) == final.below(image), f"revision {revision}: {link} differs from the last"
    return end - start


def test_two_nodes_publish_at_the_same_time(repo, tmp_path, fixture_registry, fixture_images):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app", "special latest tools"],
                                         "b": ["edges latest app2", "chain-v1 latest chain"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    with cvmfs_nodes.nodes(GW, tmp_path, ["b"]) as started:
        here, node_b = Node("a"), started["b"]
        # Each waits, once its transaction is open, for the other's: both leases are held at once.
        runs = {"a": here.reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path, NODE_MEET="b"),
                "b": node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path, NODE_MEET="a")}
        results = {name: finish(proc) for name, proc in runs.items()}
        for name, (code, out) in results.items():
            assert code == 0, f"node {name}: {out}"
        # The gateway's publish drops device nodes and FIFOs (checked below): each node says so.
        assert "fixtures/special:latest: the image has 3 device nodes or FIFOs (such as /dev/null), which a publish " \
               "through the gateway drops" in results["a"][1]
        assert "fixtures/chain-v1:latest: the image has 1 device nodes or FIFOs" in results["b"][1]
        assert "fixtures/edges:latest: the image has" not in results["b"][1]
        assert not node_b.in_transaction(GW)
    calls = read_calls(sync)
    opened = [c.end for c in calls if c.argv[0] == "transaction" and c.code == 0]
    published = [c for c in calls if c.argv[0] == "publish"]
    assert sorted(c.argv[-1] for c in published) == [f"{GW}/a", f"{GW}/b"] and all(c.code == 0 for c in published)
    assert len(opened) == 2 and max(opened) < min(c.start for c in published)  # both leases open together
    checked = check_every_revision(repo, tmp_path / "revisions", {
        "a/app:v1": "basic", "a/tools:latest": "special", "b/app2:latest": "edges", "b/chain:latest": "chain-v1"},
        fixture_images)
    assert checked == 2  # one revision per node's publish


def test_an_overlapping_lease_is_refused_with_the_reason(repo, tmp_path, fixture_registry, fixture_images):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    with cvmfs_nodes.nodes(GW, tmp_path, ["other"]) as started:
        other = started["other"]
        other.server("transaction", f"{GW}/a")  # another publisher holds the lease on /a
        try:
            code, out = finish(Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
        finally:
            other.server("abort", "-f", f"{GW}/a")
    assert code == 1, out
    assert f"cvmfs_server transaction {GW}/a failed (exit 16): the lease path is busy: another publisher " \
           "holds an overlapping lease" in out
    assert not cvmfs_real.in_transaction(GW)
    code, out = finish(Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))  # the lease is free again
    assert code == 0, out
    check_every_revision(repo, tmp_path / "revisions", {"a/app:v1": "basic"}, fixture_images)


def test_a_node_killed_mid_publish_while_the_other_goes_on(repo, tmp_path, fixture_registry, fixture_images):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app"], "b": ["edges latest app2"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    with cvmfs_nodes.nodes(GW, tmp_path, ["b"]) as started:
        node_b = started["b"]
        doomed = node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path, NODE_HOLD="publish")
        try:
            wait_for(sync / "b.holding", what="node b's publish", proc=doomed)  # its layers are applied
            code, out = finish(Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
            assert code == 0, out  # a publishes while b's lease is held
        finally:
            kill_group(doomed)  # kill -9 of b's reconciler and its cvmfs_server, mid-publish
        assert node_b.in_transaction(GW)
        code, out = finish(node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path))
        assert code == 0, out
        assert "aborting the transaction left open by an interrupted run of reconciler" in out
        assert not node_b.in_transaction(GW)
    check_every_revision(repo, tmp_path / "revisions", {"a/app:v1": "basic", "b/app2:latest": "edges"},
                         fixture_images)


def test_gateway_restarted_mid_transaction(repo, tmp_path, fixture_registry, fixture_images):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    run = Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path, NODE_HOLD="publish")
    try:
        wait_for(sync / "a.holding", what="the publish", proc=run)
        cvmfs_nodes.stop_gateway()
        cvmfs_nodes.start_gateway()
        (sync / "a.go").touch()
        code, out = finish(run)
    finally:
        if run.poll() is None:
            kill_group(run)
        if not cvmfs_nodes.gateway_running():
            cvmfs_nodes.start_gateway()
    assert code == 1, out
    assert f"cvmfs_server publish {GW}/a failed (exit 1): the gateway lost the lease's session: it was restarted " \
           "while the transaction was open: " in out and "aborting the transaction" in out
    assert "Executed Command" not in out and "cvmfs_swissknife" not in out  # the reason, not the command line
    assert not cvmfs_real.in_transaction(GW)
    assert cvmfs_nodes.published_revision(GW) == repo  # nothing was published
    code, out = finish(Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
    assert code == 0, out
    check_every_revision(repo, tmp_path / "revisions", {"a/app:v1": "basic"}, fixture_images)


def _leases() -> dict:
    with urllib.request.urlopen("http://localhost:4929/api/v1/leases", timeout=10) as answer:
        return json.loads(answer.read()).get("data") or {}


def test_a_lease_that_expires_under_a_slow_run(repo, tmp_path, fixture_registry, fixture_images):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    config = cvmfs_nodes.GATEWAY_CONFIG
    original = config.read_text()
    settings = json.loads(original)
    settings["max_lease_time"] = 2  # seconds; 7200 here, 7200 by default
    try:
        config.write_text(json.dumps(settings))
        cvmfs_nodes.stop_gateway()
        cvmfs_nodes.start_gateway()
        run = Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path, NODE_HOLD="publish")
        try:
            wait_for(sync / "a.holding", what="the publish", proc=run)
            deadline = time.monotonic() + 30
            while _leases():  # the gateway drops an expired lease when asked
                assert time.monotonic() < deadline, f"the lease did not expire: {_leases()}"
                time.sleep(0.2)
            (sync / "a.go").touch()
            code, out = finish(run)
        finally:
            if run.poll() is None:
                kill_group(run)
    finally:
        config.write_text(original)
        if cvmfs_nodes.gateway_running():
            cvmfs_nodes.stop_gateway()
        cvmfs_nodes.start_gateway()
    assert code == 1, out
    assert f"cvmfs_server publish {GW}/a failed (exit 1): the gateway no longer holds this node's lease: it " \
           "expired (the transaction was open longer than the gateway's max_lease_time" in out, out
    assert "invalid lease" in out and "cvmfs_swissknife" not in out
    assert not cvmfs_real.in_transaction(GW)
    code, out = finish(Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
    assert code == 0, out
    check_every_revision(repo, tmp_path / "revisions", {"a/app:v1": "basic"}, fixture_images)


def test_an_entry_moved_to_another_node(repo, tmp_path, fixture_registry, fixture_images):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app", "edges latest keep"], "b": ["special latest tools"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    here = Node("a")
    with cvmfs_nodes.nodes(GW, tmp_path, ["b"]) as started:
        node_b = started["b"]
        for node in (here, node_b):
            code, out = finish(node.reconcile(watchlist, node.name, sync, wrapper, cwd=tmp_path))
            assert code == 0, out
        moved = sharded(tmp_path, host, {"a": ["edges latest keep"], "b": ["special latest tools", "basic v1 app"]})
        # The new node first: the tag is then published under both leases for a while, never under none.
        code, out = finish(node_b.reconcile(moved, "b", sync, wrapper, cwd=tmp_path))
        assert code == 0, out
        tags = cvmfs_nodes.revisions(GW)
        between = cvmfs_nodes.tag_links(cvmfs_nodes.read_tree(GW, tags[max(tags)], tmp_path))
        assert {"a/app:v1", "b/app:v1"} <= set(between)
        code, out = finish(here.reconcile(moved, "a", sync, wrapper, cwd=tmp_path))
        assert code == 0, out
        assert "  removed   app:v1" in out, out  # the old node drops the tag it no longer serves
    check_every_revision(repo, tmp_path / "revisions", {"a/keep:latest": "edges", "b/tools:latest": "special",
                                                        "b/app:v1": "basic"}, fixture_images)


def test_gateway_down_when_the_cycle_opens_its_lease(repo, tmp_path, fixture_registry, fixture_images):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    try:
        cvmfs_nodes.stop_gateway()
        code, out = finish(Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
    finally:
        cvmfs_nodes.start_gateway()
    assert code == 1, out
    assert f"cvmfs_server transaction {GW}/a failed (exit 1): the gateway did not answer the lease request: check " \
           "that cvmfs_gateway runs and answers at http://localhost:4929/api/v1; the next cycle tries again: " in out
    assert "cannot acquire lease" in out and "Stacktrace" not in out and "libcvmfs_server" not in out
    assert not cvmfs_real.in_transaction(GW)
    code, out = finish(Node("a").reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
    assert code == 0, out
    check_every_revision(repo, tmp_path / "revisions", {"a/app:v1": "basic"}, fixture_images)


def test_reconciler_alone_killed_while_its_transaction_opens(repo, tmp_path, fixture_registry, fixture_images):
    """A kill -9 of reconciler alone (not its process group: the OOM killer)
    while `cvmfs_server transaction` runs: the command goes on and opens the
    transaction after reconciler is gone. The marker written before the
    command ("opening") and the transaction's start tell the next run it is ours."""
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    here = Node("a")
    run = here.reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path, NODE_HOLD_AFTER="transaction")
    try:
        wait_for(sync / "a.holding", what="the transaction", proc=run)
        os.kill(run.pid, signal.SIGKILL)  # reconciler only; its cvmfs_server goes on
        run.communicate(timeout=60)
    finally:
        (sync / "a.go").touch()
    try:
        assert cvmfs_real.in_transaction(GW)  # it was open when the wrapper held it
        code, out = finish(here.reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
    finally:
        if cvmfs_real.in_transaction(GW):
            here.server("abort", "-f", f"{GW}/a", check=False)
    assert code == 0, out
    assert "aborting the transaction left open by an interrupted run of reconciler" in out
    check_every_revision(repo, tmp_path / "revisions", {"a/app:v1": "basic"}, fixture_images)


def test_an_opening_marker_never_claims_a_later_transaction(repo, tmp_path, fixture_registry):
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"a": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    marker = tmp_path / "state" / "targets" / "a" / "cvmfs-transaction.json"
    marker.parent.mkdir(parents=True)
    # A run that died an hour ago while opening a transaction (which never opened) ...
    marker.write_text(json.dumps({"target": f"{GW}/a", "pid": gone.pid, "start_time": 1, "opened": time.time() - 3600,
                                  "opening": True}))
    here = Node("a")
    here.server("transaction", f"{GW}/a")  # ... and someone else's transaction, opened now
    try:
        code, out = finish(here.reconcile(watchlist, "a", sync, wrapper, cwd=tmp_path))
        assert cvmfs_real.in_transaction(GW)  # not ours: left alone
    finally:
        here.server("abort", "-f", f"{GW}/a", check=False)
    assert code == 1, out
    assert "was opening a transaction, but the one open now did not begin then: someone else's, left alone" in out
    assert f"cvmfs_server transaction {GW}/a failed (exit 17)" in out
    assert not marker.exists()


# The request that commits a lease (cvmfs 2.11.5 gateway/internal/gateway/frontend/frontend.go,
# POST /api/v1/leases/:token): the last step of a publish through the gateway.
_COMMIT = r"^/api/v1/leases/[^/?]+$"


@pytest.mark.parametrize("committed", [False, True], ids=["before-the-gateway-commits", "after-the-gateway-committed"])
def test_a_node_killed_during_its_gateway_publish(repo, tmp_path, fixture_registry, fixture_images, committed):
    """kill -9 of a node's reconciler and its `cvmfs_server publish` (the
    process group) while the publish talks to the gateway: its lease's changes
    are uploaded and the commit request is on its way (held by a proxy between
    the node and the gateway). Either the gateway never got the commit (the
    lease stays held at the gateway: another node cannot take that path until
    the node's next run aborts it) or it committed and the node never heard
    (the lease is gone, the node still in its transaction). Either way every
    revision is complete and the node's next run converges."""
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"b": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    proxy = cvmfs_nodes.GatewayProxy()
    try:
        with cvmfs_nodes.nodes(GW, tmp_path, ["b"]) as started:
            node_b = started["b"]
            proxy.route(node_b, GW)
            proxy.hold("POST", _COMMIT, forward=committed)
            doomed = node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path, NODE_DIRECT="publish")
            try:
                cvmfs_nodes.wait_for_event(proxy.held, "the publish's commit request", doomed)
            finally:
                kill_group(doomed)
                proxy.release()
            assert node_b.in_transaction(GW)
            if committed:
                assert cvmfs_nodes.published_revision(GW) == repo + 1
                assert not _leases()  # the commit released it
            else:
                assert cvmfs_nodes.published_revision(GW) == repo
                assert list(_leases()) == [f"{GW}/b"]  # held at the gateway for max_lease_time (2 hours here)
                elsewhere = tmp_path / "elsewhere"  # another node (this host), with its own state
                elsewhere.mkdir()
                code, out = finish(Node("a").reconcile(sharded(elsewhere, host, {"b": ["basic v1 app"]}), "b", sync,
                                                       wrapper, cwd=elsewhere))
                assert code == 1, out  # it cannot have the lease, and is told why and what to do
                assert f"cvmfs_server transaction {GW}/b failed (exit 16): the lease path is busy: another publisher " \
                       "holds an overlapping lease (GET /api/v1/leases on the gateway lists them; one whose run was " \
                       "killed is held until `cvmfs_server abort -f` on its node, which reconciler runs at its next " \
                       "start there, or until the gateway's max_lease_time)" in out, out
                assert "Path busy. Time remaining = " in out  # CernVM-FS says for how long
            code, out = finish(node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path))
            assert code == 0, out
            assert "aborting the transaction left open by an interrupted run of reconciler" in out
            assert not node_b.in_transaction(GW)
            assert not _leases()
        taken = Node("a").server("transaction", f"{GW}/b", check=False)  # free for any node again
        if cvmfs_real.in_transaction(GW):
            Node("a").server("abort", "-f", GW)
        assert taken.returncode == 0, taken
    finally:
        proxy.close()
    check_every_revision(repo, tmp_path / "revisions", {"b/app:v1": "basic"}, fixture_images)


def test_reconciler_alone_killed_during_its_gateway_publish(repo, tmp_path, fixture_registry, fixture_images):
    """kill -9 of reconciler alone (the OOM killer) while its `cvmfs_server
    publish` talks to the gateway (the gateway has committed; its answer is
    held by a proxy): the publish must go on to the end though nobody reads
    its output any more, a run started meanwhile must leave it alone (an
    abort then would fail on the publish's lock, or cut it short), and the
    run after it has nothing left to do. Before: the publish died of SIGPIPE
    at its next line of output, after the gateway's commit and before the
    node closed its transaction, and the run meanwhile failed to start,
    telling the admin to abort a running publish."""
    host = fixture_registry.host
    watchlist = sharded(tmp_path, host, {"b": ["basic v1 app"]})
    sync, wrapper = tmp_path / "sync", cvmfs_nodes.write_wrapper(tmp_path / "bin")
    sync.mkdir()
    proxy = cvmfs_nodes.GatewayProxy()
    try:
        with cvmfs_nodes.nodes(GW, tmp_path, ["b"]) as started:
            node_b = started["b"]
            proxy.route(node_b, GW)
            proxy.hold("POST", _COMMIT, forward=True)
            run = node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path, NODE_DIRECT="publish")
            try:
                cvmfs_nodes.wait_for_event(proxy.held, "the publish's commit request", run)
                os.kill(run.pid, signal.SIGKILL)  # reconciler only; its cvmfs_server publish goes on
                run.communicate(timeout=60)
                meanwhile = finish(node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path))
            finally:
                proxy.release()
            cvmfs_nodes.wait_group_gone(run.pid, "the killed run's cvmfs_server publish")
            code, out = meanwhile
            # Its view (the node's union mount) already holds the image: nothing to do.
            assert code == 0, out
            assert out.count(f"{GW}/b: a cvmfs_server publish of the transaction an interrupted run of reconciler "
                             f"(pid {run.pid}) opened is still running (pid ") == 1, out
            assert f" holds /var/spool/cvmfs/{GW}/is_publishing.lock); leaving it to finish" in out, out
            assert "aborting" not in out and "abort -f" not in out, out
            assert not node_b.in_transaction(GW)  # the publish finished its work
            assert cvmfs_nodes.published_revision(GW) == repo + 1
            assert not _leases()
            code, out = finish(node_b.reconcile(watchlist, "b", sync, wrapper, cwd=tmp_path))
            assert code == 0, out
            assert "aborting" not in out, out
            assert cvmfs_nodes.published_revision(GW) == repo + 1  # nothing left to publish
    finally:
        proxy.close()
    check_every_revision(repo, tmp_path / "revisions", {"b/app:v1": "basic"}, fixture_images)
