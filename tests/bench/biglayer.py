"""Synthetic single-layer images for `python -m tests.bench --big-layer` and
`--dotdot-layer`: one gzip layer, streamed to disk as it is generated (never
held in memory), cached in the work directory by shape and size.

- files: N entries, regular files of a few bytes spread over 1,000 directories;
- dirs: N directory entries, 1,000 top directories with subdirectories;
- dotdot: a chain of `depth` directories with two symlinks at its bottom that
  climb back to the root with `depth` `..` each; the entries alternate between
  the two, so no resolved directory can be reused from one entry to the next.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, Optional

from fixtures.build import Blob, BuiltImage

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MTIME = 1_700_000_000
TOP_DIRS = 1_000


@dataclass
class BigLayer:
    """A generated layer blob: where it is and what the manifest says of it."""

    gz: Path
    diff_id: str
    digest: str
    size: int
    entries: int


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
    return info


def _file(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, MTIME
    return info


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, MTIME
    return info


def _spread_entries(n: int, leaf: Callable[[str], tarfile.TarInfo]) -> Iterator[tarfile.TarInfo]:
    """n entries: TOP_DIRS directories (fewer when n is small), then the rest
    (`leaf(path)`) spread evenly under them, grouped by directory."""
    tops = max(1, min(TOP_DIRS, n // 2))
    rest = n - tops
    for d in range(tops):
        yield _dir(f"d{d:04d}/")
        for i in range(rest // tops + (1 if d < rest % tops else 0)):
            yield leaf(f"d{d:04d}/e{i:06d}")


def dotdot_entries(n: int, depth: int) -> Iterator[tarfile.TarInfo]:
    """The `..` chain layer: `depth` directories, two symlinks climbing back out
    of them, and n files written alternately through each symlink."""
    chain = ""
    for i in range(depth):
        chain += f"c{i % 10}/"
        yield _dir(chain)
    yield _dir("a/")
    yield _dir("b/")
    yield _symlink(chain + "up-a", "../" * depth + "a")
    yield _symlink(chain + "up-b", "../" * depth + "b")
    for i in range(n):
        yield _file(f"{chain}up-{'ab'[i % 2]}/f{i:07d}", 8)


def _write_layer(entries: Iterator[tarfile.TarInfo], gz_path: Path) -> BigLayer:
    """Stream `entries` as a PAX tar through `gzip -n -6` (in parallel with us) into gz_path."""
    diff = hashlib.sha256()
    count = 0
    partial = gz_path.with_suffix(".partial")
    with partial.open("wb") as out:
        gzip = subprocess.Popen(["gzip", "-n", "-6", "-c"], stdin=subprocess.PIPE, stdout=out)
        assert gzip.stdin is not None
        sink: BinaryIO = gzip.stdin
        batch = io.BytesIO()
        for info in entries:
            count += 1
            batch.write(info.tobuf(tarfile.PAX_FORMAT))
            if info.size:
                data = b"%07d\n" % (count % 10_000_000)
                batch.write(data[:info.size].ljust(info.size, b"\n"))
                batch.write(b"\0" * (-info.size % tarfile.BLOCKSIZE))
            if batch.tell() > 1 << 20:
                diff.update(batch.getbuffer())
                sink.write(batch.getbuffer())
                batch = io.BytesIO()
        batch.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        diff.update(batch.getbuffer())
        sink.write(batch.getbuffer())
        sink.close()
        if gzip.wait() != 0:
            raise RuntimeError("gzip failed")
    partial.rename(gz_path)
    digest = hashlib.sha256()
    with gz_path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return BigLayer(gz_path, "sha256:" + diff.hexdigest(), "sha256:" + digest.hexdigest(), gz_path.stat().st_size,
                    count)


def build_layer(cache: Path, shape: str, n: int, depth: int = 64) -> BigLayer:
    """The layer of that shape and size, generated once and then cached (with its digests)."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"big-{shape}-{n}" + (f"-d{depth}" if shape == "dotdot" else "")
    gz_path, meta = cache / f"{stem}.tar.gz", cache / f"{stem}.json"
    if gz_path.exists() and meta.exists():
        return BigLayer(gz_path, **json.loads(meta.read_text()))
    from tests.bench.resolution import SHAPES

    entries = {"files": lambda: _spread_entries(n, lambda path: _file(path, 8)),
               "dirs": lambda: _spread_entries(n, lambda path: _dir(path + "/")),
               "dotdot": lambda: dotdot_entries(n, depth), **SHAPES}[shape]()
    layer = _write_layer(entries, gz_path)
    meta.write_text(json.dumps({"diff_id": layer.diff_id, "digest": layer.digest, "size": layer.size,
                                "entries": layer.entries}))
    return layer


def single_layer_image(layer: BigLayer, repository: str, tag: str) -> BuiltImage:
    """A one-layer image around `layer` (its blob is file-backed via `layer_files`)."""
    config = Blob("application/vnd.oci.image.config.v1+json", json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}).encode())
    manifest = Blob("application/vnd.oci.image.manifest.v1+json", json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [{"mediaType": GZ, "digest": layer.digest, "size": layer.size}]}).encode())
    image = BuiltImage(tag, repository, [config], [manifest], [tag], [])
    image.layer_files = [layer]  # type: ignore[attr-defined]
    return image


def write_layout(image: BuiltImage, layout: Path, tag: str) -> None:
    """An OCI image layout of `image` for umoci (the layer blob hardlinked when it can be)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for blob in image.blobs + image.manifests:
        (blobs / blob.digest.split(":")[1]).write_bytes(blob.data)
    for layer in image.layer_files:  # type: ignore[attr-defined]
        dest = blobs / layer.digest.split(":")[1]
        try:
            dest.hardlink_to(layer.gz)
        except OSError:
            subprocess.run(["cp", str(layer.gz), str(dest)], check=True)
    index = {"schemaVersion": 2, "manifests": [
        image.top.descriptor(annotations={"org.opencontainers.image.ref.name": tag})]}
    (layout / "index.json").write_text(json.dumps(index))


def layer_summary(layer: BigLayer) -> Dict[str, object]:
    """What the results file records about a generated layer."""
    return {"entries": layer.entries, "gzip_bytes": layer.size, "diff_id": layer.diff_id}


def describe(shape: str, n: int, depth: Optional[int] = None) -> str:
    """A one-line name of a generated layer for the summary."""
    return f"{shape} layer of {n:,} entries" + (f" (`..` chains of {depth})" if depth else "")
