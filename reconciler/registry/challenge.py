"""`WWW-Authenticate` parsing (RFC 7235 / RFC 6750).

A header may carry several challenges (`Basic realm="x", Bearer realm="y"`),
and a quoted parameter value may itself contain commas
(`scope="repository:a:pull,push"`): splitting on commas is wrong, so this is a
small tokenizer. Parameter names are case-insensitive; values are kept exactly.

It is lenient where registries are known to stray from the grammar: an
unquoted value may hold `/` or `:` (`Basic realm=/`,
`scope=repository:a/b:pull`), and `parse_challenges` reads several
`WWW-Authenticate` headers, skipping one it cannot parse when another one
offers a usable challenge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import RegistryError

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SPACES = re.compile(r"[ \t]*")


def read_quoted(text: str, pos: int) -> Tuple[str, int, bool]:
    """The RFC 7230 quoted-string opening at `pos` (backslash escapes undone):
    its value, the position after it, and whether its closing quote was there."""
    out = []
    pos += 1  # the opening quote
    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if ch == '"':
            return "".join(out), pos + 1, True
        out.append(ch)
        pos += 1
    return "".join(out), pos, False
# RFC 7235 wants a token here; servers send URLs and scopes unquoted, so take
# anything up to the next separator.
_UNQUOTED = re.compile(r'[^\s,"]+')
SUPPORTED_SCHEMES = ("bearer", "basic")  # in order of preference


class MalformedChallengeError(RegistryError):
    """A `WWW-Authenticate` header we cannot parse."""


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: a scheme and its parameters."""

    scheme: str  # lowercased: "bearer", "basic"
    params: Dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Optional[str]:
        """The parameter `name` (case-insensitive), or None."""
        return self.params.get(name.lower())


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        match = _SPACES.match(self.text, self.pos)
        if match:  # always: the pattern matches nothing too
            self.pos = match.end()

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def unquoted(self) -> str:
        m = _UNQUOTED.match(self.text, self.pos)
        if not m:
            return ""
        self.pos = m.end()
        return m.group(0)

    def token(self) -> Optional[str]:
        m = _TOKEN.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        return m.group(0)

    def quoted(self) -> str:
        assert self.peek() == '"'
        value, self.pos, closed = read_quoted(self.text, self.pos)
        if not closed:
            raise MalformedChallengeError("unterminated quoted string in WWW-Authenticate header")
        return value


def _challenge_params(s: _Scanner) -> Dict[str, str]:
    """The parameters of the challenge whose scheme `s` has just read: a
    token68 (under the key ""), or `name=value` pairs up to the next
    challenge or the end."""
    params: Dict[str, str] = {}
    s.skip_ws()
    # token68 form (`Negotiate abc==`): one token68 followed by the end or a comma
    m = _TOKEN68.match(s.text, s.pos)
    if m and re.match(r"[ \t]*(,|$)", s.text[m.end():]):
        params[""] = m.group(0)
        s.pos = m.end()
        s.skip_ws()
    while not s.at_end() and s.peek() != ",":
        before = s.pos
        name = s.token()
        if name is None:
            raise MalformedChallengeError(f"expected a parameter name at position {s.pos} of WWW-Authenticate")
        s.skip_ws()
        if s.peek() != "=":
            # this token was the next challenge's scheme
            s.pos = before
            break
        s.pos += 1
        s.skip_ws()
        if s.peek() == '"':
            value = s.quoted()
        else:
            value = s.unquoted()
            if not value:
                raise MalformedChallengeError(
                    f"parameter {name!r} has no value in WWW-Authenticate"
                )
        params[name.lower()] = value
        s.skip_ws()
        if s.peek() == ",":
            s.pos += 1
            s.skip_ws()
            # next element: another param of this challenge, or a new challenge
            save = s.pos
            nxt = s.token()
            s.skip_ws()
            is_param = nxt is not None and s.peek() == "=" and not s.text.startswith("==", s.pos)
            s.pos = save
            if not is_param:
                break
    return params


def parse_www_authenticate(header: str) -> List[Challenge]:
    """Parse a `WWW-Authenticate` header into its challenges, in order.

    Raises MalformedChallengeError for a header that is not RFC 7235 syntax.
    """
    s = _Scanner(header)
    challenges: List[Challenge] = []
    s.skip_ws()
    while not s.at_end():
        if s.peek() == ",":  # empty list elements are allowed
            s.pos += 1
            s.skip_ws()
            continue
        scheme = s.token()
        if scheme is None:
            raise MalformedChallengeError(f"expected an auth scheme at position {s.pos} of WWW-Authenticate")
        params = _challenge_params(s)
        challenges.append(Challenge(scheme.lower(), params))
        s.skip_ws()
    if not challenges:
        raise MalformedChallengeError("empty WWW-Authenticate header")
    return challenges


def parse_challenges(headers: Iterable[str]) -> List[Challenge]:
    """The challenges of every `WWW-Authenticate` header of a response, in order.

    A header that cannot be parsed is skipped when another header yields a
    Bearer or Basic challenge (a `Negotiate` header beside a `Basic` one must
    not hide the latter); otherwise its MalformedChallengeError is raised.
    """
    challenges: List[Challenge] = []
    error: Optional[MalformedChallengeError] = None
    for header in headers:
        try:
            challenges.extend(parse_www_authenticate(header))
        except MalformedChallengeError as exc:
            error = error or exc
    if error is not None and pick_challenge(challenges) is None:
        raise error
    if not challenges:
        raise MalformedChallengeError("empty WWW-Authenticate header")
    return challenges


def pick_challenge(challenges: Iterable[Challenge]) -> Optional[Challenge]:
    """The challenge to answer: the first Bearer, else the first Basic, else None."""
    challenges = list(challenges)
    for scheme in SUPPORTED_SCHEMES:
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None
