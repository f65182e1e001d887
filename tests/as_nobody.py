"""Run a function as the user nobody (uid and gid 65534), in a forked child.

The tests that check what an unprivileged service user meets cannot exec the
checkout's interpreter as nobody: a checkout under /root (mode 700), as a
newcomer cloning as root has it, is closed to every other user. The child is
forked instead: it already holds every module it needs (imported here, in the
parent), drops to nobody and calls the function; nothing is read from the
checkout after the fork.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

NOBODY = 65534


@dataclass
class Finished:
    """What the child left: its exit code and what it wrote to stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def run_as_nobody(function: Callable[[], int]) -> Finished:
    """Call `function` as nobody in a child process; its return value is the exit code."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0, closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0, closefd=False), write_through=True)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                code = function()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # report whatever it was, then leave without pytest's handlers
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return Finished(os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"))
