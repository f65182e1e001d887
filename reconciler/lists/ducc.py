"""A DUCC wishlist (recipe version 1), read as `cvmfs_ducc convert` reads it.

YAML with `version`, `user`, `cvmfs_repo`, `output_format` and `input`, a list
of images `[https://]registry/repository:tag` (the scheme is added when
missing; `ParseImage` in cvmfs/cvmfs ducc/lib/parse.go). A tag holding `*` is
a wildcard: DUCC turns each `*` into `.*`, reads the rest as a regular
expression and keeps the tags it matches whole (`filterUsingGlob`).

DUCC publishes each tag at `<registry>/<repository>:<tag>` under the
repository's root, the registry and repository as the wishlist writes them
(`GetPublicSymlinkPath`). `user` and `output_format` name the "thin" Docker
images DUCC pushes back to a registry, which the reconciler does not make:
they are read and ignored, like `cvmfs_repo` (the watchlist's [publish] says
where to publish).

Deliberate differences, each reported and skipped: a digest (`@sha256:…`:
entries here follow tags), an input without a tag (DUCC asks the registry for
an empty reference, which always fails), a scheme other than http(s).
Unknown keys are reported; DUCC's YAML reader ignores them silently. An
`http://` input is read, with a reminder that the watchlist must say
`insecure = true` for its registry.
"""

from __future__ import annotations

import re
from typing import Optional

import yaml

from ..errors import ConfigError, InvalidReferenceError
from ..registry.reference import is_valid_tag, parse_reference
from .record import ListedImage, ListRead, is_host

KEYS = ("version", "user", "cvmfs_repo", "output_format", "input")


def star_regex(star: str) -> str:
    """DUCC's wildcard as a Python regular expression body (`*` is `.*`)."""
    return star.replace("*", ".*")


def parse_ducc(text: str, file: str) -> ListRead:
    """Every input of a wishlist; an input that cannot be read is recorded as
    a problem (file:line) and skipped. ConfigError when the file is not a
    YAML mapping at all (nothing of it can be trusted then)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (control characters)
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(f"{file}:{line}: not a DUCC wishlist: YAML syntax error: character "
                          f"{chr(exc.character)!r} is not allowed in YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        raise ConfigError(f"{where}: not a DUCC wishlist: YAML syntax error: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{file}: not a DUCC wishlist: expected a YAML mapping with `version` and `input`")
    out = ListRead(file)
    inputs: Optional[yaml.Node] = None
    for key, value in root.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name == "input":
            inputs = value
        elif name not in KEYS:
            out.problem(key.start_mark.line + 1, f"unknown key {name!r}, ignored (a wishlist holds "
                                                 f"{', '.join(KEYS)})")
        elif name == "version" and value.value != "1":
            out.problem(value.start_mark.line + 1, f"version {value.value!r}: only recipe version 1 is known; "
                                                   "its inputs are read as version 1's")
    if inputs is None:
        raise ConfigError(f"{file}: not a DUCC wishlist: no `input` list")
    if isinstance(inputs, yaml.ScalarNode) and inputs.tag == "tag:yaml.org,2002:null":
        return out  # `input:` with nothing: no images, as DUCC reads it
    if not isinstance(inputs, yaml.SequenceNode):
        raise ConfigError(f"{file}:{inputs.start_mark.line + 1}: `input` must be a list of images")
    for node in inputs.value:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode) or not node.value:
            out.problem(line, "expected an image such as https://registry.example.org/group/image:tag")
            continue
        image = _parse_input(out, line, node.value)
        if image is not None:
            out.images.append(image)
    return out


def _parse_input(out: ListRead, line: int, text: str) -> Optional[ListedImage]:
    """One input's image, or None with the problem recorded."""
    shown = repr(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        rest = text
    elif scheme not in ("http", "https"):
        out.problem(line, f"{shown}: scheme {scheme!r}: expected https:// (or none)")
        return None
    host, slash, path = rest.partition("/")
    path = path.strip("/")
    if not host or not slash or not path:
        out.problem(line, f"{shown}: expected <registry>/<repository>:<tag>")
        return None
    if "@" in path:
        out.problem(line, f"{shown}: digest pins are not supported; give a tag")
        return None
    repository, colon, tag = path.partition(":")
    repository = repository.strip("/")
    if not colon or not tag:
        out.problem(line, f"{shown}: no tag (DUCC cannot convert an input without one); add :<tag>")
        return None
    if ":" in tag:
        out.problem(line, f"{shown}: more than one ':' after the registry")
        return None
    if not is_host(host):  # Docker would read it as a Docker Hub namespace
        out.problem(line, f"{shown}: {host!r} is not a registry host (a host has a '.' or a port)")
        return None
    try:
        source = parse_reference(f"{host}/{repository}", default_tag=None)
    except InvalidReferenceError as exc:
        out.problem(line, str(exc))
        return None
    if scheme == "http" and sep:
        # Not skipped: the image is read, but only the watchlist can say "plain http".
        out.problem(line, f"{shown}: plain http; the watchlist needs [registries.\"{host}\"] insecure = true")
    if "*" in tag:
        try:
            re.compile(star_regex(tag))
        except re.error as exc:
            out.problem(line, f"{shown}: the wildcard tag is not a valid pattern: {exc}")
            return None
        return ListedImage(line, host, repository, source, star=tag)
    if not is_valid_tag(tag):
        out.problem(line, f"{shown}: {tag!r} is not a valid tag")
        return None
    return ListedImage(line, host, repository, source, tag=tag)


