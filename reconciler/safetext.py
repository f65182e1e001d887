"""Text from outside made inert before it reaches a terminal or a plain log line.

A registry's error body, a tag, a path inside a layer or a webhook header can
hold newlines (a forged log line), escape sequences (a terminal's title,
colours, cursor moves) or bidirectional overrides (text that reads otherwise
than it is). Each such character is written as a Python escape (`\\x1b`,
`\\n`, `\\u202e`), so what was sent stays readable and can do nothing.
JSON logs and the status page escape on their own and need none of this.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: one message is one line), DEL, C1
# controls, and the Unicode bidirectional embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: "re.Match[str]") -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: str) -> str:
    """`text` with every control character (newlines too) and bidirectional
    override escaped: safe to print on one line of a terminal or a log."""
    return _UNSAFE.sub(_escape, text)
