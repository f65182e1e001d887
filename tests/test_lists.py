"""The lists sites have, read as they are: cvmfs-singularity-sync's
docker_images.txt and DUCC's wishlist, their wildcards, their paths, and
`reconcile import` (no registry needed here; tests/test_lists_cycle.py runs
[[list]] watchlists against the loopback registry)."""

from __future__ import annotations

import fnmatch
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from reconciler.cli import main
from reconciler.cycle.plan import select_tags
from reconciler.errors import ConfigError
from reconciler.lists.ducc import parse_ducc
from reconciler.lists.entries import list_entries
from reconciler.lists.osg import parse_osg
from reconciler.lists.read import read_list
from reconciler.lists.refresh import ListSources
from reconciler.registry.manifest import Platform
from reconciler.registry.reference import ImageReference
from reconciler.watchlist import ImageEntry, ListConfig, load_watchlist, reversed_range

FILES = Path(__file__).parent / "list_files"
OSG_LIST = FILES / "docker_images.txt"
WISHLIST = FILES / "wishlist.yaml"
AMD64 = (Platform.parse("linux/amd64"),)


def settled(path: Path) -> Path:
    """Date a list file a minute back: written a while ago, not being written now."""
    then = time.time() - 60
    os.utime(path, (then, then))
    return path


def config(form: str, dest: str, path: Path = OSG_LIST) -> ListConfig:
    return ListConfig(1, path, form, dest, AMD64, 900.0)


def osg_entries() -> Tuple[Dict[str, ImageEntry], List[str]]:
    read = read_list(OSG_LIST, "osg")
    entries, problems = list_entries(read, config("osg", "$(repository)"), 1)
    return {e.dest: e for e in entries}, [str(p) for p in read.problems + problems]


def old_tool_path(line: str) -> Tuple[str, str]:
    """Where cvmfs-singularity-sync publishes a line: (`<ns>/<name>`, tag),
    by its `parse_image` rules (split at '/', then the rest at ':')."""
    parts = line.split("/")
    if len(parts) == 1:
        namespace, rest = "library", parts[0]
    elif len(parts) == 2:
        namespace, rest = parts
    else:
        namespace, rest = parts[1], "/".join(parts[2:])
    name_tag = rest.split(":")
    name, tag = (name_tag[0], name_tag[1]) if len(name_tag) == 2 else (name_tag[0], "latest")
    return f"{namespace}/{name}", tag


# -- cvmfs-singularity-sync's docker_images.txt -----------------------------

def test_every_form_the_old_tool_accepts_is_read_with_its_meaning():
    by_dest, _ = osg_entries()
    got = {dest: (e.source.name, e.tags, e.tag_glob) for dest, e in by_dest.items()}
    assert got == {
        "library/ubuntu": ("docker.io/library/ubuntu", ("latest", "22.04"), ()),
        "opensciencegrid/osgvo-el7": ("docker.io/opensciencegrid/osgvo-el7", ("latest", "rhel7"), ()),
        "cmssw/cms": ("docker.io/cmssw/cms", (), ("rhel7-m*",)),
        # an exact tag beside a wildcard joins the selection, as a wildcard matching only itself
        "eicweb/jug_xl": ("docker.io/eicweb/jug_xl", (), ("nightly", "*-stable")),
        "library/python": ("docker.io/library/python", (), ("3.?",)),
        "htc/tools": ("docker.io/htc/tools", (), ("v[0-9]*",)),
        "htc/tools2": ("docker.io/htc/tools2", (), ("[!x]*",)),
        # another registry: the path is <namespace>/<rest>, without the host
        "lscsoft/lalsuite/lalsuite-v6.53": ("containers.ligo.org/lscsoft/lalsuite/lalsuite-v6.53",
                                            ("stretch",), ()),
        "osg-htc/worker": ("hub.opensciencegrid.org/osg-htc/worker", ("latest",), ()),
        "test/img": ("localhost:5000/test/img", ("1",), ()),
        "library/debian": ("docker.io/library/debian", ("12",), ()),
        "library/alpine": ("docker.io/library/alpine", ("3",), ()),
        "opensciencegrid/spaced": ("docker.io/opensciencegrid/spaced", ("1",), ()),
        "opensciencegrid/crlf": ("docker.io/opensciencegrid/crlf", ("2",), ()),
    }
    assert by_dest["cmssw/cms"].origin == "docker_images.txt:9"
    assert by_dest["cmssw/cms"].label == "docker_images.txt:9 (docker.io/cmssw/cms)"


def test_each_accepted_line_publishes_where_the_old_tool_publishes_it():
    read = read_list(OSG_LIST, "osg")
    lines = OSG_LIST.read_text().split("\n")
    assert len(read.images) == 18
    for image in read.images:
        path, tag = old_tool_path(lines[image.line - 1].strip())
        assert (image.repository, image.wanted) == (path, tag), image.line


def test_the_lines_it_could_never_publish_are_reported_with_file_and_line():
    _, problems = osg_entries()
    expected = {
        22: "'ghcr.io' reads as a Docker Hub namespace",
        23: "more than one ':'",
        24: "digests are not part of this format",
        25: "one image a line, nothing after it",
        26: "an empty tag",
        27: "invalid image reference",
        28: "'bad~tag' is not a valid tag",
        29: "quay.io/opensciencegrid/osgvo-el7 would publish at 'opensciencegrid/osgvo-el7' like "
            "docker.io/opensciencegrid/osgvo-el7 of line 7",
    }
    assert len(problems) == len(expected), problems
    for line, words in expected.items():
        assert any(p.startswith(f"docker_images.txt:{line}: ") and words in p for p in problems), (line, problems)


def test_a_bad_line_skips_only_itself():
    text = "alpine:3\nghcr.io/x:1\nbusybox:1\n"
    read = parse_osg(text, "l.txt")
    assert [i.repository for i in read.images] == ["library/alpine", "library/busybox"]
    assert [str(p).split(":")[:2] for p in read.problems] == [["l.txt", "2"]]


def test_an_other_registrys_image_at_a_taken_path_is_skipped_not_merged():
    read = parse_osg("quay.io/a/b:1\na/b:2\n", "l.txt")
    entries, problems = list_entries(read, config("osg", "$(repository)"), 1)
    assert [(e.source.name, e.tags) for e in entries] == [("quay.io/a/b", ("1",))]
    assert [p.line for p in problems] == [2]


def test_a_dest_template_places_the_images():
    read = parse_osg("opensciencegrid/osgvo-el7:1\nquay.io/a/b:1\n", "l.txt")
    entries, _ = list_entries(read, config("osg", "sites/$(registry)/$(repository)"), 1)
    assert [e.dest for e in entries] == ["sites/docker.io/opensciencegrid/osgvo-el7", "sites/quay.io/a/b"]


# -- wildcards --------------------------------------------------------------

def glob_entry(*globs: str) -> ImageEntry:
    return ImageEntry(1, ImageReference("docker.io", "x/y"), tag_glob=globs, dest="x/y", platforms=AMD64)


@pytest.mark.parametrize("glob, tags, selected", [
    ("rhel7-m*", ["rhel7-m1", "rhel7-m", "xrhel7-m1", "rhel7-x", "rhel7-m1.2"], ["rhel7-m", "rhel7-m1", "rhel7-m1.2"]),
    ("*-stable", ["1-stable", "-stable", "stable", "1-stable-2"], ["-stable", "1-stable"]),
    ("3.?", ["3.9", "3.10", "3x9", "3."], ["3.9"]),  # '.' is a dot, '?' one character
    ("v[0-9]*", ["v1", "v10", "va", "v"], ["v1", "v10"]),
    ("[!x]*", ["a", "x", "xa", ""], ["a"]),
    ("a[", ["a", "ab"], []),  # an unclosed '[' is a literal, and no tag holds '['
])
def test_wildcards_select_as_fnmatch(glob, tags, selected):
    assert select_tags(glob_entry(glob), [t for t in tags if t]) == selected
    assert select_tags(glob_entry(glob), [t for t in tags if t]) == sorted(fnmatch.filter([t for t in tags if t], glob))


def test_wildcards_select_as_fnmatch_for_many_random_cases():
    rng = random.Random(20)
    tag_chars, glob_chars = "ab1.-_", "ab1.-_*?[]!"
    for _ in range(3000):
        glob = "".join(rng.choice(glob_chars) for _ in range(rng.randint(1, 7)))
        tags = sorted({"".join(rng.choice(tag_chars) for _ in range(rng.randint(1, 6))) for _ in range(20)})
        if reversed_range(glob):  # refused when the watchlist or list is read (test below)
            continue
        assert select_tags(glob_entry(glob), tags) == sorted(fnmatch.filter(tags, glob)), glob


@pytest.mark.parametrize("glob, backwards", [("[b-a]*", "b-a"), ("v[!9-0]", "9-0"), ("[*-!]x", "*-!"),
                                             ("[]-!]", "]-!"), ("[a-z]", None), ("a[b-a", None)])
def test_a_backwards_range_is_refused_on_every_python(tmp_path, glob, backwards):
    # Python 3.9's fnmatch cannot compile it, 3.10 and later drop it: refused, it means the same everywhere.
    assert reversed_range(glob) == backwards
    path = tmp_path / "watchlist.toml"
    path.write_text(f'[[image]]\nsource = "alpine"\ntag_glob = ["{glob}"]\n')
    if backwards is None:
        load_watchlist(path)
        return
    with pytest.raises(ConfigError, match=f"the range '{re.escape(backwards)}' goes backwards"):
        load_watchlist(path)
    read = parse_osg(f"alpine:{glob}\n", "docker_images.txt")
    assert not read.images and "goes backwards" in str(read.problems[0])


def test_exact_tags_beside_wildcards_select_what_the_old_tool_published():
    """The old tool: each exact line, plus fnmatch.filter(listing, glob) of
    each wildcard line; here one entry selects them from the listing."""
    by_dest, _ = osg_entries()
    listing = ["nightly", "1-stable", "2-stable", "stable", "nightly-2"]
    old = {"nightly"} | set(fnmatch.filter(listing, "*-stable"))
    assert select_tags(by_dest["eicweb/jug_xl"], listing) == sorted(old)


def ducc_selects(pattern: str, tags: List[str]) -> List[str]:
    """DUCC's filterUsingGlob: `*` becomes `.*`, the leftmost-longest match
    must be the whole tag (Go's RE2; the same as a full match)."""
    regex = re.compile(pattern.replace("*", ".*"))
    return sorted(t for t in tags if regex.fullmatch(t))


def test_ducc_wildcards_select_as_ducc_for_many_random_cases():
    rng = random.Random(21)
    tag_chars, star_chars = "ab1.-_", "ab1.-_*"
    for _ in range(2000):
        stars = ["".join(rng.choice(star_chars) for _ in range(rng.randint(1, 6))) + "*"
                 for _ in range(rng.randint(1, 2))]
        exact = "a" + "".join(rng.choice(tag_chars) for _ in range(2))
        text = "input:\n" + "".join(f"  - 'https://r.example.org/a/b:{s}'\n" for s in stars + [exact])
        read = parse_ducc(text, "w.yaml")
        entries, problems = list_entries(read, config("ducc", "$(repository)"), 1)
        assert not (problems or read.problems) and len(entries) == 1
        tags = sorted({"".join(rng.choice(tag_chars) for _ in range(rng.randint(1, 6))) for _ in range(20)} | {exact})
        expected = sorted(set().union(*(ducc_selects(s, tags) for s in stars)) | {exact})
        assert select_tags(entries[0], tags) == expected, stars


# -- DUCC's wishlist --------------------------------------------------------

def test_the_wishlist_is_read_with_ducc_paths():
    read = read_list(WISHLIST, "ducc")
    entries, problems = list_entries(read, config("ducc", "$(registry)/$(repository)", WISHLIST), 1)
    got = {e.dest: (e.source.name, e.tags, e.tag_pattern) for e in entries}
    assert got == {
        # DUCC's path: the registry and repository as the wishlist writes them
        "registry.hub.docker.com/library/centos": ("docker.io/library/centos", ("centos7", "centos8"), None),
        "registry.hub.docker.com/atlas/athena": ("docker.io/atlas/athena", ("21.0.15",), None),
        "gitlab-registry.cern.ch/group/sub/image": ("gitlab-registry.cern.ch/group/sub/image", (),
                                                    r"\A(?:stable|1.2..*)\Z"),
        "ghcr.io/org/tool": ("ghcr.io/org/tool", (), r"\A(?:.*-cuda)\Z"),
        "localhost:5000/test/img": ("localhost:5000/test/img", ("v1",), None),
    }
    assert not problems
    expected = {
        13: "plain http; the watchlist needs [registries.\"localhost:5000\"] insecure = true",
        14: "digest pins are not supported", 15: "no tag", 16: "scheme 'ftp'", 17: "expected <registry>/",
        18: "'notahost' is not a registry host", 19: "more than one ':'", 20: "not a valid pattern",
        21: "expected an image", 22: "unknown key 'unknown_key'",
    }
    shown = [str(p) for p in read.problems]
    assert len(shown) == len(expected), shown
    for line, words in expected.items():
        assert any(p.startswith(f"wishlist.yaml:{line}: ") and words in p for p in shown), (line, shown)


def test_a_wishlist_that_is_not_yaml_or_has_no_input_cannot_be_read():
    with pytest.raises(ConfigError, match=r"w.yaml:\d+: not a DUCC wishlist: YAML syntax error"):
        parse_ducc("version: 1\ninput:\n  - 'a\n  b: [\n", "w.yaml")
    with pytest.raises(ConfigError, match="no `input` list"):
        parse_ducc("version: 1\n", "w.yaml")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        parse_ducc("- a\n", "w.yaml")
    with pytest.raises(ConfigError, match=r"w.yaml:3: .*character '\\x07' is not allowed in YAML"):
        parse_ducc("version: 1\ninput:\n  - 'a\x07'\n", "w.yaml")
    # `input:` with nothing is no image, as DUCC reads it
    assert parse_ducc("version: 1\ninput:\n", "w.yaml").images == []


# -- reconcile import -------------------------------------------------------

def run_import(capsys, *args: str) -> Tuple[int, str, str]:
    code = main(["import", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("form, path", [("osg", OSG_LIST), ("ducc", WISHLIST)])
def test_import_prints_entries_that_load_as_the_same_entries(tmp_path, capsys, form, path):
    code, out, err = run_import(capsys, "--format", form, str(path))
    assert code == 1  # lines were skipped, each named on stderr
    assert all(re.match(rf"{path.name}:\d+: ", line) for line in err.splitlines()), err
    watchlist = tmp_path / "watchlist.toml"
    watchlist.write_text('[publish]\nroot = "publish"\n\n' + out)
    loaded = load_watchlist(watchlist).images
    read = read_list(path, form)
    entries, _ = list_entries(read, config(form, "$(repository)" if form == "osg" else "$(registry)/$(repository)",
                                           path), 1)
    assert [(e.source, e.tags, e.tag_glob, e.tag_pattern, e.dest) for e in loaded] == \
        [(e.source, e.tags, e.tag_glob, e.tag_pattern, e.dest) for e in entries]
    assert out.startswith(f"# {path.name}:")


def test_import_exit_codes(tmp_path, capsys):
    clean = tmp_path / "clean.txt"
    clean.write_text("# fine\nalpine:3\n")
    assert run_import(capsys, "--format", "osg", str(clean))[0] == 0
    code, out, err = run_import(capsys, "--format", "osg", str(tmp_path / "missing.txt"))
    assert (code, out) == (2, "") and "missing.txt: cannot read the osg list" in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"alpine:3\n\xff\n")
    code, _, err = run_import(capsys, "--format", "osg", str(bad))
    assert code == 2 and "bad.txt:2: not UTF-8 text" in err
    code, _, err = run_import(capsys, "--format", "osg", "--dest", "all", str(clean))
    assert code == 2 and "$(repository)" in err


# -- [[list]] in the watchlist ----------------------------------------------

def write(tmp_path: Path, body: str, osg: Optional[str] = "alpine:3\n") -> Path:
    if osg is not None:
        (tmp_path / "docker_images.txt").write_text(osg)
        settled(tmp_path / "docker_images.txt")
    path = tmp_path / "watchlist.toml"
    path.write_text('[publish]\nroot = "publish"\n' + body)
    return path


def test_a_list_table_is_declared_and_checked(tmp_path):
    w = load_watchlist(write(tmp_path, '[[list]]\npath = "docker_images.txt"\nformat = "osg"\ninterval = "1h"\n'))
    assert [(c.path, c.format, c.dest, c.interval) for c in w.lists] == \
        [(tmp_path / "docker_images.txt", "osg", "$(repository)", 3600.0)]
    for body, words in [
        ('[[list]]\npath = "docker_images.txt"\nformat = "yaml"\n', "list[1].format: expected one of 'osg', 'ducc'"),
        ('[[list]]\nformat = "osg"\n', "list[1].path: required"),
        ('[[list]]\npath = "docker_images.txt"\nformat = "osg"\ndest = "x/$(tag)"\n', "list[1].dest: expected a "
                                                                                      "template with $(repository)"),
        ('[[list]]\npath = "docker_images.txt"\nformat = "osg"\ndest = "$(repository):$(tag)"\n',
         "list[1].dest: the variables are"),
        ('[[list]]\npath = "docker_images.txt"\nformat = "osg"\ndest = "../$(repository)"\n', "list[1].dest: expected"),
        ('[[list]]\npath = "docker_images.txt"\nformat = "osg"\nformt = "osg"\n', 'did you mean "format"'),
        ('[list]\npath = "docker_images.txt"\n', "write [[list]], with double brackets"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_watchlist(write(tmp_path, body))


def test_image_blocks_win_over_lists_and_lists_over_later_lists(tmp_path):
    (tmp_path / "second.txt").write_text("alpine:3\nbusybox:1\n")
    w = load_watchlist(write(tmp_path, '[[image]]\nsource = "docker.io/library/alpine"\ntags = ["edge"]\n'
                                       'dest = "library/alpine"\n'
                                       '[[list]]\npath = "docker_images.txt"\nformat = "osg"\n'
                                       '[[list]]\npath = "second.txt"\nformat = "osg"\n',
                             osg="alpine:3\nbusybox:2\nubuntu:1\n"))
    merged = ListSources(w).merged().images
    assert [(e.index, e.label, e.tags) for e in merged] == [
        (1, "image[1] (docker.io/library/alpine)", ("edge",)),
        (2, "docker_images.txt:2 (docker.io/library/busybox)", ("2",)),
        (3, "docker_images.txt:3 (docker.io/library/ubuntu)", ("1",)),
    ]


def test_a_list_unreadable_at_start_is_a_configuration_error(tmp_path):
    w = load_watchlist(write(tmp_path, '[[list]]\npath = "missing.txt"\nformat = "osg"\n'))
    with pytest.raises(ConfigError, match=r"watchlist.toml: list\[1\] \(missing.txt\): .*cannot read the osg list"):
        ListSources(w).merged()


def test_a_list_that_breaks_keeps_its_last_good_entries(tmp_path, caplog):
    w = load_watchlist(write(tmp_path, '[[list]]\npath = "docker_images.txt"\nformat = "osg"\n',
                             osg="alpine:3\nbusybox:1\n"))
    sources = ListSources(w)
    first = sources.merged().images
    (tmp_path / "docker_images.txt").write_bytes(b"alpine:3\n\xff")
    settled(tmp_path / "docker_images.txt")
    assert sources.merged().images == first
    assert "keeping its 2 entries of the last good read" in caplog.text
    settled(tmp_path / "docker_images.txt").write_text("alpine:3\n")
    settled(tmp_path / "docker_images.txt")
    assert [e.dest for e in sources.merged().images] == ["library/alpine"]


def test_a_list_being_written_is_read_at_a_later_cycle(tmp_path, caplog):
    """`git pull` rewrites a file in place: a list read half-way would drop
    every image not yet written (and publish them again a cycle later)."""
    caplog.set_level(logging.INFO)
    w = load_watchlist(write(tmp_path, '[[list]]\npath = "docker_images.txt"\nformat = "osg"\n',
                             osg="alpine:3\nbusybox:1\nubuntu:1\n"))
    sources = ListSources(w)
    first = sources.merged().images
    (tmp_path / "docker_images.txt").write_text("alpine:3\nbusybox:")  # half-way, just now
    assert sources.merged().images == first
    assert "perhaps still being written; read at a later cycle" in caplog.text
    settled(tmp_path / "docker_images.txt")  # written a while ago after all: read as it is
    assert [e.dest for e in sources.merged().images] == ["library/alpine"]


def test_skipped_lines_are_logged_once_not_every_cycle(tmp_path, caplog):
    w = load_watchlist(write(tmp_path, '[[list]]\npath = "docker_images.txt"\nformat = "osg"\n',
                             osg="alpine:3\nfoo:a:b\n"))
    sources = ListSources(w)
    sources.merged()
    sources.merged()
    assert caplog.text.count("docker_images.txt:2: ") == 1


def test_tag_glob_in_an_image_block(tmp_path):
    w = load_watchlist(write(tmp_path, '[[image]]\nsource = "docker.io/library/alpine"\ntag_glob = ["3.*"]\n'))
    assert w.images[0].tag_glob == ("3.*",) and w.images[0].lists_tags
    for body, words in [
        ('tag_glob = []', "tag_glob: expected at least one wildcard"),
        ('tag_glob = ["a b"]', "holds characters no tag has"),
        ('tags = ["1"]\ntag_glob = ["1*"]', "not both"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_watchlist(write(tmp_path, f'[[image]]\nsource = "docker.io/library/alpine"\n{body}\n'))


def test_a_registry_address_is_checked(tmp_path):
    w = load_watchlist(write(tmp_path, '[registries."docker.io"]\naddress = "127.0.0.1:5000"\ninsecure = true\n'))
    assert w.registry("docker.io").address == "127.0.0.1:5000"
    with pytest.raises(ConfigError, match=r'registries."docker.io".address: expected a host and port'):
        load_watchlist(write(tmp_path, '[registries."docker.io"]\naddress = "http://127.0.0.1:5000"\n'))


TWO_TARGETS = ('[publish.public]\nroot = "public"\n[publish.restricted]\nroot = "restricted"\n'
               '[state]\ndir = "state"\n')


def test_a_list_publishes_to_the_target_it_names(tmp_path):
    (tmp_path / "docker_images.txt").write_text("alpine:3\n")
    (tmp_path / "watchlist.toml").write_text(TWO_TARGETS + '[[list]]\npath = "docker_images.txt"\nformat = "osg"\n')
    with pytest.raises(ConfigError, match=r"list\[1\].publish: required with several targets"):
        load_watchlist(tmp_path / "watchlist.toml")
    (tmp_path / "watchlist.toml").write_text(TWO_TARGETS + '[[list]]\npath = "docker_images.txt"\nformat = "osg"\n'
                                                           'publish = "restricted"\n')
    w = load_watchlist(tmp_path / "watchlist.toml")
    assert [(e.dest, e.publish) for e in ListSources(w).merged().images] == [("library/alpine", "restricted")]


def test_each_targets_part_follows_the_list_at_a_refresh(tmp_path):
    from reconciler.reconcile import Reconciler

    (tmp_path / "a.txt").write_text("alpine:3\n")
    (tmp_path / "b.txt").write_text("busybox:1\n")
    (tmp_path / "watchlist.toml").write_text(
        TWO_TARGETS + '[[list]]\npath = "a.txt"\nformat = "osg"\npublish = "public"\n'
                      '[[list]]\npath = "b.txt"\nformat = "osg"\npublish = "restricted"\n')
    r = Reconciler(load_watchlist(tmp_path / "watchlist.toml"))
    try:
        def parts():
            return {run.config.name: [e.dest for e in run.watchlist.images] for run in r.targets}

        assert parts() == {"public": ["library/alpine"], "restricted": ["library/busybox"]}
        settled(tmp_path / "a.txt").write_text("alpine:3\nubuntu:1\n")
        settled(tmp_path / "a.txt")
        r.refresh()
        assert parts() == {"public": ["library/alpine", "library/ubuntu"], "restricted": ["library/busybox"]}
    finally:
        r.close()
