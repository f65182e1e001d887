"""`Link` header parsing (RFC 8288), for tag list pagination.

One header may carry several links (`<a>; rel="prev", <b>; rel="next"`),
a response may carry several `Link` headers, a URL may contain commas and
`rel` may list several relation types (`rel="next last"`). Quay once sent
the URL without `<>`; that form is accepted too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import FrozenSet, Iterable, List, Optional, Set, Tuple

from .challenge import read_quoted

_SPACES = re.compile(r"[ \t]*")
_UNBRACKETED = re.compile(r"[^;,]*")
_PARAM_NAME = re.compile(r"[^=;,\s]*")
_PARAM_VALUE = re.compile(r"[^;,\s]*")


def _span(pattern: re.Pattern[str], value: str, pos: int) -> Tuple[str, int]:
    """What `pattern` (which may match nothing) matches at `pos`, and where it ends."""
    m = pattern.match(value, pos)
    return (m.group(0), m.end()) if m else ("", pos)


@dataclass(frozen=True)
class Link:
    """One link-value: its target (as written, maybe relative) and relation types."""

    target: str
    rels: FrozenSet[str]


def parse_link_header(value: str) -> List[Link]:
    """Every link-value of one `Link` header value, in order. Never raises:
    what cannot be read is skipped."""
    links: List[Link] = []
    pos, end = 0, len(value)
    while pos < end:
        while pos < end and value[pos] in " \t,":
            pos += 1
        if pos >= end:
            break
        if value[pos] == "<":
            close = value.find(">", pos + 1)
            if close < 0:
                break
            target, pos = value[pos + 1:close].strip(), close + 1
        else:
            target, pos = _span(_UNBRACKETED, value, pos)
            target = target.strip()
        rels: Set[str] = set()
        while True:
            pos = _span(_SPACES, value, pos)[1]
            if pos >= end or value[pos] != ";":
                break
            pos = _span(_SPACES, value, pos + 1)[1]
            name, pos = _span(_PARAM_NAME, value, pos)
            name = name.lower()
            pos = _span(_SPACES, value, pos)[1]
            param = ""
            if pos < end and value[pos] == "=":
                pos = _span(_SPACES, value, pos + 1)[1]
                if pos < end and value[pos] == '"':
                    param, pos, _ = read_quoted(value, pos)  # unterminated: taken as it is
                else:
                    param, pos = _span(_PARAM_VALUE, value, pos)
            if name == "rel":
                rels.update(r.lower() for r in param.split())
        if target:
            links.append(Link(target, frozenset(rels)))
        # Skip anything unreadable up to the next link-value.
        while pos < end and value[pos] != ",":
            pos += 1
    return links


def next_link(values: Iterable[str]) -> Optional[str]:
    """The target of the first `rel="next"` link among `Link` header values, or None."""
    for value in values:
        for link in parse_link_header(value):
            if "next" in link.rels:
                return link.target
    return None
