"""Declaring a configuration file's tables: each key once, with the TOML type
it must have, how messages and the reference name that type, its default as
an operator would write it, and one line saying what it does.

The loader (watchlist.py), its unknown-key messages, the records' defaults
and the README's reference table all read these declarations, so none of
them can drift from the others (tests/test_watchlist_reference.py checks the
README against them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

# A default as TOML writes it: a string, a whole number, true/false or a list of strings.
TomlDefault = Union[str, int, bool, Tuple[str, ...]]


@dataclass(frozen=True)
class Kind:
    """What a key's value must be in the file."""

    toml_type: type  # the Python type tomllib gives for it
    expected: str  # the message's "expected <this>, got ..."
    shown: str  # the reference table's type column


# The kinds of value the watchlist holds. Several share a TOML type (a path is
# a string) but are checked and documented apart.
TEXT = Kind(str, "str", "string")
PATH = Kind(str, "str", "path")
SIZE = Kind(str, "str", 'size ("50GiB")')
ADDRESS = Kind(str, "str", '"HOST:PORT"')
DURATION = Kind(str, 'a duration string such as "15m"', 'duration ("1h30m")')
FLAG = Kind(bool, "true or false", "true/false")
WHOLE = Kind(int, "a whole number", "whole number")
STRINGS = Kind(list, "a list of strings", "list of strings")
PLATFORMS = Kind(list, "a list of strings", 'list of "os/arch[/variant]"')


def table_kind(expected: str) -> Kind:
    """The kind of a key whose value is a table (or list of tables)."""
    return Kind(list if expected.startswith("a list") else dict, expected, "table")


@dataclass(frozen=True)
class Key:
    """One key of a table."""

    name: str
    kind: Kind
    doc: str = ""
    # The value used when the key is absent, as the file would write it; None
    # when there is no fixed one (see `default_doc`).
    default: Optional[TomlDefault] = None
    # The reference's default column when `default` cannot say it: computed
    # at load time ("[defaults] interval"), or none at all ("required").
    default_doc: str = ""


@dataclass(frozen=True)
class Table:
    """A TOML table's keys. `title` names it in the reference table."""

    title: str
    keys: Tuple[Key, ...]

    def __post_init__(self) -> None:
        # A key declared twice would leave one declaration silently unused.
        assert len(set(self.names)) == len(self.keys), f"a key of {self.title or 'the top level'} is declared twice"

    @property
    def names(self) -> Tuple[str, ...]:
        """The keys this table may hold, in declaration order."""
        return tuple(key.name for key in self.keys)

    def key(self, name: str) -> Key:
        """The declaration of `name`; KeyError names a key the code uses but never declared."""
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(f"{name!r} is not declared in {self.title or 'the top level'}")

    def default_text(self, name: str) -> str:
        """The string default of `name` (a programming error when it has none)."""
        value = self.key(name).default
        assert isinstance(value, str), f"{self.title}.{name} has no string default"
        return value

    def default_whole(self, name: str) -> int:
        """The whole-number default of `name`."""
        value = self.key(name).default
        assert isinstance(value, int) and not isinstance(value, bool), f"{self.title}.{name} has no whole default"
        return value

    def default_flag(self, name: str) -> bool:
        """The true/false default of `name`."""
        value = self.key(name).default
        assert isinstance(value, bool), f"{self.title}.{name} has no true/false default"
        return value

    def default_strings(self, name: str) -> Tuple[str, ...]:
        """The list-of-strings default of `name`."""
        value = self.key(name).default
        assert isinstance(value, tuple), f"{self.title}.{name} has no list default"
        return value
