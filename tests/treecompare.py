"""Describe a directory tree for comparison with another (ours against umoci's)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, FrozenSet, Set, Tuple

from fixtures.build import BuiltImage
from reconciler.applier import apply_layer

UMOCI = shutil.which("umoci")


def apply_image(image: BuiltImage, root: Path) -> None:
    """Make `root` and apply every layer of a fixture image into it, in order
    (what a published image must equal, besides what the publishers add)."""
    blobs = {b.digest: b for b in image.blobs}
    manifest = json.loads(image.top.data)
    config = json.loads(blobs[manifest["config"]["digest"]].data)
    root.mkdir()
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        apply_layer(io.BytesIO(blobs[layer["digest"]].data), layer["mediaType"], root, expected_diff_id=diff_id)


def describe_tree(root: Path) -> Tuple[Dict[bytes, tuple], Set[FrozenSet[bytes]]]:
    """Per path (bytes, relative): type, mode, uid, gid, size, content hash,
    file mtime, symlink target; and the hardlink groups (paths sharing an inode)."""
    entries: Dict[bytes, tuple] = {}
    inodes: Dict[Tuple[int, int], Set[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            digest = target = mtime = None
            size = 0
            if stat.S_ISREG(kind):
                with open(full, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                size, mtime = st.st_size, st.st_mtime_ns
            elif stat.S_ISLNK(kind):
                target = os.readlink(full)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                target = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = () if stat.S_ISLNK(kind) else tuple(sorted(
                (x, os.getxattr(full, x)) for x in os.listxattr(full) if not x.startswith("security.selinux")))
            entries[rel] = (kind, stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(kind) else 0,
                            st.st_uid, st.st_gid, size, digest, xattrs, mtime, target)
            if not stat.S_ISDIR(kind) and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return entries, {frozenset(group) for group in inodes.values() if len(group) > 1}


def on_real_cvmfs(path: Path) -> bool:
    """True for a path in a CernVM-FS repository: its union mount at /cvmfs, or
    the published revision (`/var/spool/cvmfs/<repo>/rdonly`)."""
    real = os.path.realpath(path)
    return real.startswith("/cvmfs/") or (real.startswith("/var/spool/cvmfs/") and "/rdonly" in real)


def as_cvmfs_publishes(entries: Dict[bytes, tuple]) -> Dict[bytes, tuple]:
    """Entries as a CernVM-FS publish stores them: file mtimes in whole seconds
    (hard links, which it breaks up, are not part of the entries)."""
    return {path: e[:7] + ((e[7] // 10**9 * 10**9) if e[7] is not None else None,) + e[8:]
            for path, e in entries.items()}


def write_oci_layout(image: BuiltImage, directory: Path, tag: str = "latest") -> None:
    """An OCI image layout of a built (single-platform) fixture, for umoci."""
    (directory / "blobs" / "sha256").mkdir(parents=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for blob in image.blobs + image.manifests:
        (directory / "blobs" / "sha256" / blob.digest.split(":")[1]).write_bytes(blob.data)
    top = image.top
    index = {"schemaVersion": 2, "manifests": [
        top.descriptor(annotations={"org.opencontainers.image.ref.name": tag})]}
    (directory / "index.json").write_text(json.dumps(index))


def umoci_unpack(image: BuiltImage, workdir: Path) -> Path:
    """`umoci unpack` the image; returns the rootfs directory."""
    layout = workdir / "layout"
    write_oci_layout(image, layout)
    bundle = workdir / "bundle"
    done = subprocess.run([UMOCI, "unpack", "--image", f"{layout}:latest", str(bundle)], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"umoci unpack failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return bundle / "rootfs"
