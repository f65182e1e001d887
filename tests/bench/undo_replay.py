"""`python -m tests.bench --undo-replay N [--baseline DIR]`: peak RSS and time of
replaying the undo log of an N-entry top layer (N new files in the 100
directories of the lower layer, so the journal holds a record per file and
per directory), in a fresh process.
`--baseline DIR` replays the same log with the reconciler package of another
checkout too (e.g. /work/main), for a before/after figure."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from reconciler.applier import apply_layer
from reconciler.applier.undo import UndoRecorder
from reconciler.treecopy import clone_tree

TAR = "application/vnd.oci.image.layer.v1.tar"
REPLAY = ("import sys\nfrom pathlib import Path\nfrom reconciler.applier.undo import undo_changes\n"
          "undo_changes(Path(sys.argv[1]), Path(sys.argv[2]))\n")


def _top_layer(n: int, path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            info = tarfile.TarInfo(f"d{i % 100:04d}/f{i:07d}")
            info.size, info.mtime = 0, 1_700_000_000
            tar.addfile(info, io.BytesIO(b""))


def bench_undo_replay(work: Path, n: int, timed: Callable[..., Tuple[float, int]],
                      baseline: Optional[Path] = None) -> str:
    image, undo, layer = work / "image", work / "image.undo", work / "top.tar"
    image.mkdir()
    for d in range(100):
        (image / f"d{d:04d}").mkdir()
    _top_layer(n, layer)
    with UndoRecorder(undo) as recorder, layer.open("rb") as blob:
        apply_layer(blob, TAR, image, observer=recorder)
    records = sum(1 for _ in (undo / "journal").open("rb"))
    rows: Dict[str, Tuple[float, int]] = {}
    here = Path(__file__).resolve().parents[2]
    # `python -c` puts its working directory first on sys.path: run each in its checkout.
    runs: List[Tuple[str, Path]] = [("ours", here)]
    if baseline is not None:
        runs.append((f"baseline {baseline}", baseline.resolve()))
    for name, checkout in runs:
        clone = work / "clone"
        if clone.exists():
            subprocess.run(["rm", "-rf", str(clone)], check=True)
        clone_tree(image, clone)
        rows[name] = timed([sys.executable, "-c", REPLAY, str(clone), str(undo)], cwd=checkout,
                           env={**os.environ, "PYTHONPATH": str(checkout)})
        left = sum(len(os.listdir(clone / d)) for d in os.listdir(clone))
        if left:
            raise RuntimeError(f"{name}: the replay left {left} files in the tree")
    return "\n".join(f"bench: undo replay of {records:,} records ({name}): {t:.2f}s, peak RSS {rss / 1024:.1f} MiB"
                     for name, (t, rss) in rows.items())
