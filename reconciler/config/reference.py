"""The README's watchlist reference table, rendered from the declarations.

Run `python -m reconciler.config.reference` and paste its output into the
README's "Watchlist reference" section after changing a key;
tests/test_watchlist_reference.py fails until the two agree.
"""

from __future__ import annotations

import json
from typing import List, Sequence

from .schema import Key, Table, TomlDefault
from .watchlist_keys import REFERENCE_TABLES

HEADER = ("| Key | Type | Default | What it does |", "|---|---|---|---|")


def toml_text(value: TomlDefault) -> str:
    """A default as the file would write it: "15m", 50, true, ["cvmfs", "srv"]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def default_cell(key: Key) -> str:
    """The default column: the fixed default, what it is computed from, or both."""
    shown = [f"`{toml_text(key.default)}`"] if key.default is not None else []
    if key.default_doc:
        shown.append(key.default_doc)
    return "; ".join(shown)


def key_cell(table: Table, key: Key) -> str:
    """How the reference names a key: `publish.gc_grace`, `image[n].tags`."""
    return f"`{table.title}.{key.name}`"


def reference_rows(tables: Sequence[Table] = REFERENCE_TABLES) -> List[str]:
    """One Markdown table row per declared key, under the header."""
    rows = list(HEADER)
    for table in tables:
        for key in table.keys:
            rows.append(f"| {key_cell(table, key)} | {key.kind.shown} | {default_cell(key)} | {key.doc} |")
    return rows


def main() -> None:
    """Print the table for the README."""
    print("\n".join(reference_rows()))


if __name__ == "__main__":
    main()
