"""JSON from outside, its nesting bounded before it is parsed.

`json.loads` recurses once per nested array or object. Past the recursion
limit it raises RecursionError, but on Python 3.9 the C decoder can also abort
the whole process ("Fatal Python error: Cannot recover from stack overflow"),
depending on how deep the caller's stack already is: a registry answering
`[[[[…` could then stop the service. So every document a registry, a token
service or a webhook sends is measured first, at C speed for anything a real
manifest looks like, and refused as too deep (a ValueError, as for any
other malformed JSON) before the decoder sees it.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Union

# Manifests, indexes, configs, tag lists and webhook bodies nest a handful of
# levels; far below the recursion limit, with room for the caller's frames.
MAX_DEPTH = 64

# A JSON string literal: brackets inside it do not nest.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)


class JSONTooDeepError(ValueError):
    """A document nested deeper than its reader allows."""


def _brackets(data: Union[bytes, str]) -> bytes:
    """The brackets of `data` in order, those inside string literals left out."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    return _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)


def _depth(brackets: bytes) -> int:
    return max(accumulate(1 if b in b"[{" else -1 for b in brackets), default=0)


def nesting_depth(data: Union[bytes, str]) -> int:
    """How deeply `data`'s arrays and objects nest (for invalid JSON, an upper bound)."""
    return _depth(_brackets(data))


def loads(data: Union[bytes, str], *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(data)`, refusing (JSONTooDeepError) a document nested deeper than `max_depth`."""
    brackets = _brackets(data)
    # Fewer openers than the bound cannot nest past it: the exact count (a loop
    # in Python) is only paid for documents that might.
    if brackets.count(b"[") + brackets.count(b"{") > max_depth:
        depth = _depth(brackets)
        if depth > max_depth:
            raise JSONTooDeepError(f"JSON nested {depth} levels deep, more than the {max_depth} allowed")
    return json.loads(data)
