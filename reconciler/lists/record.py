"""What a list file says, line by line, before it becomes watchlist entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..registry.reference import ImageReference


@dataclass(frozen=True)
class Problem:
    """A line that was skipped, and why (`file:line: message`)."""

    file: str
    line: int  # 1-based; 0 for the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ListedImage:
    """One accepted line: an image and one tag or one wildcard.

    `registry` and `repository` are as the list writes them (they make the
    published path); `source` is the repository to pull from, normalized.
    Exactly one of `tag`, `glob` (shell-style, as Python's fnmatch: OSG) and
    `star` (DUCC: `*` is any run of characters and the rest is read as a
    regular expression, matched whole) is set."""

    line: int
    registry: str
    repository: str
    source: ImageReference  # without tag
    tag: Optional[str] = None
    glob: Optional[str] = None
    star: Optional[str] = None

    @property
    def wanted(self) -> str:
        """The tag or wildcard, as the list wrote it (for messages)."""
        return self.tag or self.glob or self.star or ""


@dataclass
class ListRead:
    """Everything read from one list file: its images and its skipped lines."""

    file: str
    images: List[ListedImage] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)

    def problem(self, line: int, message: str) -> None:
        """Record that `line` was skipped."""
        self.problems.append(Problem(self.file, line, message))


def is_host(part: str) -> bool:
    """True when a name's first part is a registry host, as Docker reads it."""
    return "." in part or ":" in part or part == "localhost"
