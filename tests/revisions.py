"""Record a CernVM-FS repository's published revision: its number (the `S`
line of the stratum 0's `.cvmfspublished`) and every tag link as readers see
it (`/var/spool/cvmfs/<repo>/rdonly`), one JSON line on stdout. Called by
tests/cvmfs_revisions/cvmfs_server after each call that can publish, so a test
reads every revision a run made, not only the last."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Dict, List

from tests.old_layouts import Link, tag_view


def revision(repo: str) -> int:
    """The revision the stratum 0 publishes now."""
    for line in (Path("/srv/cvmfs") / repo / ".cvmfspublished").read_bytes().split(b"\n"):
        if line == b"--":
            break
        if line.startswith(b"S"):
            return int(line[1:])
    raise RuntimeError(f"no revision in the manifest of {repo}")


def snapshot(repo: str) -> Dict[str, object]:
    """The revision and its tag links."""
    links = tag_view(Path("/var/spool/cvmfs") / repo / "rdonly", f"/cvmfs/{repo}")
    return {"revision": revision(repo), "links": {k: dataclasses.asdict(v) for k, v in links.items()}}


def read_log(path: Path) -> Dict[int, Dict[str, Link]]:
    """Revision -> its tag links, from a log these snapshots were appended to."""
    out: Dict[int, Dict[str, Link]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        data = json.loads(line)
        out[data["revision"]] = {k: Link(**v) for k, v in data["links"].items()}
    return out


def consecutive(revisions: List[int]) -> bool:
    """True when no revision between the first and the last is missing."""
    return sorted(revisions) == list(range(min(revisions), max(revisions) + 1))


if __name__ == "__main__":
    print(json.dumps(snapshot(sys.argv[1])))
