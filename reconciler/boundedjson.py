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

# A JSON string literal: brackets inside it do not nest. One that never
# closes runs to the end of the text, so every position is scanned once
# (a hostile `"\"\"\"…` costs a linear pass, not a quadratic one).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class JSONTooDeepError(ValueError):
    """A document nested deeper than its reader allows."""


def _text(data: Union[bytes, str]) -> str:
    """`data` as the JSON decoder reads it: bytes in UTF-8, -16 or -32, as it
    detects (measured in another encoding than the decoder's, UTF-16's NUL
    bytes would put the string scan out of step)."""
    if isinstance(data, str):
        return data
    raw = bytes(data)
    return raw.decode(json.detect_encoding(raw), "surrogatepass")


def _brackets(text: str) -> str:
    """The brackets of `text` in order, those inside string literals left out."""
    return _NOT_BRACKET.sub("", _STRING.sub("", text))


def _depth(brackets: str) -> int:
    return max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)


def nesting_depth(data: Union[bytes, str]) -> int:
    """How deeply `data`'s arrays and objects nest (for invalid JSON, an upper bound)."""
    return _depth(_brackets(_text(data)))


def loads(data: Union[bytes, str], *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(data)`, refusing (JSONTooDeepError) a document nested deeper
    than `max_depth`. Undecodable bytes raise UnicodeDecodeError, a ValueError."""
    text = _text(data)
    brackets = _brackets(text)
    # Fewer openers than the bound cannot nest past it: the exact count (a loop
    # in Python) is only paid for documents that might.
    if brackets.count("[") + brackets.count("{") > max_depth:
        depth = _depth(brackets)
        if depth > max_depth:
            raise JSONTooDeepError(f"JSON nested {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text)
    except RecursionError:  # not reachable past the check above; kept a ValueError all the same
        raise JSONTooDeepError("JSON nested deeper than the decoder can follow") from None
