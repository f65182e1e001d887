"""`reconcile --help` as a newcomer reads it: what leaving out --once does (a
service), what --dry-run promises, and every exit code, the same as the README's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from reconciler import cli

ROOT = Path(__file__).resolve().parent.parent


def help_text() -> str:
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def listed_codes(text: str) -> set:
    """The codes of the help's "exit codes:" section."""
    section = text.split("exit codes:", 1)[1]
    return {int(code) for code in re.findall(r"^  (\d+) +\S", section, re.MULTILINE)}


def test_help_says_that_without_once_it_runs_as_a_service():
    text = help_text()
    flat = " ".join(text.split())
    assert "without --once it runs as a service" in flat
    # what a service does, and how it ends
    for words in ("until SIGTERM", "at its interval", "webhook", "status page", "finishes the current cycle",
                  'logs "stopped"'):
        assert words in flat, words
    assert "reconcile --once" in flat and "reconcile --dry-run" in flat
    assert "safe beside a running service" in flat


def test_help_lists_every_exit_code():
    text = help_text()
    codes = listed_codes(text)
    assert codes == {cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_CONFIG, cli.EXIT_START, cli.EXIT_BUSY,
                     cli.EXIT_INTERRUPTED} == {0, 1, 2, 3, 4, 130}
    assert all(len(line) <= 80 for line in text.splitlines()), "help lines wider than the terminal"


def test_help_and_readme_list_the_same_exit_codes():
    readme = (ROOT / "README.md").read_text()
    table = {int(code) for code in re.findall(r"^\| `(\d+)` \|", readme, re.MULTILINE)}
    assert table == listed_codes(help_text())
