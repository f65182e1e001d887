"""One watchlist shared out among publisher nodes: `reconcile --target <name>`
runs one [publish.<name>] target and its entries, with the target's own state
directory (tests/test_nodes.py runs it on the real gateway)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reconciler.errors import BusyError, ConfigError
from reconciler.reconcile import Reconciler
from reconciler.watchlist import load_watchlist

SHARDED = ('[publish.a]\nbackend = "cvmfs"\nrepository = "r.org"\nlease_path = "a"\n'
           '[publish.b]\nbackend = "cvmfs"\nrepository = "r.org"\nlease_path = "b"\n'
           '[[image]]\nsource = "alpine"\ntags = ["1"]\npublish = "a"\n'
           '[[image]]\nsource = "busybox"\ntags = ["1"]\npublish = "b"\n'
           '[[image]]\nsource = "debian"\ntags = ["12"]\npublish = "b"\n')


def write(tmp_path, text):
    path = tmp_path / "watchlist.toml"
    path.write_text(text)
    return path


def test_a_node_runs_its_target_its_entries_and_its_own_state(tmp_path):
    path = write(tmp_path, SHARDED)
    node = load_watchlist(path, node="b")
    assert [t.name for t in node.publish_targets] == ["b"] and node.publish.target.lease_path == "b"
    assert [e.source.name for e in node.images] == ["docker.io/library/busybox", "docker.io/library/debian"]
    assert node.state_dir == tmp_path / ".reconciler" / "targets" / "b"
    assert node.target_state_dir(node.publish) == node.state_dir  # the state database where one process keeps it


def test_one_process_still_refuses_two_targets_on_one_repository(tmp_path):
    with pytest.raises(ConfigError, match=r"run each on its own publisher node with `reconcile --target a` / "
                                          r"`--target b`"):
        load_watchlist(write(tmp_path, SHARDED))


@pytest.mark.parametrize("text, node, message", [
    (SHARDED, "c", r'--target c: watchlist.toml: unknown target "c" \(known targets here: a, b\)'),
    ('[publish]\nroot = "p"\n', "a", r"--target a: watchlist.toml has one \[publish\] table and no "
                                     r"\[publish.<name>\] ones"),
    (SHARDED.replace('lease_path = "b"', 'lease_path = "a/b"'), "a", r"\[publish.b\]: publishes to .*a/b, which "
                                                                      r"overlaps \[publish.a\]'s"),
])
def test_node_mistakes_are_config_errors(tmp_path, text, node, message):
    with pytest.raises(ConfigError, match=message):
        load_watchlist(write(tmp_path, text), node=node)


def test_two_nodes_on_one_machine_do_not_share_a_lock(tmp_path):
    text = ('[publish.a]\nroot = "pa"\n[publish.b]\nroot = "pb"\n'
            '[[image]]\nsource = "alpine"\ntags = ["1"]\npublish = "a"\n')
    path = write(tmp_path, text)
    first = Reconciler(load_watchlist(path, node="a"))
    try:
        second = Reconciler(load_watchlist(path, node="b"))  # the other node: its own state directory and lock
        second.close()
        with pytest.raises(BusyError):
            Reconciler(load_watchlist(path, node="a"))  # the same node twice is still refused
    finally:
        first.close()


def test_cli_target_unknown_is_exit_2(tmp_path):
    path = write(tmp_path, SHARDED)
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "--once", "--watchlist", str(path), "--target",
                           "c"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and 'unknown target "c"' in done.stderr
