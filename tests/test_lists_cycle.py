"""[[list]] watchlists end to end: images pushed to the loopback registry under
the public names a list uses (`[registries."docker.io"] address` sends Docker
Hub's requests there), published to a local target, the list edited and
broken between cycles."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, List

import pytest

from fixtures.push import FixturePusher
from reconciler.reconcile import Reconciler
from reconciler.registry.client import RetryPolicy
from reconciler.service.scheduler import Service
from reconciler.watchlist import load_watchlist
from tests.registry_server import RegistryServer, free_port, start_registry, wait_until

pytestmark = pytest.mark.registry

# What the loopback registry holds, under Docker Hub's and quay.io's names.
PUSHED = [("basic", "opensciencegrid/osgvo-el7", ["latest", "rhel7-m1", "rhel7-m2", "rhel7-x"]),
          ("edges", "library/ubuntu", ["22.04"]),
          ("basic", "ns/tool", ["1.0"])]


@pytest.fixture(scope="module")
def public_names(tmp_path_factory, fixture_images) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("lists") / "registry")
    try:
        pusher = FixturePusher(server.host)
        for fixture, repository, tags in PUSHED:
            pusher.push(replace(fixture_images[fixture], repository=repository, tags=tags))
        yield server
    finally:
        server.stop()


def write_watchlist(tmp_path: Path, address: str, form: str, list_name: str) -> Path:
    path = tmp_path / "watchlist.toml"
    path.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                    f'[registries."docker.io"]\naddress = "{address}"\ninsecure = true\n'
                    f'[registries."quay.io"]\naddress = "{address}"\ninsecure = true\n'
                    f'[[list]]\npath = "{list_name}"\nformat = "{form}"\n')
    return path


def edit(path: Path, content) -> None:
    """Write a list file as a merged pull request would, a while before the
    cycle reads it (a list changed in the last seconds waits for a later one)."""
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    then = time.time() - 60
    os.utime(path, (then, then))


def reconciler(path: Path) -> Reconciler:
    return Reconciler(load_watchlist(path), retry=RetryPolicy(attempts=1, base_delay=0.01))


def tag_links(root: Path) -> List[str]:
    """Every published tag path under root, relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*:*") if p.is_symlink())


def test_an_osg_list_publishes_follows_its_edits_and_survives_breaking(tmp_path, public_names, caplog):
    listed = tmp_path / "docker_images.txt"
    edit(listed, "# the site's list, as it is\nubuntu:22.04\nopensciencegrid/osgvo-el7:rhel7-m*\n"
                      "quay.io/ns/tool:1.0\nghcr.io/bad:1\n")
    path = write_watchlist(tmp_path, public_names.host, "osg", listed.name)
    root = tmp_path / "publish"
    r = reconciler(path)
    try:
        report = r.run_once()
        assert not report.failed, report.summary()
        assert tag_links(root) == ["library/ubuntu:22.04", "ns/tool:1.0", "opensciencegrid/osgvo-el7:rhel7-m1",
                                   "opensciencegrid/osgvo-el7:rhel7-m2"]
        assert (root / "library/ubuntu:22.04" / "etc").is_dir()
        assert "docker_images.txt:5: 'ghcr.io/bad:1'" in caplog.text

        # A merged pull request: the next cycle follows it.
        edit(listed, "opensciencegrid/osgvo-el7:rhel7-m*\nopensciencegrid/osgvo-el7:latest\n"
                          "quay.io/ns/tool:1.0\n")
        assert not r.run_once().failed
        after_edit = tag_links(root)
        assert after_edit == ["ns/tool:1.0", "opensciencegrid/osgvo-el7:latest",
                              "opensciencegrid/osgvo-el7:rhel7-m1", "opensciencegrid/osgvo-el7:rhel7-m2"]

        # A broken list keeps its last good entries: nothing is removed.
        edit(listed, b"opensciencegrid/osgvo-el7:latest\n\xff\xfe\n")
        r.run_once()
        assert tag_links(root) == after_edit
        assert "keeping its 2 entries of the last good read" in caplog.text
        links = {p: os.readlink(root / p) for p in after_edit}
    finally:
        r.close()

    # A registry that cannot list the tags: the published tags the wildcard
    # matched stay (as cvmfs-singularity-sync keeps them), the others too.
    edit(listed, "opensciencegrid/osgvo-el7:rhel7-m*\nopensciencegrid/osgvo-el7:latest\nquay.io/ns/tool:1.0\n")
    path = write_watchlist(tmp_path, f"127.0.0.1:{free_port()}", "osg", listed.name)
    r = reconciler(path)
    try:
        assert r.run_once().failed
    finally:
        r.close()
    assert {p: os.readlink(root / p) for p in tag_links(root)} == links


def test_a_ducc_wishlist_publishes_at_ducc_paths_and_survives_breaking(tmp_path, public_names, caplog):
    wishlist = tmp_path / "recipe.yaml"
    edit(wishlist, "version: 1\nuser: cvmfsunpacker\ncvmfs_repo: 'unpacked.example.org'\ninput:\n"
                        "  - 'https://registry.hub.docker.com/opensciencegrid/osgvo-el7:rhel7-m*'\n"
                        "  - 'https://registry.hub.docker.com/opensciencegrid/osgvo-el7:latest'\n"
                        "  - 'quay.io/ns/tool:1.0'\n")
    path = write_watchlist(tmp_path, public_names.host, "ducc", wishlist.name)
    root = tmp_path / "publish"
    r = reconciler(path)
    try:
        assert not r.run_once().failed
        published = ["quay.io/ns/tool:1.0", "registry.hub.docker.com/opensciencegrid/osgvo-el7:latest",
                     "registry.hub.docker.com/opensciencegrid/osgvo-el7:rhel7-m1",
                     "registry.hub.docker.com/opensciencegrid/osgvo-el7:rhel7-m2"]
        assert tag_links(root) == published
        edit(wishlist, "version: 1\ninput:\n  - 'quay.io/ns/tool:1.0'\n  - [unclosed\n")
        r.run_once()
        assert tag_links(root) == published
        assert "not a DUCC wishlist: YAML syntax error" in caplog.text
    finally:
        r.close()


def test_the_service_picks_up_a_list_edit_at_its_next_cycle(tmp_path, public_names):
    listed = tmp_path / "docker_images.txt"
    edit(listed, "quay.io/ns/tool:1.0\n")
    path = write_watchlist(tmp_path, public_names.host, "osg", listed.name)
    root = tmp_path / "publish"
    r = reconciler(path)
    service = Service(r.watchlist, r, debounce=0.0)
    service.start()
    try:
        wait_until(lambda: (root / "ns/tool:1.0").exists(), timeout=60, what="the list's first image")
        edit(listed, "quay.io/ns/tool:1.0\nubuntu:22.04\n")
        service.request([1], "test")  # the next cycle of the entry there is; it reads the list again
        wait_until(lambda: (root / "library/ubuntu:22.04").exists(), timeout=60,
                   what="the image the edit added, at a cycle after the edit")
        assert [e.label for e in service.watchlist.images] == ["docker_images.txt:1 (quay.io/ns/tool)",
                                                                "docker_images.txt:2 (docker.io/library/ubuntu)"]
        assert service.scheduler.get_job("poll-2") is not None
        # the status page lists them by their list line
        assert [i["entry"] for i in service.status()["images"]] == [e.label for e in service.watchlist.images]
    finally:
        service.stop(timeout=60)
        r.close()


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO)
