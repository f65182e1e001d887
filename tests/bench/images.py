"""The benchmark image, built from real trees and cached in the work directory.

- base: `debootstrap --variant=minbase` Debian bookworm;
- python: numpy, scipy and pandas installed with `pip --target` under
  /usr/local/lib/python3.11/site-packages;
- top: a few files and a whiteout of a base directory (v1), other content (v2).

Version 2 shares the two big layers and changes only the top one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from fixtures.build import Blob, BuiltImage

MIRROR = os.environ.get("BENCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PIP_PACKAGES = ["numpy", "scipy", "pandas"]
SITE = "usr/local/lib/python3.11/site-packages"
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Layer:
    tar: Path
    gz: Path
    diff_id: str
    digest: str
    size: int


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _layer_from_dir(directory: Path, out: Path) -> Layer:
    tar, gz = out.with_suffix(".tar"), out.with_suffix(".tar.gz")
    if not gz.exists():
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--sort=name", "-C", str(directory), "-cf", str(tar), "."],
                       check=True)
        with gz.open("wb") as fh:
            subprocess.run(["gzip", "-n", "-6", "-c", str(tar)], check=True, stdout=fh)
    return Layer(tar, gz, _sha256_file(tar), _sha256_file(gz), gz.stat().st_size)


def _layer_from_entries(entries: Dict[str, bytes], whiteouts: List[str], out: Path) -> Layer:
    tar, gz = out.with_suffix(".tar"), out.with_suffix(".tar.gz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in whiteouts:
            parent, _, leaf = name.rpartition("/")
            info = tarfile.TarInfo(f"{parent}/.wh.{leaf}")
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(b""))
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tf.addfile(info, io.BytesIO(data))
    tar.write_bytes(buf.getvalue())
    with gz.open("wb") as fh:
        subprocess.run(["gzip", "-n", "-6", "-c", str(tar)], check=True, stdout=fh)
    return Layer(tar, gz, _sha256_file(tar), _sha256_file(gz), gz.stat().st_size)


def build_base(cache: Path) -> Layer:
    """The debootstrap minbase layer (cached)."""
    out = cache / "base"
    if not out.with_suffix(".tar.gz").exists():
        if shutil.which("debootstrap") is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        rootfs = cache / "base-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        print(f"bench: debootstrap --variant=minbase {SUITE} from {MIRROR} …", file=sys.stderr)
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR], check=True,
                       stdout=subprocess.DEVNULL)
        layer = _layer_from_dir(rootfs, out)
        shutil.rmtree(rootfs)
        return layer
    return _layer_from_dir(cache / "base-rootfs", out)


def build_python(cache: Path) -> Layer:
    """numpy, scipy and pandas via `pip --target` (cached)."""
    out = cache / "python"
    if not out.with_suffix(".tar.gz").exists():
        tree = cache / "python-tree"
        shutil.rmtree(tree, ignore_errors=True)
        print(f"bench: pip install --target … {' '.join(PIP_PACKAGES)} …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                        "--target", str(tree / SITE), *PIP_PACKAGES], check=True)
        layer = _layer_from_dir(tree, out)
        shutil.rmtree(tree)
        return layer
    return _layer_from_dir(cache / "python-tree", out)


def build_top(cache: Path, version: int) -> Layer:
    """A small top layer; both versions white out a base directory."""
    entries = {
        "etc/bench-release": f"bench image v{version}\n".encode(),
        f"opt/app/v{version}/run.py": b"import numpy, scipy, pandas\nprint('ok')\n" * version,
        "opt/app/config.json": json.dumps({"version": version}).encode(),
    }
    return _layer_from_entries(entries, ["usr/share/doc/debconf"], cache / f"top-v{version}")


def build_images(cache: Path) -> Dict[str, BuiltImage]:
    """v1 and v2 of the benchmark image (blobs are file-backed via `layer_files`)."""
    cache.mkdir(parents=True, exist_ok=True)
    base, python = build_base(cache), build_python(cache)
    images = {}
    for version in (1, 2):
        top = build_top(cache, version)
        layers = [base, python, top]
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin",
                                                f"PYTHONPATH=/{SITE}"], "Cmd": ["/bin/bash"]},
                             "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}}).encode()
        config_blob = Blob("application/vnd.oci.image.config.v1+json", config)
        manifest = Blob("application/vnd.oci.image.manifest.v1+json", json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_blob.descriptor(),
            "layers": [{"mediaType": GZ, "digest": layer.digest, "size": layer.size} for layer in layers]}).encode())
        image = BuiltImage(f"v{version}", "bench/app", [config_blob], [manifest], [f"v{version}"], [])
        image.layer_files = layers  # type: ignore[attr-defined]
        images[f"v{version}"] = image
    return images
