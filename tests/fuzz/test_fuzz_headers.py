"""`WWW-Authenticate` (registry/challenge.py) and `Link` (registry/links.py)
headers: both come straight from a registry."""

from __future__ import annotations

from typing import Dict, List, Tuple

from hypothesis import example, given
from hypothesis import strategies as st

from reconciler.registry.challenge import (
    Challenge,
    MalformedChallengeError,
    parse_challenges,
    parse_www_authenticate,
    pick_challenge,
)
from reconciler.registry.links import Link, next_link, parse_link_header
from tests.fuzz.budget import budget

# What an HTTP client hands us as a header value: latin-1 text (h11 refuses
# CR, LF and NUL, but a test double or another client may not).
header_text = st.text(st.characters(max_codepoint=0xFF), max_size=200)
# Text made mostly of the characters these grammars care about, so that
# near-valid headers come up far more often than in uniform text.
GRAMMAR = ' \t,;="\\<>=/:abcBeaBasicrealmservicescopenextrelR0189-._~+'
grammar_text = st.text(st.sampled_from(GRAMMAR), max_size=120)

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
token = st.text(st.sampled_from(TOKEN_CHARS), min_size=1, max_size=12)
# Quoted-string content: any latin-1 character but controls (escaped when needed).
quoted_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=40)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- WWW-Authenticate ------------------------------------------------------------

@given(st.one_of(header_text, grammar_text))
@budget(600)
@example('Bearer realm="https://auth/token",service="r",scope="repository:a:pull,push"')
@example("Basic realm=/")
@example("Negotiate abc==, Basic realm=x")
@example('Bearer realm="unterminated')
@example(",,, ,")
@example("Bearer realm=x,\n")
def test_www_authenticate_raises_only_its_own_error(header: str) -> None:
    try:
        challenges = parse_www_authenticate(header)
    except MalformedChallengeError:
        return
    assert challenges, "a parse that succeeds yields at least one challenge"
    for challenge in challenges:
        assert isinstance(challenge, Challenge)
        assert challenge.scheme == challenge.scheme.lower() and challenge.scheme
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in challenge.params.items())
        assert all(k == k.lower() for k in challenge.params)
    assert pick_challenge(challenges) in challenges + [None]


@given(st.lists(st.one_of(header_text, grammar_text), max_size=4))
@budget(200)
def test_several_headers_raise_only_their_own_error(headers: List[str]) -> None:
    try:
        challenges = parse_challenges(headers)
    except MalformedChallengeError:
        return
    assert challenges


params_strategy = st.dictionaries(token.map(str.lower), quoted_value, max_size=4)
challenge_strategy = st.tuples(token, params_strategy)


def build_header(challenges: List[Tuple[str, Dict[str, str]]], sep: str) -> str:
    parts = []
    for scheme, params in challenges:
        rendered = sep.join(f"{name}={quote(value)}" for name, value in params.items())
        parts.append(f"{scheme} {rendered}" if rendered else scheme)
    return sep.join(parts)


@given(st.lists(challenge_strategy, min_size=1, max_size=3), st.sampled_from([",", ", ", " ,  ", ",\t"]))
@budget(400)
@example([("Bearer", {"realm": "a,b", "scope": "repository:x:pull,push"})], ", ")
@example([("Basic", {"realm": 'say "hi" \\o/'})], ",")
def test_www_authenticate_round_trip(challenges: List[Tuple[str, Dict[str, str]]], sep: str) -> None:
    """A header built from schemes and quoted parameters parses back to them."""
    header = build_header(challenges, sep)
    parsed = parse_www_authenticate(header)
    assert [(c.scheme, c.params) for c in parsed] == [(s.lower(), p) for s, p in challenges]


unquoted_value = st.text(st.sampled_from(TOKEN_CHARS + "/:"), min_size=1, max_size=20)


@given(token, st.dictionaries(token.map(str.lower), unquoted_value, min_size=1, max_size=4))
@budget(200)
def test_www_authenticate_unquoted_values_round_trip(scheme: str, params: Dict[str, str]) -> None:
    """Registries send URLs and scopes unquoted (`Basic realm=/`): read them whole."""
    header = f"{scheme} " + ",".join(f"{k}={v}" for k, v in params.items())
    parsed = parse_www_authenticate(header)
    assert [(c.scheme, c.params) for c in parsed] == [(scheme.lower(), params)]


# --- Link -------------------------------------------------------------------------

@given(st.one_of(header_text, grammar_text))
@budget(600)
@example('<http://r/v2/a/tags/list?n=1&last=b>; rel="next"')
@example("</a>; rel=\"next")
@example("<")
@example(";;;=,")
def test_link_header_never_raises(value: str) -> None:
    links = parse_link_header(value)
    for link in links:
        assert isinstance(link, Link) and link.target
        assert all(rel == rel.lower() and rel for rel in link.rels)
    target = next_link([value])
    assert target is None or any(target == link.target and "next" in link.rels for link in links)


# A URI reference as a registry writes one: no `>`, no whitespace at its ends.
url = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=">"), min_size=1, max_size=60)
rel_type = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-."), min_size=1, max_size=8)
link_strategy = st.tuples(url, st.lists(rel_type, max_size=3), st.dictionaries(
    st.sampled_from(["type", "title", "anchor", "hreflang"]), quoted_value, max_size=2))


@given(st.lists(link_strategy, max_size=4), st.sampled_from([",", ", ", " ,\t"]), st.booleans())
@budget(400)
@example([("/v2/a/tags/list?n=2,3&last=x", ["prev"], {}), ("/v2/b?last=y", ["next", "last"], {})], ", ", True)
def test_link_header_round_trip(links, sep: str, quote_rel: bool) -> None:
    """Links built from targets, relation types and other parameters parse back."""
    rendered = []
    for target, rels, params in links:
        text = f"<{target}>"
        for name, value in params.items():
            text += f"; {name}={quote(value)}"
        if rels:
            rel_text = " ".join(rels)
            text += f"; rel={quote(rel_text)}" if quote_rel or len(rels) > 1 else f"; rel={rel_text}"
        rendered.append(text)
    parsed = parse_link_header(sep.join(rendered))
    assert [(link.target, link.rels) for link in parsed] == [(t, frozenset(r)) for t, r, _ in links]
    expected_next = next((t for t, r, _ in links if "next" in r), None)
    assert next_link([sep.join(rendered)]) == expected_next
