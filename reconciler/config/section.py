"""Typed access to one TOML table, checked against its declaration (schema.py),
that reports every mistake as a ConfigError naming the file, the table and
the key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..registry.manifest import Platform
from .schema import Table
from .values import parse_duration


def describe(value: object) -> str:
    """A value for a message: its TOML-ish type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def unknown_message(name: str, known: Sequence[str], noun: str = "key") -> str:
    """`unknown key "tagz" (did you mean "tags"?)`, or the known keys when none is close."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f'unknown {noun} "{name}" (did you mean "{close[0]}"?)'
    return f'unknown {noun} "{name}" (known {noun}s here: {", ".join(sorted(known))})'


def config_path(base: Path, value: str) -> Path:
    """`value` as a path, relative ones taken from `base`; ValueError when it cannot be one."""
    if "\0" in value:
        raise ValueError(f"{value!r} contains a NUL character")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~someone" without such a user, or "~" without HOME
        raise ValueError(f"cannot expand {value!r}: no such user or no home directory") from None
    return p if p.is_absolute() else (base / p)


class Section:
    """One table of the file, read through its declaration. Its keys are
    checked against the declared ones as soon as it is opened. Absent keys
    take their declared default unless the caller gives another."""

    def __init__(self, file: str, where: str, data: object, declared: Table) -> None:
        self.file, self.where, self.declared = file, where, declared
        if not isinstance(data, dict):
            raise self.error("", f"expected a table, got {describe(data)}")
        self.data: Dict[str, Any] = data
        known = declared.names
        for key in data:  # in file order: the first typo is reported first
            if key not in known:
                raise self.error("", unknown_message(key, known))

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError located at `key` of this table ("" for the table itself)."""
        location = ".".join(p for p in (self.where, key) if p)
        return ConfigError(f"{self.file}: {location}: {message}" if location else f"{self.file}: {message}")

    def get(self, name: str) -> Any:
        """The file's value of `name`, checked against its declared kind; None when absent."""
        kind = self.declared.key(name).kind
        if name not in self.data:
            return None
        value = self.data[name]
        if kind.toml_type is int and isinstance(value, bool) or not isinstance(value, kind.toml_type):
            raise self.error(name, f"expected {kind.expected}, got {describe(value)}")
        # Values become file names, command arguments and headers, none of
        # which can carry a NUL: every os call would fail with ValueError.
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str) and "\0" in text:
                raise self.error(name, f"{text!r} contains a NUL character")
        return value

    def text(self, name: str) -> Optional[str]:
        """A string, or its declared default (None when there is none)."""
        value: Optional[str] = self.get(name)
        default = self.declared.key(name).default
        return value if value is not None else default if isinstance(default, str) else None

    def whole(self, name: str) -> Optional[int]:
        """A whole number, or its declared default."""
        value: Optional[int] = self.get(name)
        default = self.declared.key(name).default
        if value is None and isinstance(default, int) and not isinstance(default, bool):
            return default
        return value

    def flag(self, name: str) -> bool:
        """true or false, or its declared default."""
        value: Optional[bool] = self.get(name)
        return value if value is not None else self.declared.default_flag(name)

    def table(self, name: str) -> Dict[str, Any]:
        """A sub-table, or {} when absent."""
        value: Optional[Dict[str, Any]] = self.get(name)
        return value if value is not None else {}

    def tables(self, name: str) -> List[Any]:
        """A list of tables (each checked where it is read), or [] when absent."""
        value: Optional[List[Any]] = self.get(name)
        return value if value is not None else []

    def strings(self, name: str) -> Optional[List[str]]:
        """A list of strings, or its declared default (None when there is none)."""
        value: Optional[List[Any]] = self.get(name)
        if value is None:
            default = self.declared.key(name).default
            return list(default) if isinstance(default, tuple) else None
        if not all(isinstance(v, str) for v in value):
            raise self.error(name, "expected a list of strings")
        return value

    def duration(self, name: str, default: Optional[float] = None, minimum: float = 0.0) -> float:
        """Seconds: the file's duration, else `default`, else the declared default."""
        value: Optional[str] = self.get(name)
        if value is None:
            return default if default is not None else parse_duration(self.declared.default_text(name))
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None
        if seconds < minimum:
            raise self.error(name, f"expected at least {minimum:.0f}s, got {value!r}")
        return seconds

    def path(self, name: str, base: Path, default: Optional[str] = None) -> Optional[Path]:
        """A path; relative ones are taken from `base`. An empty or absent
        value takes `default`; None when that is None too."""
        value = self.get(name) or default
        if value is None:
            return None
        try:
            return config_path(base, value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def platforms(self, name: str, default: Tuple[Platform, ...]) -> Tuple[Platform, ...]:
        """Platforms such as "linux/arm64/v8", or `default` when absent."""
        values: Optional[List[Any]] = self.get(name)
        if values is None:
            return default
        if not all(isinstance(v, str) for v in values):
            raise self.error(name, "expected a list of strings")
        if not values:
            raise self.error(name, "expected at least one platform such as \"linux/amd64\"")
        try:
            return tuple(Platform.parse(v) for v in values)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None
