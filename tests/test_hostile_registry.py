"""A registry answering garbage on every endpoint fails its own entries only
(issue #19): beside it, a healthy registry's images publish, the exit code is
1 (an image or entry failed; not 2, which means the configuration is wrong),
the summary names each bad entry, and nothing it sent reaches the terminal or
the log as a control character or a forged line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.garbage_registry import GarbageRegistry
from tests.test_publishers import Backend, img

ROOT = Path(__file__).parents[1]
SELECTED = ("tags-notjson", "tags-shape", "error-body", "challenge", "redirect")
EXACT = ("manifest-junk", "manifest-huge", "error-body", "challenge", "redirect")


@pytest.fixture
def garbage(fixture_registry) -> Iterator[GarbageRegistry]:
    server = GarbageRegistry(upstream=fixture_registry.url)
    yield server
    server.close()


def _watchlist(backend: Backend, healthy: str, garbage: GarbageRegistry) -> Path:
    images = [img(healthy, "basic", '["v1"]', "healthy"),
              f'source = "{garbage.host}/hostile/mixed"\ntag_pattern = "."\ndest = "mixed"']
    images += [f'source = "{garbage.host}/hostile/{f}"\ntag_pattern = "."\ndest = "{f}"' for f in SELECTED]
    images += [f'source = "{garbage.host}/hostile/{f}"\ntags = ["v1"]\ndest = "{f}-v1"' for f in EXACT]
    path = backend.watchlist(healthy, images)
    with path.open("a") as out:
        out.write(f'[registries."{garbage.host}"]\ninsecure = true\n')
    return path


def _reconcile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _assert_inert(text: str) -> None:
    """No control character but line ends, and no line that a registry wrote."""
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", text), repr(text[:2000])
    forged = [line for line in text.splitlines() if "everything published fine" in line
              and not re.match(r"\S+ (ERROR|WARNING) ", line) and not line.startswith(("  FAILED", "    "))]
    assert not forged, forged


def _failed_lines(stdout: str) -> List[str]:
    return [line for line in stdout.splitlines() if line.startswith("  FAILED")]


def test_a_garbage_registry_fails_its_entries_and_the_healthy_ones_publish(tmp_path, monkeypatch, fixture_registry,
                                                                          garbage):
    backend = Backend("local", tmp_path, monkeypatch)
    wl = _watchlist(backend, fixture_registry.host, garbage)
    done = _reconcile("--once", "--watchlist", str(wl))
    assert done.returncode == 1, done.stderr[-3000:]
    assert (backend.visible / "healthy:v1" / "hello.txt").is_file() or (backend.visible / "healthy:v1").is_dir()
    # The listing with invalid names around a valid tag: the valid one publishes,
    # the others are skipped with one warning naming the entry.
    assert (backend.visible / "mixed:v1").is_dir(), done.stdout
    skipped = [line for line in done.stderr.splitlines() if "invalid tag name" in line]
    assert len(skipped) == 1 and "image[2]" in skipped[0] and "hostile/mixed" in skipped[0], skipped
    failed = _failed_lines(done.stdout)
    for flavour in SELECTED:
        assert any(f"hostile/{flavour})" in line and "cannot list tags" in line for line in failed), (flavour, failed)
    for flavour in EXACT:
        assert any(f"hostile/{flavour}:v1" in line for line in failed), (flavour, failed)
    assert not any("healthy" in line or "mixed" in line for line in failed), failed
    assert all(garbage.requested(f) for f in SELECTED + EXACT)  # the garbage was really read
    _assert_inert(done.stdout)
    _assert_inert(done.stderr)


def test_a_dry_run_beside_a_garbage_registry_plans_the_healthy_images(tmp_path, monkeypatch, fixture_registry,
                                                                      garbage):
    backend = Backend("local", tmp_path, monkeypatch)
    wl = _watchlist(backend, fixture_registry.host, garbage)
    done = _reconcile("--dry-run", "--watchlist", str(wl))
    assert done.returncode == 1, done.stderr[-3000:]
    planned = [line for line in done.stdout.splitlines() if line.strip().startswith("planned")]
    assert any("healthy:v1" in line for line in planned) and any("mixed:v1" in line for line in planned), planned
    assert len(_failed_lines(done.stdout)) == len(SELECTED) + len(EXACT)
    _assert_inert(done.stdout)
    _assert_inert(done.stderr)


def test_tag_names_follow_the_oci_grammar_exactly():
    from reconciler.registry.reference import is_valid_tag

    assert is_valid_tag("v1") and is_valid_tag("_x.Y-1") and is_valid_tag("a" * 128)
    for bad in ("v1\n", "-bad", ".dot", "a" * 129, "é", "v1 ", "", "\x1b[31m"):
        assert not is_valid_tag(bad), bad


def test_a_plain_log_line_shows_what_a_registry_sent_escaped_on_its_own_line():
    import logging

    from reconciler.cli import PlainFormatter
    from tests.garbage_registry import FORGED

    formatter = PlainFormatter()
    record = logging.LogRecord("reconciler.x", logging.ERROR, __file__, 1, "image failed: %s", (FORGED,), None)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line and "\\x1b]0;pwned\\x07" in line
    try:
        raise RuntimeError(FORGED)
    except RuntimeError:
        import sys as _sys

        record = logging.LogRecord("reconciler.x", logging.ERROR, __file__, 1, "failed", (), _sys.exc_info())
    text = formatter.format(record)
    _assert_inert(text)
    assert all(line.startswith("    ") for line in text.splitlines()[1:]), text
