"""Run `reconcile` and SIGKILL the process at a chosen moment, to test crash safety.

CRASH_AT picks the moment:
- `download`: once the first blob bytes have arrived;
- `apply` (the default): after 3 entries of layer CRASH_AFTER_LAYERS + 1;
- `flush`: every image built, none flushed yet (the local backend flushes once, before the first tag);
- `set-tag`: after the first tag of the cycle was moved (the local backend publishes tag by tag;
  CRASH_AFTER_CALLS, default 1, says after how many: also for the two below);
- `commit`: after everything was applied, before the transaction is committed;
- `remove-tag`: at a tag link removal of the cycle (a takeover collecting the old tool's links);
- `collect`: at a removal of an earlier tool's image directory.
Killing during `cvmfs_server publish` is the test double's own switch
(CVMFS_DOUBLE_DIE_IN_PUBLISH), as the whole process group dies there.
"""

import os
import signal
import sys

import reconciler.cycle.build as build_stage
import reconciler.cycle.fetch_stage as fetch_stage
from reconciler.cli import main
from reconciler.publish.base import PublishTransaction
from reconciler.publish.cvmfs import CvmfsTransaction
from reconciler.publish.local import LocalTransaction

AT = os.environ.get("CRASH_AT", "apply")
AFTER_LAYERS = int(os.environ.get("CRASH_AFTER_LAYERS", "1"))
# set-tag, remove-tag, collect: how many calls go through before the one that dies.
AFTER_CALLS = int(os.environ.get("CRASH_AFTER_CALLS", "1"))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(count: int, real):
    calls = [0]

    def wrapper(*args, **kw):
        calls[0] += 1
        if calls[0] > count:
            die()
        return real(*args, **kw)

    return wrapper


if AT == "download":
    real_fetch = fetch_stage.fetch_layers

    def dying_fetch(*args, **kw):
        kw["progress"] = lambda nbytes: die()
        return real_fetch(*args, **kw)

    fetch_stage.fetch_layers = dying_fetch
elif AT == "apply":
    real_apply = build_stage.apply_layer
    layers = [0]

    def dying_apply(stream, media_type, root, **kw):
        layers[0] += 1
        if layers[0] > AFTER_LAYERS:
            seen = [0]

            def progress(entries, nbytes):
                seen[0] += entries
                if seen[0] >= 3:
                    die()

            kw["progress"] = progress
        return real_apply(stream, media_type, root, **kw)

    build_stage.apply_layer = dying_apply
elif AT == "set-tag":
    PublishTransaction.set_tag = after(AFTER_CALLS, PublishTransaction.set_tag)  # type: ignore[method-assign]
elif AT == "remove-tag":
    PublishTransaction.remove_tag = after(AFTER_CALLS, PublishTransaction.remove_tag)  # type: ignore[method-assign]
elif AT == "collect":
    PublishTransaction.remove_foreign_image = after(  # type: ignore[method-assign]
        AFTER_CALLS, PublishTransaction.remove_foreign_image)
    LocalTransaction.remove_foreign_image = after(AFTER_CALLS, LocalTransaction.remove_foreign_image)  # type: ignore
elif AT == "flush":
    LocalTransaction._before_links = after(0, LocalTransaction._before_links)  # type: ignore[method-assign]
elif AT == "commit":
    LocalTransaction.commit = after(0, LocalTransaction.commit)  # type: ignore[method-assign]
    CvmfsTransaction.commit = after(0, CvmfsTransaction.commit)  # type: ignore[method-assign]
elif AT != "none":
    raise SystemExit(f"crash_runner: unknown CRASH_AT={AT}")

sys.exit(main(sys.argv[1:]))
