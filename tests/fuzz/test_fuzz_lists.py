"""The list readers (reconciler/lists): a site's docker_images.txt or DUCC
wishlist is text anyone with a pull request can change. Whatever it holds,
a reader skips bad lines with a file:line problem (osg) or refuses the file
with a ConfigError (ducc: not YAML), never anything else; and every entry it
makes loads back from `reconcile import`'s TOML as the same entry."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from reconciler.errors import ConfigError
from reconciler.lists.ducc import parse_ducc
from reconciler.lists.entries import list_entries
from reconciler.lists.osg import parse_osg
from reconciler.lists.toml_out import image_tables
from reconciler.registry.manifest import Platform
from reconciler.registry.reference import is_valid_tag
from reconciler.watchlist import ListConfig, dest_problem
from tests.fuzz.budget import budget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LINE_ALPHABET = "abz019._-/:@*?[]!#  \t\r\\\"'é\x00"
lines = st.lists(st.one_of(st.text(st.sampled_from(LINE_ALPHABET), max_size=40), st.text(max_size=20)), max_size=12)


def config(form: str, dest: str) -> ListConfig:
    return ListConfig(1, Path("list"), form, dest, (Platform.parse("linux/amd64"),), 900.0)


def check_entries(read, form: str, dest: str) -> None:
    entries, problems = list_entries(read, config(form, dest), 1)
    for p in read.problems + problems:
        assert p.line >= 1 and str(p).startswith(f"list:{p.line}: ")
    for entry in entries:
        assert dest_problem(entry.dest) is None
        assert all(is_valid_tag(t) for t in entry.tags)
    # `reconcile import`'s TOML reads back as the same entries
    tables = tomllib.loads(image_tables(entries)).get("image", [])
    assert [(t["source"], tuple(t.get("tags", ())), tuple(t.get("tag_glob", ())), t.get("tag_pattern"), t["dest"])
            for t in tables] == \
        [(e.source.name, e.tags, e.tag_glob, e.tag_pattern, e.dest) for e in entries]


@given(lines)
@budget(400)
@example(["ubuntu", "a/b:*", "h.io/a/b/c:1", "a/b:x:y", "ghcr.io/x", "a:", "#c", "a/b@sha256:1"])
def test_any_osg_list_is_read_line_by_line(text_lines) -> None:
    text = "\n".join(text_lines)
    read = parse_osg(text, "list")
    assert all(1 <= i.line <= len(text.split("\n")) for i in read.images)
    check_entries(read, "osg", "$(repository)")
    check_entries(read, "osg", "x/$(registry)/$(repository)")


@given(lines)
@budget(400)
@example(["https://h.io/a/b:1.*", "h.io/a:b:c", "http://localhost:5000/x:1", "ftp://h.io/a:1"])
def test_any_wishlist_input_is_read_or_reported(inputs) -> None:
    text = "version: 1\ninput:\n" + "".join(f"  - {_yaml_quote(i)}\n" for i in inputs)
    try:
        read = parse_ducc(text, "list")
    except ConfigError as exc:  # a character YAML refuses in a quoted scalar
        assert "is not allowed in YAML" in str(exc)
        return
    check_entries(read, "ducc", "$(registry)/$(repository)")


@given(st.text(max_size=200))
@budget(300)
@example("input: [")
@example("input: 3")
@example("- a")
@example("\x00")
def test_any_text_as_a_wishlist_is_read_or_refused(text) -> None:
    try:
        read = parse_ducc(text, "list")
    except ConfigError as exc:
        assert str(exc).startswith("list")
        return
    check_entries(read, "ducc", "$(registry)/$(repository)")


def _yaml_quote(text: str) -> str:
    """A YAML single-quoted scalar (quotes doubled); control characters as they are."""
    return "'" + text.replace("'", "''") + "'"
