"""Hostile and malformed layers: the applier refuses them or confines them to
the root, and a victim directory beside the root stays byte-for-byte unchanged
(shared/reference/unpack-edge-cases.md, part B)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path
from typing import List

import pytest
import zstandard

from fixtures.build import build_tar, compress
from reconciler.applier import ApplyOptions, LayerLimits, apply_layer
from reconciler.errors import HostileLayerError, IntegrityError, LayerError
from tests.treecompare import describe_tree

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture
def places(tmp_path):
    """root (where layers go) and victim (a sibling that must never change)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("precious\n")
    (victim / "sub").mkdir()
    (victim / "sub" / "inner").write_text("inner\n")
    os.symlink("file", victim / "link")
    root = tmp_path / "deep" / "er" / "root"
    root.mkdir(parents=True)
    before = describe_tree(tmp_path / "victim"), os.stat(victim).st_mtime_ns
    yield root, victim
    assert (describe_tree(victim), os.stat(victim).st_mtime_ns) == before, "the victim directory changed"
    assert sorted(os.listdir(tmp_path)) == ["deep", "victim"]
    assert os.listdir(tmp_path / "deep" / "er") == ["root"]


def apply_all(root: Path, layers: List[bytes], media_type: str = GZ, **kw) -> None:
    for layer in layers:
        apply_layer(io.BytesIO(layer), media_type, root, **kw)


def gz(entries: List[dict]) -> bytes:
    return compress(build_tar(entries), "gzip")


def F(path: str, content: str = "pwned\n", **kw) -> dict:
    return {"type": "file", "path": path, "content": content, **kw}


def L(path: str, target: str) -> dict:
    return {"type": "symlink", "path": path, "target": target}


def H(path: str, target: str) -> dict:
    return {"type": "hardlink", "path": path, "target": target}


def D(path: str, **kw) -> dict:
    return {"type": "dir", "path": path, **kw}


def test_dotdot_names_are_refused(places):
    root, _ = places
    for name in ["../../../victim/pwned", "a/../../../../victim/pwned", "/../victim/pwned"]:
        with pytest.raises(HostileLayerError, match="climbs out"):
            apply_all(root, [gz([F(name)])])


@pytest.mark.parametrize("target_kind", ["absolute", "relative"])
def test_write_through_symlink_same_layer_stays_inside(places, target_kind):
    root, victim = places
    target = str(victim) if target_kind == "absolute" else "../../../../../../../victim"
    apply_all(root, [gz([L("x", target), F("x/pwned")])])
    # re-rooted / clamped: the file lands inside the root
    landed = root / str(victim).lstrip("/") / "pwned" if target_kind == "absolute" else root / "victim" / "pwned"
    assert landed.read_text() == "pwned\n"


def test_write_through_symlink_across_layers_stays_inside(places):
    root, victim = places
    apply_all(root, [gz([L("evil", str(victim))]), gz([F("evil/file", "overwritten\n")])])
    assert (root / str(victim).lstrip("/") / "file").read_text() == "overwritten\n"


def test_symlink_swap_within_a_layer(places):
    root, victim = places
    apply_all(root, [gz([{"type": "dir", "path": "foo"}, L("foo", "/"), F("foo/tmp/f"),
                         L("up", "../../.."), F("up/victim/file", "clamped\n")])])
    assert (root / "tmp" / "f").exists()
    assert (root / "victim" / "file").read_text() == "clamped\n"


def test_existing_symlink_as_final_component_is_replaced_not_followed(places):
    root, victim = places
    apply_all(root, [gz([L("passwd", str(victim / "file"))]), gz([F("passwd", "new\n")])])
    assert not (root / "passwd").is_symlink()
    assert (root / "passwd").read_text() == "new\n"


def test_directory_entry_over_symlink_to_outside(places):
    root, victim = places
    apply_all(root, [gz([L("d", str(victim))]), gz([{"type": "dir", "path": "d", "mode": 0o777}])])
    assert (root / "d").is_dir() and not (root / "d").is_symlink()


@pytest.mark.parametrize("linkname,error", [
    ("VICTIM/file", LayerError),  # absolute: re-rooted, so missing inside the root
    ("../../../victim/file", HostileLayerError),
    ("through/file", LayerError),  # via a symlinked directory: resolved inside the root
])
def test_hardlink_to_a_host_file_never_links_the_host_inode(places, linkname, error):
    root, victim = places
    linkname = linkname.replace("VICTIM", str(victim))
    with pytest.raises(error):
        apply_all(root, [gz([L("through", str(victim)), H("stolen", linkname)])])
    assert not (root / "stolen").exists()


def test_hardlink_to_symlink_then_metadata_does_not_follow(places):
    root, victim = places
    apply_all(root, [gz([L("s", str(victim / "file")), H("s2", "s"), F("other", mode=0o600)])])
    assert os.lstat(root / "s").st_ino == os.lstat(root / "s2").st_ino
    assert os.readlink(root / "s2") == str(victim / "file")


@pytest.mark.parametrize("name", ["x/.wh..", "x/.wh...", "x/.wh.", ".wh.."])
def test_invalid_whiteouts_are_refused(places, name):
    root, _ = places
    (root / "x").mkdir()
    (root / "x" / "keep").write_text("k")
    with pytest.raises(HostileLayerError, match="invalid whiteout"):
        apply_all(root, [gz([F(name, "")])])
    assert (root / "x" / "keep").exists()


def test_whiteout_through_symlinked_parent_stays_inside(places):
    root, victim = places
    apply_all(root, [gz([L("l", str(victim))]), gz([{"type": "whiteout", "path": "l/file"},
                                                    {"type": "whiteout", "path": "l/sub"}])])


def test_opaque_at_root_touches_only_the_root(places):
    root, _ = places
    apply_all(root, [gz([F("lower")]), gz([{"type": "opaque", "path": ""}, F("upper")])])
    assert os.listdir(root) == ["upper"]


@pytest.mark.parametrize("entry", [L(".", "/"), L("./", "/etc"), F(".", "x"), H("/", "x")])
def test_root_cannot_be_replaced(places, entry):
    root, _ = places
    with pytest.raises((HostileLayerError, LayerError)):
        apply_all(root, [gz([F("x"), entry])])
    assert root.is_dir() and not root.is_symlink()


def test_symlink_loop_is_refused(places):
    root, _ = places
    with pytest.raises(HostileLayerError, match=r"too many levels of symbolic links \(more than 40.*resolving /a"):
        apply_all(root, [gz([L("a", "b"), L("b", "a"), F("a/x")])])


def test_entries_under_a_whiteout_name_are_refused(places):
    root, _ = places
    with pytest.raises(HostileLayerError, match="under a whiteout name"):
        apply_all(root, [gz([F(".wh.etc/passwd")])])


def test_global_pax_header_is_ignored(places):
    root, _ = places
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"path": "evil", "uid": "0"}) as tar:
        info = tarfile.TarInfo("good")
        info.size = 3
        info.pax_headers = {"comment": "forces a local PAX header"}
        tar.addfile(info, io.BytesIO(b"ok\n"))
    apply_all(root, [out.getvalue()], TAR)
    assert os.listdir(root) == ["good"]


def _header(name: str, size: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def test_zero_block_followed_by_a_header_is_refused(places):
    root, _ = places
    data = _header("first") + b"\0" * 512 + _header("hidden") + b"\0" * 1024
    with pytest.raises(HostileLayerError, match="single zero block"):
        apply_all(root, [data], TAR)


def test_corrupt_header_mid_archive_is_an_error(places):
    root, _ = places
    data = _header("first") + b"garbage!" * 64 + b"\0" * 1024
    with pytest.raises(LayerError, match="invalid tar header"):
        apply_all(root, [data], TAR)


def test_variant_symlinks_refused_when_asked(places):
    root, _ = places
    with pytest.raises(HostileLayerError, match="variant symlink"):
        apply_all(root, [gz([L("v", "/cvmfs/$(CVMFS_ARCH)/lib")])],
                  options=ApplyOptions(forbid_variant_symlinks=True))


@pytest.mark.parametrize("name", ["etc/.cvmfsgraft-passwd", ".cvmfsgraft-x/inner", "a/.cvmfsgraft-"])
def test_graft_markers_refused_when_asked_and_kept_otherwise(places, name):
    # CernVM-FS's publish reads `.cvmfsgraft-<f>` as the hash of <f>'s content (sync_item.cc).
    root, _ = places
    layer = gz([F(name, "size=4\nchecksum=0000000000000000000000000000000000000000\n")])
    with pytest.raises(HostileLayerError, match="a name CernVM-FS's publish reads as a graft marker"):
        apply_all(root, [layer], options=ApplyOptions(forbid_graft_markers=True))
    assert not any(root.iterdir())  # refused before anything was made
    apply_all(root, [layer])  # a publisher that reads no markers keeps the file as the image has it
    assert (root / name).is_file()


def test_forbidden_xattrs_are_dropped(places):
    root, _ = places
    stats = apply_layer(io.BytesIO(gz([F("f", xattrs={"trusted.overlay.opaque": "y", "security.selinux": "x",
                                                      "user.overlay.origin": "z", "user.ok": "fine"})])), GZ, root)
    names = os.listxattr(root / "f")
    assert "trusted.overlay.opaque" not in names and "user.overlay.origin" not in names
    assert len(stats.skipped) == 3


@pytest.mark.parametrize("limits,match", [
    (LayerLimits(max_bytes=10_000), "limit of 10000 bytes"),
    (LayerLimits(max_entries=3), "more than 3 entries"),
    (LayerLimits(max_depth=5), "deep"),
])
def test_limits(places, limits, match):
    root, _ = places
    entries = [F(f"f{i}") for i in range(5)] + [F("a/b/c/d/e/f/g", "x"), F("big", "z" * 50_000)]
    with pytest.raises(LayerError, match=match):
        apply_all(root, [gz(entries)], options=ApplyOptions(limits=limits))


def test_gzip_bomb_is_stopped_by_the_byte_limit(places):
    root, _ = places
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(LayerError, match="decompresses to more than"):
        apply_all(root, [bomb], options=ApplyOptions(limits=LayerLimits(max_bytes=1_000_000)))


def test_diff_id_mismatch_rejects_the_layer(places):
    root, _ = places
    with pytest.raises(IntegrityError, match="image config says"):
        apply_layer(io.BytesIO(gz([F("x")])), GZ, root, expected_diff_id="sha256:" + "0" * 64)


@pytest.mark.parametrize("data,media,match", [
    (zstandard.ZstdCompressor().compress(b"\0" * 1024), GZ, "not a gzip member"),
    (gzip.compress(b"\0" * 1024), "application/vnd.oci.image.layer.v1.tar+zstd", "not a zstd frame"),
    (gzip.compress(b"\0" * 1024), TAR, "declared uncompressed"),
    (b"", "application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "encrypted layers"),
    (b"", "application/x-tar", "unknown layer media type"),
    (gzip.compress(build_tar([F("x", os.urandom(10000).hex())]))[:-300], GZ, "truncated"),
    (b"not a tar at all" * 64, TAR, "invalid tar header|not a tar"),
])
def test_bad_streams(places, data, media, match):
    root, _ = places
    with pytest.raises(LayerError, match=match):
        apply_all(root, [data], media)


def test_trailing_nul_padding_after_gzip_is_accepted(places):
    root, _ = places
    apply_all(root, [gz([F("x")]) + b"\0" * 4096])
    assert (root / "x").exists()


def test_empty_layers(places):
    root, _ = places
    for data, media in [(b"", GZ), (b"", TAR), (gzip.compress(b""), GZ), (b"\0" * 1024, TAR)]:
        stats = apply_layer(io.BytesIO(data), media, root)
        assert stats.entries == 0
    assert os.listdir(root) == []


def test_contiguous_and_unknown_typeflags_are_refused(places):
    root, _ = places
    for flag in (tarfile.CONTTYPE, b"Z"):
        info = tarfile.TarInfo("odd")
        info.type = flag
        data = info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024
        with pytest.raises(LayerError, match="unsupported tar entry type"):
            apply_all(root, [data], TAR)


def test_forty_symlinks_resolve_and_the_forty_first_is_refused(places):
    """The kernel's MAXSYMLINKS: a path through 40 links resolves, 41 is ELOOP."""
    root, _ = places

    def chain(n: int, top: str) -> List[dict]:
        # top/l0 -> l1 -> ... -> l{n-1} -> d: n links to reach the directory
        entries = [{"type": "dir", "path": f"{top}/d"}]
        entries += [L(f"{top}/l{i}", f"l{i + 1}") for i in range(n - 1)] + [L(f"{top}/l{n - 1}", "d")]
        return entries + [F(f"{top}/l0/x")]

    apply_all(root, [gz(chain(40, "forty"))])
    assert (root / "forty" / "d" / "x").read_text() == "pwned\n"
    with pytest.raises(HostileLayerError, match=r"too many levels of symbolic links \(more than 40"):
        apply_all(root, [gz(chain(41, "fortyone"))])
    assert not (root / "fortyone" / "d" / "x").exists()


def test_long_dotdot_chains_land_where_the_kernel_would(places):
    """Entries alternating between two symlinks that climb out of a deep chain
    with `..` (the shape that made resolution quadratic) land in the right
    place: `..` from an fd is taken step by step as the kernel takes it."""
    from tests.bench.biglayer import dotdot_entries

    root, _ = places
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in dotdot_entries(20, depth=50):
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    apply_all(root, [out.getvalue()], TAR)
    assert sorted(os.listdir(root / "a")) == [f"f{i:07d}" for i in range(0, 20, 2)]
    assert sorted(os.listdir(root / "b")) == [f"f{i:07d}" for i in range(1, 20, 2)]


def test_a_header_over_the_size_limit_is_refused_before_it_is_read(places):
    root, _ = places
    info = tarfile.TarInfo("big-header")
    info.pax_headers = {"comment": "x" * (5 << 20)}
    data = info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024
    with pytest.raises(LayerError, match="header size limit"):
        apply_all(root, [data], TAR)
    assert os.listdir(root) == []


def test_an_endless_header_chain_is_refused(places):
    """GNU long-name headers chained 17 deep: tarfile would recurse once per header."""
    root, _ = places
    chain = b""
    for i in range(17):
        name = f"name-{i}".encode() + b"\0"
        head = tarfile.TarInfo("././@LongLink")
        head.type, head.size = tarfile.GNUTYPE_LONGNAME, len(name)
        chain += head.tobuf(tarfile.GNU_FORMAT) + name + b"\0" * (-len(name) % 512)
    final = tarfile.TarInfo("short")
    layer = tarfile.TarInfo("first").tobuf(tarfile.USTAR_FORMAT) + chain + final.tobuf(tarfile.USTAR_FORMAT) + \
        b"\0" * 1024
    with pytest.raises(LayerError, match="header count limit"):
        apply_all(root, [layer], TAR)


def test_skipped_notes_are_capped_but_counted(places):
    """A layer of thousands of skippable entries costs a bounded list of notes."""
    root, _ = places
    stats = apply_layer(io.BytesIO(gz([F(f".wh..wh.aufs-{i}") for i in range(300)])), GZ, root)
    assert stats.skipped_count == 300
    assert len(stats.skipped) == 100


@pytest.mark.parametrize("upper", ["whiteout", "opaque", "file over it"])
def test_a_lower_tree_deeper_than_the_recursion_limit_is_removed(places, upper):
    """An image may be 1024 directories deep; removing such a lower tree (a
    whiteout, an opaque directory, an entry replacing it) must not recurse
    once per level (Python's limit is 1000 frames)."""
    root, _ = places
    deep = "/".join(["d"] * 700)  # 2 frames a level in a recursive remover; 1 in pytest's cleanup
    entry = {"whiteout": F("top/.wh.d", ""), "opaque": F("top/.wh..wh..opq", ""),
             "file over it": F("top/d", "now a file\n")}[upper]
    apply_all(root, [gz([F(f"top/{deep}/f", "lower\n")]), gz([entry])])
    assert os.listdir(root / "top") == ([] if upper != "file over it" else ["d"])


# A hardlink replacing a directory that holds its own target, reached through
# symlinks: removing the entry first would take its target with it (cold), or
# move it into the undo log, where the new link would still find it (top layer).
# Either way it is refused, the same way, naming the entry.
HARDLINK_INTO_REPLACED = {
    "symlink": ([D("d"), F("d/f"), L("s", "d")], H("d", "s/f"), "/d"),
    "dotdot": ([D("x"), D("d"), F("d/f"), L("s", "x/../d")], H("d", "s/f"), "/d"),
    "absolute": ([D("d/e"), F("d/e/f"), L("s", "/d/e")], H("d", "s/f"), "/d"),
    "nested": ([D("d/e"), F("d/e/f"), L("s1", "s2"), L("s2", "t/../d"), D("t"), L("s3", "s1/e")],
               H("d", "s3/f"), "/d"),
    "deeper": ([D("a/d/e"), F("a/d/e/f"), L("s", "../../a/d/e")], H("a/d", "s/f"), "/a/d"),
    "symlinked-parent": ([D("a/d"), F("a/d/f"), L("t", "a")], H("t/d", "a/d/f"), "/t/d"),
}



@pytest.mark.parametrize("position", ["lower", "top-with-undo", "same-layer"])
@pytest.mark.parametrize("shape", sorted(HARDLINK_INTO_REPLACED))
def test_a_hardlink_into_the_entry_it_replaces_is_refused_wherever_the_layer_stands(
        places, tmp_path_factory, shape, position):
    from reconciler.applier.undo import UndoRecorder

    root, _ = places
    lower, link, entry = HARDLINK_INTO_REPLACED[shape]
    match = f"hardlink {entry} points inside itself"
    if position == "same-layer":
        with pytest.raises(HostileLayerError, match=match):
            apply_all(root, [gz(lower + [link])])
        return
    apply_all(root, [gz(lower)])
    before = describe_tree(root)
    if position == "lower":
        with pytest.raises(HostileLayerError, match=match):
            apply_all(root, [gz([link])])
    else:
        undo = tmp_path_factory.mktemp("undo") / "log"
        with UndoRecorder(undo) as recorder:
            with pytest.raises(HostileLayerError, match=match):
                apply_all(root, [gz([link])], observer=recorder)
    # refused before anything was removed or moved into the log
    assert describe_tree(root) == before


@pytest.mark.parametrize("warm", [False, True])
def test_resolution_work_per_path_is_bounded_the_same_with_kept_resolutions(places, warm):
    """Components walked per path, link targets included, are capped (a
    HostileLayerError past the cap). A resolution kept from an earlier entry
    is charged what it cost, so whether a path is refused never depends on
    what came before it in the layer."""
    root, _ = places
    limits = ApplyOptions(limits=LayerLimits(max_resolve_steps=100))
    chain = "/".join(["a", ".."] * 30 + ["a"])  # 61 components
    lower = [D("a"), L("s", chain), L("t", "s/../s")]
    first = [F("s/ok")] if warm else []  # 62 steps: within the cap, and kept
    with pytest.raises(HostileLayerError, match=r"resolving /t walks more than 100 path components"):
        apply_all(root, [gz(lower + first + [F("t/f")])], options=limits)  # 1 + 1 + 61 + 1 + 1 + 61 steps
    assert (root / "a" / "ok").exists() == warm
    assert not (root / "a" / "f").exists()


def test_a_symlink_resolution_bomb_lands_where_the_kernel_would(places):
    """Many files through many links whose targets are long `a/..` chains
    (each resolution is kept, not walked again)."""
    root, _ = places
    chain = "/".join(["a", ".."] * 800 + ["a"])
    entries = [D("a")] + [L(f"l{i}", chain) for i in range(25)] + [F(f"l{i % 25}/f{i}") for i in range(500)]
    apply_all(root, [gz(entries)])
    assert sorted(os.listdir(root / "a")) == sorted(f"f{i}" for i in range(500))


def test_a_symlink_target_longer_than_the_kernel_stores_is_a_layer_error(places):
    root, _ = places
    with pytest.raises(LayerError, match=r"symlink /l has a target of 4096 bytes; Linux stores at most 4095"):
        apply_all(root, [gz([L("l", "a/" * 2048)])])
    apply_all(root, [gz([L("m", "a/" * 2047 + "b")])])  # 4095 bytes: fine
    assert len(os.readlink(root / "m")) == 4095
