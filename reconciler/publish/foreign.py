"""What the tools a repository is taken over from left in it, told apart from ours.

Two layouts are known (their own code is the reference):

- cvmfs-singularity-sync (OSG): `<ns>/<name>:<tag>` is an absolute symlink to
  `/cvmfs/<repo>/.images/<2 hex>/<62 hex>`, the image directory named by the
  sha256 of its layer digests split after two characters; its GC state is
  `.missing_links.json` at the root.
- DUCC: `<registry>/<repository>:<tag>` is a relative symlink to
  `.flat/<2 hex>/<64 hex>` (the config digest); beside it `.layers/`,
  `.metadata/`, `.chains/` (and `.dirty-chains/`) for its thin images and podman store.

Only their image directories (`foreign_image_relpath`) are ever removed, and only
once no link refers to them; their links only when the admin says so
(`[publish] foreign_tags = "collect"`) or when our complete image replaces one
at a watched tag path. Everything else of theirs is left as it is.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Optional

from . import layout

FLAT_DIR = ".flat"  # DUCC's flattened images
# DUCC's own directories: a `.chains` beside any of them is DUCC's, never our legacy one.
DUCC_DIRS = (FLAT_DIR, ".layers", ".metadata", ".dirty-chains")

_HEX2 = re.compile(r"[0-9a-f]{2}")
_HEX62 = re.compile(r"[0-9a-f]{62}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def foreign_image_relpath(relpath: str) -> Optional[str]:
    """The image directory of an earlier tool that `relpath` (root-relative,
    normalized) is or lies in, or None: `.images/<2>/<62 hex>` (OSG) or
    `.flat/<2>/<64 hex>` (DUCC)."""
    parts = PurePosixPath(relpath).parts
    if len(parts) < 3 or not _HEX2.fullmatch(parts[1]):
        return None
    top, sub, name = parts[:3]
    if top == layout.IMAGES_DIR and _HEX62.fullmatch(name):
        return f"{top}/{sub}/{name}"
    if top == FLAT_DIR and _HEX64.fullmatch(name) and name[:2] == sub:
        return f"{top}/{sub}/{name}"
    return None


def resolve_link(root: str, tag_path: str, target: str) -> Optional[str]:
    """The root-relative path a link at `<root>/<tag_path>` names, or None when
    it leaves the root. Absolute targets (OSG writes `/cvmfs/<repo>/…`) are
    taken as readers see them: under `root`, the path readers mount."""
    if os.path.isabs(target):
        relative = os.path.relpath(os.path.normpath(target), root)
    else:
        relative = os.path.normpath(os.path.join(os.path.dirname(tag_path), target))
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return relative


def is_our_legacy_chains(root: str) -> bool:
    """True when `<root>/.chains` is the snapshot directory of our 0.1 and early
    0.2 (`.chains/<64 hex>/`, temporary names starting with '.'), not DUCC's
    (`.chains/<2 hex>/<digest>/`, beside `.flat`, `.layers`, `.metadata`)."""
    chains = os.path.join(root, layout.LEGACY_CHAINS_DIR)
    if not os.path.isdir(chains) or os.path.islink(chains):
        return False
    if any(os.path.lexists(os.path.join(root, name)) for name in DUCC_DIRS):
        return False
    try:
        names = os.listdir(chains)
    except OSError:
        return False
    return all(_HEX64.fullmatch(name) or name.startswith(".") for name in names)
