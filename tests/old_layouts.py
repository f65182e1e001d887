"""Repositories as the tools a site switches from left them, made by their rules
(read from their source), and a view of any tree's tag links for the checks.

- cvmfs-singularity-sync (OSG): the image directory is `.images/<h[:2]>/<h[2:]>`,
  h the sha256 of the manifest's layer digests (hex, concatenated); the tag
  `<ns>/<name>:<tag>` is an absolute symlink `/cvmfs/<repo>/.images/…`;
  `srv` and `cvmfs` are added to each image; cleanup.py keeps
  `.missing_links.json` ({"missing_links": {<absolute image dir>: <epoch>}}).
- DUCC: the image is `.flat/<c[:2]>/<c>` (c: the config digest's hex) with a
  `.cvmfscatalog`; the tag `<registry>/<repository>:<tag>` is a relative symlink
  to it; `.metadata/<registry>/<repository>:<tag>/manifest.json`, the layers
  in `.layers/<l[:2]>/<l>/layerfs/`, chains in `.chains/<x[:2]>/<x>/`, and
  catalogs in `.flat`, `.chains`.

An old image counts as complete when its directory holds `etc/motd` (every
fixture here writes one); ours when its completion record stands beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from reconciler.publish import foreign, layout


@dataclass(frozen=True)
class OldTag:
    """One tag the old tool published: its path, the layer digests its manifest
    named and its config digest (DUCC names the image by it)."""

    tag_path: str
    layers: Tuple[str, ...]
    config: str


def _rootfs(image: Path, label: str) -> None:
    (image / "etc").mkdir(parents=True)
    (image / "etc" / "motd").write_text(f"old {label}\n")
    (image / "bin").mkdir()
    (image / "bin" / "tool").write_text("#!/bin/sh\necho old\n")
    os.symlink("../etc/motd", image / "bin" / "motd-link")


def osg_image_relpath(layers: Tuple[str, ...]) -> str:
    """Where cvmfs-singularity-sync puts an image with these layers."""
    hasher = hashlib.sha256()
    for digest in layers:
        hasher.update(digest.split(":")[-1].encode())
    h = hasher.hexdigest()
    return f"{layout.IMAGES_DIR}/{h[:2]}/{h[2:]}"


def make_osg(root: Path, mount: str, tags: List[OldTag], orphans: Sequence[Tuple[str, ...]] = ()) -> Dict[str, str]:
    """Write the OSG shape into `root` (readers see it at `mount`): each tag's
    image and absolute link, and image directories no tag links any more
    (`orphans`, by their layers) listed in `.missing_links.json` as its cleanup
    leaves them. Returns tag path -> image directory (root-relative)."""
    out: Dict[str, str] = {}
    missing: Dict[str, int] = {}
    for layers in orphans:
        rel = osg_image_relpath(layers)
        _rootfs(root / rel, "orphan")
        for bind in ("srv", "cvmfs"):
            (root / rel / bind).mkdir()
        missing[f"{mount}/{rel}"] = 1_700_000_000
    for tag in tags:
        rel = osg_image_relpath(tag.layers)
        if not (root / rel).exists():
            _rootfs(root / rel, tag.tag_path)
            for bind in ("srv", "cvmfs"):
                (root / rel / bind).mkdir()
        link = root / tag.tag_path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f"{mount}/{rel}", link)
        out[tag.tag_path] = rel
    (root / ".missing_links.json").write_text(json.dumps({"missing_links": missing}))
    return out


def make_ducc(root: Path, tags: List[OldTag]) -> Dict[str, str]:
    """Write the DUCC shape into `root`. Returns tag path -> image directory."""
    out: Dict[str, str] = {}
    for top in (foreign.FLAT_DIR, layout.LEGACY_CHAINS_DIR, ".layers", ".metadata"):
        (root / top).mkdir(parents=True, exist_ok=True)
    (root / foreign.FLAT_DIR / ".cvmfscatalog").write_text("")
    (root / layout.LEGACY_CHAINS_DIR / ".cvmfscatalog").write_text("")
    for tag in tags:
        config = tag.config.split(":")[-1]
        rel = f"{foreign.FLAT_DIR}/{config[:2]}/{config}"
        if not (root / rel).exists():
            _rootfs(root / rel, tag.tag_path)
            (root / rel / ".cvmfscatalog").write_text("")
        link = root / tag.tag_path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(root / rel, link.parent), link)
        meta = root / ".metadata" / tag.tag_path
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "manifest.json").write_text(json.dumps({"layers": [{"digest": d} for d in tag.layers]}))
        chain = ""
        for digest in tag.layers:
            hexpart = digest.split(":")[-1]
            layerfs = root / ".layers" / hexpart[:2] / hexpart / "layerfs"
            layerfs.mkdir(parents=True, exist_ok=True)
            (layerfs / "layer").write_text(hexpart)
            chain = hashlib.sha256(f"{chain} {hexpart}".encode()).hexdigest()
            chains = root / layout.LEGACY_CHAINS_DIR / chain[:2] / chain
            chains.mkdir(parents=True, exist_ok=True)
            (chains / "layer").write_text(hexpart)
        out[tag.tag_path] = rel
    return out


def ducc_private_paths(root: Path) -> Dict[str, str]:
    """Every file of DUCC's own directories (not its images) and its content:
    a takeover must leave them as they are."""
    out: Dict[str, str] = {}
    for top in (layout.LEGACY_CHAINS_DIR, ".layers", ".metadata"):
        for dirpath, _dirs, files in os.walk(root / top):
            for name in files:
                path = Path(dirpath) / name
                out[str(path.relative_to(root))] = path.read_text()
    return out


@dataclass(frozen=True)
class Link:
    """A tag link as a reader sees it in one revision."""

    target: Optional[str]  # root-relative, or None when it leaves the tree
    complete: bool  # it resolves to a complete image (ours or the old tool's)
    ours: bool
    motd: str  # what the image's etc/motd says ('' when none)


def tag_view(tree: Path, mount: str) -> Dict[str, Link]:
    """Every symlink outside hidden directories of `tree` (a published revision
    or a local root; absolute targets under `mount` are read inside `tree`)."""
    out: Dict[str, Link] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                continue
            rel = os.path.relpath(full, tree)
            target = os.readlink(full)
            if os.path.isabs(target):
                target = os.path.relpath(target, mount)
            else:
                target = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            if target.startswith(".."):
                out[rel] = Link(None, False, False, "")
                continue
            image = tree / target
            digest = layout.digest_of_image_relpath(target)
            if digest:
                complete = image.is_dir() and (tree / layout.completion_relpath(digest)).is_file()
            else:
                complete = foreign.foreign_image_relpath(target) == target and (image / "etc" / "motd").is_file()
            motd = (image / "etc" / "motd").read_text() if (image / "etc" / "motd").is_file() else ""
            out[rel] = Link(target, complete, digest is not None, motd)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out
