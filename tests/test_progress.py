"""Terminal progress: what the line says, and that logs never interleave with it."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from reconciler.progress import ProgressAwareHandler, TerminalProgress, shorten_middle

ARM = "registry.example.org/team/app:1.2 [linux/arm64]"


def test_progress_line_per_image():
    p = TerminalProgress(io.StringIO())
    p.expect("reg/app:v1", 2_000_000)
    p.downloaded("reg/app:v1", 500_000)
    p.applied("reg/other:v2", 120, 3_000_000)
    assert p.line() == "reg/app:v1 ↓ 0.5 MB/2.0 MB | reg/other:v2 ✎ 120 files, 3.0 MB"
    p.finished("reg/app:v1")
    p.finished("reg/other:v2")
    assert p.line() == ""


def test_long_names_are_shortened_in_the_middle_keeping_start_and_end():
    # The cut falls before the repository's last name: registry start, then app, tag, platform.
    assert shorten_middle(ARM, 27) == "regi…/app:1.2 [linux/arm64]"
    assert shorten_middle(ARM, len(ARM)) == ARM
    for width in range(3, len(ARM)):
        short = shorten_middle(ARM, width)
        assert len(short) == width and short.count("…") == 1, short
        head, tail = short.split("…")
        assert head and ARM.startswith(head) and ARM.endswith(tail), short


def test_the_platform_is_never_taken_for_the_image_name():
    # 0.1 cut at the last "/", which for a second platform is inside "[linux/arm64]".
    p = TerminalProgress(io.StringIO())
    p.expect(ARM, 10_000_000)
    assert p.line(200) == f"{ARM} ↓ 0.0 MB/10.0 MB"
    assert p.line(46) == "regist…/app:1.2 [linux/arm64] ↓ 0.0 MB/10.0 MB"


@pytest.mark.parametrize("width", [30, 40, 60, 80, 100, 120, 200])
def test_the_line_fits_the_width_and_never_cuts_the_start(width):
    p = TerminalProgress(io.StringIO())
    names = [ARM, "reg/other:v2", "ghcr.io/some-org/a-rather-long-repository-name/tool:2024.11.30-build.1234",
             "docker.io/library/alpine:3.21"]
    for i, name in enumerate(names):
        p.expect(name, (i + 1) * 1_000_000)
    p.applied("reg/other:v2", 120, 3_000_000)
    line = p.line(width)
    assert len(line) <= width, line
    assert line.startswith("regi"), line  # the first image's name starts the line, whole
    shown = line.count(" | ") + 1 - ("more" in line)
    # Images left out are counted, unless the terminal is too narrow for more than one name.
    assert shown == len(names) or line.endswith(f" | +{len(names) - shown} more") or " | " not in line, line


def test_the_width_is_the_terminals():
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 61, 0, 0))
        with os.fdopen(slave, "w", closefd=False) as stream:
            p = TerminalProgress(stream)
            assert p.width() == 60  # the last column is left free: writing it wraps some terminals
            p.expect(ARM, 1)
            p.expect("docker.io/library/alpine:3.21", 1)
            assert len(p.line()) <= 60
    finally:
        os.close(master)
        os.close(slave)


def test_log_records_clear_the_progress_line():
    out = io.StringIO()
    p = TerminalProgress(out)
    p._shown = True  # a line is on screen
    handler = ProgressAwareHandler(out, p)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None))
    assert out.getvalue() == "\r\x1b[Khello\n"


def test_json_logs_on_a_terminal_carry_no_progress_escapes(tmp_path):
    (tmp_path / "watchlist.toml").write_text('[publish]\nroot = "p"\n[state]\ndir = "s"\n')
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "--once", "--log-format", "json", "--watchlist",
                           str(tmp_path / "watchlist.toml")], stderr=slave, stdout=subprocess.PIPE, env=env,
                          timeout=60)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.returncode == 0
    assert b"\x1b[K" not in b"".join(chunks)


class RecordingProgress(TerminalProgress):
    """Progress that remembers, per row key, which counters it received."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.calls: dict = {}

    def _note(self, kind: str, image: str) -> None:
        self.calls.setdefault(image, set()).add(kind)

    def expect(self, image: str, nbytes: int) -> None:
        self._note("expect", image)
        super().expect(image, nbytes)

    def applied(self, image: str, files: int, nbytes: int) -> None:
        self._note("applied", image)
        super().applied(image, files, nbytes)

    def finished(self, image: str) -> None:
        self._note("finished", image)
        super().finished(image)


def test_each_platform_has_one_progress_row_from_download_to_apply(tmp_path, fixture_registry):
    """The second platform's download and apply are counted on one row, and
    every row is finished: an outcome's name is the one key (issue #19)."""
    from reconciler.reconcile import Reconciler
    from reconciler.watchlist import load_watchlist

    host = fixture_registry.host
    wl = tmp_path / "watchlist.toml"
    wl.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[registries."{host}"]\ninsecure = true\n'
                  f'[[image]]\nsource = "{host}/fixtures/multiarch"\ntags = ["latest"]\n'
                  'platforms = ["linux/amd64", "linux/arm64/v8"]\n')
    progress = RecordingProgress()
    reconciler = Reconciler(load_watchlist(wl), progress=progress)
    try:
        report = reconciler.run_once()
    finally:
        reconciler.close()
    assert not report.failed, report.summary()
    names = {o.name for o in report.outcomes}
    assert len(names) == 2 and set(progress.calls) == names, progress.calls
    assert all(calls == {"expect", "applied", "finished"} for calls in progress.calls.values()), progress.calls
    assert progress.snapshot() == []
