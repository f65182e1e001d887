"""The README's watchlist reference says what the loader accepts: every
declared key is in its table with the declared default, every key in the
table or the example is declared, and the table reads as the declarations
render it (regenerate with `python -m reconciler.config.reference`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set

from reconciler.config.reference import default_cell, key_cell, reference_rows
from reconciler.config.watchlist_keys import REFERENCE_TABLES

README = Path(__file__).resolve().parent.parent / "README.md"
REGENERATE = "run `python -m reconciler.config.reference` and paste its table into the README"


def reference_section() -> str:
    """The README's "### Watchlist reference" section, up to the next heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index("### Watchlist reference\n")
    # The next heading of level 2 or 3 ("# " lines are the example's comments).
    following = re.compile(r"\n#{2,3} ").search(text, start + 1)
    return text[start:following.start() if following else len(text)]


def readme_defaults() -> Dict[str, str]:
    """Key cell -> default cell of each row of the section's table."""
    rows = [line for line in reference_section().splitlines() if line.startswith("| `")]
    cells = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]
    return {cell[0]: cell[2] for cell in cells}


def declared_defaults() -> Dict[str, str]:
    """Key cell -> default cell, as the declarations render them."""
    return {key_cell(table, key): default_cell(key) for table in REFERENCE_TABLES for key in table.keys}


def example_keys() -> Dict[str, Set[str]]:
    """The keys the section's TOML example writes (commented out or not), by table title."""
    block = reference_section().split("```toml\n", 1)[1].split("```", 1)[0]
    found: Dict[str, Set[str]] = {}
    title = ""
    for line in block.splitlines():
        header = re.match(r"\[\[?([a-z]+)", line)
        if header:
            title = header.group(1)
            continue
        for key in re.findall(r"(?:^#?\s*|\bor |\bwith )([a-z_]+) = ", line):
            found.setdefault(title, set()).add(key)
    return found


def test_every_declared_key_is_in_the_readme_table_with_its_default():
    readme, declared = readme_defaults(), declared_defaults()
    assert sorted(set(declared) - set(readme)) == [], REGENERATE
    assert {key: readme[key] for key in declared} == declared, REGENERATE


def test_every_key_in_the_readme_table_is_declared():
    assert sorted(set(readme_defaults()) - set(declared_defaults())) == [], REGENERATE


def test_the_readme_table_reads_as_the_declarations_render_it():
    section: List[str] = reference_section().splitlines()
    rows = reference_rows()
    start = section.index(rows[0])
    assert section[start:start + len(rows)] == rows, REGENERATE


def test_the_readme_example_writes_declared_keys_only_and_all_of_them():
    # A sub-table (image[n].signature) writes its keys under its parent's header.
    declared: Dict[str, Set[str]] = {}
    for table in REFERENCE_TABLES:
        declared.setdefault(table.title.split(".")[0].split("[")[0], set()).update(table.names)
    assert example_keys() == declared


def test_no_cell_breaks_the_markdown_table():
    for table in REFERENCE_TABLES:
        for key in table.keys:
            assert "|" not in key.doc + key.default_doc + key.kind.shown, f"{table.title}.{key.name}"


def test_a_watchlist_that_sets_nothing_gets_the_records_defaults(tmp_path):
    from reconciler.watchlist import ImageEntry, PublishConfig, RegistryConfig, load_watchlist

    path = tmp_path / "watchlist.toml"
    path.write_text('[[image]]\nsource = "alpine"\ntags = ["1"]\n')
    watchlist = load_watchlist(path)
    assert watchlist.publish == PublishConfig(root=tmp_path / PublishConfig().root)
    assert watchlist.registry("ghcr.io") == RegistryConfig("ghcr.io")
    assert watchlist.interval == watchlist.images[0].interval == ImageEntry(1, watchlist.images[0].source).interval
    assert watchlist.state_dir == tmp_path / ".reconciler"
