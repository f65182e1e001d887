"""Run `reconcile` and pause it in the middle of applying a layer, so a test
can act while a real run is inside its build (start a second run, press
Ctrl-C). Not a sleep: the run polls for a file, with a deadline.

PAUSE_DIR names a directory: after PAUSE_AFTER_ENTRIES entries (default 3) of
the first layer applied, the run creates `PAUSE_DIR/paused` and waits until
`PAUSE_DIR/resume` exists (at most 120 s), then goes on.
"""

import os
import sys
import time
from pathlib import Path

import reconciler.cycle.build as build_stage
from reconciler.cli import main

PAUSE_DIR = Path(os.environ["PAUSE_DIR"])
AFTER = int(os.environ.get("PAUSE_AFTER_ENTRIES", "3"))
real_apply = build_stage.apply_layer
state = {"entries": 0, "paused": False}


def pause() -> None:
    (PAUSE_DIR / "paused").touch()
    deadline = time.monotonic() + 120
    while not (PAUSE_DIR / "resume").exists():
        if time.monotonic() > deadline:
            raise SystemExit("pause_runner: nobody resumed the run within 120 s")
        time.sleep(0.02)


def pausing_apply(stream, media_type, root, **kw):
    outer = kw.get("progress")

    def progress(entries, nbytes):
        state["entries"] += entries
        if state["entries"] >= AFTER and not state["paused"]:
            state["paused"] = True
            pause()
        if outer:
            outer(entries, nbytes)

    kw["progress"] = progress
    return real_apply(stream, media_type, root, **kw)


build_stage.apply_layer = pausing_apply

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
