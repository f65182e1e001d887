"""Watchlist entries as `[[image]]` TOML, for an admin to review and paste."""

from __future__ import annotations

import json
from typing import Iterable, List

from ..watchlist import ImageEntry


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes (\\", \\\\, \\n, \\uXXXX) are TOML's too."""
    return json.dumps(text, ensure_ascii=True)


def toml_strings(items: Iterable[str]) -> str:
    """A TOML array of strings on one line."""
    return "[" + ", ".join(toml_string(i) for i in items) + "]"


def image_tables(entries: Iterable[ImageEntry]) -> str:
    """Each entry as an `[[image]]` table, preceded by a comment naming the
    list line it came from. `platforms` and `interval` are left out: the
    watchlist's [defaults] then apply (a [[list]] sets its own)."""
    blocks: List[str] = []
    for entry in entries:
        lines = [f"# {entry.origin}"] if entry.origin else []
        lines += ["[[image]]", f"source = {toml_string(entry.source.name)}"]
        if entry.tags:
            lines.append(f"tags = {toml_strings(entry.tags)}")
        if entry.tag_glob:
            lines.append(f"tag_glob = {toml_strings(entry.tag_glob)}")
        if entry.tag_pattern:
            lines.append(f"tag_pattern = {toml_string(entry.tag_pattern)}")
        lines.append(f"dest = {toml_string(entry.dest)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
