"""`Link` header parsing (RFC 8288), for tag list pagination.

One header may carry several links (`<a>; rel="prev", <b>; rel="next"`),
a response may carry several `Link` headers, a URL may contain commas and
`rel` may list several relation types (`rel="next last"`). Quay once sent
the URL without `<>`; that form is accepted too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import FrozenSet, Iterable, List, Optional, Set

from .challenge import read_quoted

_SPACES = re.compile(r"[ \t]*")
_UNBRACKETED = re.compile(r"[^;,]*")
_PARAM_NAME = re.compile(r"[^=;,\s]*")
_PARAM_VALUE = re.compile(r"[^;,\s]*")


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
            m = _UNBRACKETED.match(value, pos)
            target, pos = m.group(0).strip(), m.end()  # type: ignore[union-attr]
        rels: Set[str] = set()
        while True:
            pos = _SPACES.match(value, pos).end()  # type: ignore[union-attr]
            if pos >= end or value[pos] != ";":
                break
            pos = _SPACES.match(value, pos + 1).end()  # type: ignore[union-attr]
            m = _PARAM_NAME.match(value, pos)
            name, pos = m.group(0).lower(), m.end()  # type: ignore[union-attr]
            pos = _SPACES.match(value, pos).end()  # type: ignore[union-attr]
            param = ""
            if pos < end and value[pos] == "=":
                pos = _SPACES.match(value, pos + 1).end()  # type: ignore[union-attr]
                if pos < end and value[pos] == '"':
                    param, pos, _ = read_quoted(value, pos)  # unterminated: taken as it is
                else:
                    m = _PARAM_VALUE.match(value, pos)
                    param, pos = m.group(0), m.end()  # type: ignore[union-attr]
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
