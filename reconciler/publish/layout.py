"""Where things live in a published tree (the same for every backend).

    <root>/<dest>:<tag>                      relative symlink to the image directory
    <root>/<dest>:<tag>@<os>-<arch>[-<var>]  the same for the second and later platforms
    <root>/.images/<2 hex>/<64 hex>/         the merged root filesystem of one manifest digest
    <root>/.images/<2 hex>/<64 hex>.complete its completion record, written last: an image
                                             directory without one is unfinished and is rebuilt
    <root>/.images/<2 hex>/<64 hex>.undo/    the undo log of its top layer and of what we added
                                             (an update of that image starts from it)

The completion record stands beside the image, not inside it: nothing an image
holds can pass for one.

'@' cannot appear in a tag, so a platform suffix never collides with a real tag.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Optional

from ..registry.manifest import Platform
from ..registry.reference import is_valid_digest

IMAGES_DIR = ".images"
COMPLETE_SUFFIX = ".complete"
UNDO_SUFFIX = ".undo"
LEGACY_CHAINS_DIR = ".chains"  # layer chain snapshots of 0.1 and early 0.2: removed when seen


def image_relpath(digest: str) -> str:
    """`.images/ab/abcdef…` for a manifest digest."""
    if not is_valid_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    hexpart = digest.split(":", 1)[1]
    return f"{IMAGES_DIR}/{hexpart[:2]}/{hexpart}"


def undo_relpath(digest: str) -> str:
    """`.images/ab/abcdef….undo`: the undo log of the image's top layer."""
    return image_relpath(digest) + UNDO_SUFFIX


def completion_relpath(digest: str) -> str:
    """`.images/ab/abcdef….complete`: the record that the image is complete."""
    return image_relpath(digest) + COMPLETE_SUFFIX


def digest_of_image_relpath(relpath: str) -> Optional[str]:
    """The digest an image path stands for, or None if it is not one."""
    parts = PurePosixPath(relpath).parts
    if len(parts) != 3 or parts[0] != IMAGES_DIR or parts[2][:2] != parts[1]:
        return None
    digest = f"sha256:{parts[2]}"
    return digest if is_valid_digest(digest) else None


def platform_suffix(platform: Platform, first: bool) -> str:
    """'' for an entry's first platform, else `@os-arch[-variant]`."""
    if first:
        return ""
    return "@" + "-".join(p for p in (platform.os, platform.architecture, platform.variant) if p)


def tag_relpath(dest: str, tag: str, platform: Platform, first: bool) -> str:
    """`<dest>:<tag>[@<platform>]`."""
    return f"{dest}:{tag}{platform_suffix(platform, first)}"


def link_target(tag_path: str, digest: str) -> str:
    """The relative symlink target from a tag path to its image directory."""
    parent = os.path.dirname(tag_path) or "."
    return os.path.relpath(image_relpath(digest), parent)
