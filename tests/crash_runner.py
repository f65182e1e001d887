"""Run `reconcile --once` and SIGKILL the process in the middle of applying
a layer (after AFTER_ENTRIES entries of the N-th layer), to test crash safety."""

import os
import signal
import sys

import reconciler.reconcile as reconcile_module
from reconciler.cli import main

AFTER_LAYERS = int(os.environ.get("CRASH_AFTER_LAYERS", "1"))
calls = {"layers": 0}
real_apply = reconcile_module.apply_layer


def dying_apply(stream, media_type, root, **kw):
    calls["layers"] += 1
    if calls["layers"] > AFTER_LAYERS:
        def progress(entries, nbytes, seen=[0]):
            seen[0] += entries
            if seen[0] >= 3:
                os.kill(os.getpid(), signal.SIGKILL)
        kw["progress"] = progress
    return real_apply(stream, media_type, root, **kw)


reconcile_module.apply_layer = dying_apply
sys.exit(main(sys.argv[1:]))
