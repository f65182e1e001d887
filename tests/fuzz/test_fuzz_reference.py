"""Image references and tags (registry/reference.py): they come from the
watchlist, tag lists, webhooks and manifests."""

from __future__ import annotations

import re
from typing import Optional

from hypothesis import assume, example, given
from hypothesis import strategies as st

from reconciler.errors import InvalidReferenceError
from reconciler.registry.reference import ImageReference, is_valid_digest, is_valid_tag, parse_reference
from tests.fuzz.budget import budget

# The OCI distribution spec's tag grammar, ASCII only, matched as a whole.
OCI_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
OCI_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")

TAG_ALPHABET = "abcxyzABCXYZ0189_.-"
tag_like = st.one_of(
    st.text(max_size=140),
    st.text(st.sampled_from(TAG_ALPHABET + "\n\t :@/é٣ſK"), max_size=140),
    st.from_regex(OCI_TAG, fullmatch=True),
)


@given(tag_like)
@budget(500)
@example("latest\n")  # `$` matched before a final newline
@example("é")  # `\w` is Unicode in Python regexes
@example("٣")  # an Arabic-Indic digit
@example("-bad")
@example("a" * 128)
@example("a" * 129)
def test_tag_validity_is_the_oci_grammar(tag: str) -> None:
    assert is_valid_tag(tag) == bool(OCI_TAG.fullmatch(tag))
    reference = ImageReference("registry.example.org", "a/b")
    if OCI_TAG.fullmatch(tag):
        assert reference.with_tag(tag).tag == tag
    else:
        try:
            reference.with_tag(tag)
        except InvalidReferenceError:
            pass
        else:
            raise AssertionError(f"with_tag accepted {tag!r}")


HEX = "0123456789abcdef"
digest_like = st.one_of(
    st.text(max_size=80),
    st.builds(lambda h, tail: "sha256:" + h + tail, st.text(st.sampled_from(HEX + "ABF"), min_size=63, max_size=65),
              st.sampled_from(["", "\n", " ", "x"])),
)


@given(digest_like)
@budget(300)
@example("sha256:" + "a" * 64 + "\n")
def test_digest_validity_is_canonical_sha256(digest: str) -> None:
    assert is_valid_digest(digest) == bool(OCI_DIGEST.fullmatch(digest))


# The distribution grammar, to generate valid references.
alnum = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"), min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--"])
path_component = st.builds(lambda first, rest: first + "".join(s + a for s, a in rest),
                           alnum, st.lists(st.tuples(separator, alnum), max_size=2))
domain_label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
domain = st.one_of(
    st.builds(lambda labels, port: ".".join(labels) + port,
              st.lists(domain_label, min_size=2, max_size=3),
              st.sampled_from(["", ":5000", ":1", ":65535"])),
    st.builds(lambda label, port: label + port, domain_label, st.sampled_from([":5000", ":443"])),
    st.just("localhost"),
    st.sampled_from(["[::1]:5000", "[fe80::1]", "127.0.0.1:5000"]),
)
tag = st.from_regex(OCI_TAG, fullmatch=True)
digest = st.text(st.sampled_from(HEX), min_size=64, max_size=64).map(lambda h: "sha256:" + h)


@given(domain, st.lists(path_component, min_size=1, max_size=3), st.none() | tag, st.none() | digest)
@budget(400)
@example("localhost", ["a"], None, None)
def test_valid_references_parse_and_round_trip(host: str, components, tag: Optional[str], digest: Optional[str]) -> None:
    """A reference written with its registry host parses to its parts and prints back as written."""
    path = "/".join(components)
    # docker.io spellings are normalized (tested in test_registry_units); keep to others here
    assume(host.lower() not in ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"))
    text = f"{host}/{path}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    if len(host) + 1 + len(path) > 255:
        try:
            parse_reference(text)
        except InvalidReferenceError:
            return
        raise AssertionError(f"accepted a name over 255 characters: {text!r}")
    ref = parse_reference(text, default_tag=None)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (host, path, tag, digest)
    assert str(ref) == text
    assert parse_reference(str(ref), default_tag=None) == ref


@given(st.lists(path_component, min_size=1, max_size=2), st.none() | tag)
@budget(150)
def test_docker_hub_short_names_round_trip(components, tag: Optional[str]) -> None:
    path = "/".join(components)
    # A first component with a dot would be a registry host.
    assume("." not in components[0] or len(components) == 1)
    ref = parse_reference(path + (f":{tag}" if tag else ""))
    assert ref.registry == "docker.io"
    assert ref.repository == (path if "/" in path else f"library/{path}")
    assert ref.tag == (tag or "latest")
    assert parse_reference(str(ref)) == ref


REFERENCE_ALPHABET = "abz019.-_/:@[]Ax\n \té"
reference_like = st.one_of(
    st.text(max_size=120),
    st.text(st.sampled_from(REFERENCE_ALPHABET), max_size=80),
    st.builds(lambda h, p, tail: f"{h}/{p}{tail}", domain, path_component,
              st.sampled_from(["", "\n", ":v1\n", "@sha256:" + "0" * 64 + "\n", "\n@sha256:" + "0" * 64])),
)
_PATH = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                   r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?")


@given(reference_like)
@budget(600)
@example("alpine\n@sha256:" + "0" * 64)  # a newline in the repository, hidden by the digest
@example("reg.example.org\n/a:v1")  # a newline in the host
@example("a.b/c:" + "x" * 129)
def test_any_text_parses_to_a_valid_reference_or_invalid_reference_error(text: str) -> None:
    try:
        ref = parse_reference(text, default_tag=None)
    except InvalidReferenceError:
        return
    # Whatever is accepted is made of the grammar's parts only.
    assert _PATH.fullmatch(ref.repository), ref
    assert ref.registry == "docker.io" or _HOST.fullmatch(ref.registry), ref
    assert ref.tag is None or OCI_TAG.fullmatch(ref.tag), ref
    assert ref.digest is None or OCI_DIGEST.fullmatch(ref.digest), ref
    assert parse_reference(str(ref), default_tag=None) == ref
