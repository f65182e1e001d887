"""Terminal progress: what the line says, and that logs never interleave with it."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

from reconciler.progress import ProgressAwareHandler, TerminalProgress


def test_progress_line_per_image():
    p = TerminalProgress(io.StringIO())
    p.expect("reg/app:v1", 2_000_000)
    p.downloaded("reg/app:v1", 500_000)
    p.applied("reg/other:v2", 120, 3_000_000)
    assert p.line() == "app:v1 ↓ 0.5 MB/2.0 MB | other:v2 ✎ 120 files, 3.0 MB"
    p.finished("reg/app:v1")
    p.finished("reg/other:v2")
    assert p.line() == ""


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
