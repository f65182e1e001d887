"""cvmfs-singularity-sync's `docker_images.txt`, read as that tool reads it.

One image a line; the line is stripped, and a line that is empty or starts
with `#` is skipped. The name is split at `/` (`parse_image` in
cvmfs-singularity-sync):

- `name[:tag]`: Docker Hub `library/name`;
- `ns/name[:tag]`: Docker Hub `ns/name`;
- `host/ns/path…[:tag]`: that registry, repository `ns/path…`.

The tag defaults to `latest`. A tag holding a shell wildcard is matched
against the registry's tag list as Python's fnmatch does. The tool publishes
`<ns>/<path…>:<tag>` under the repository's root, whatever the registry.

Deliberate differences, each a line the old tool took but could never
publish (it is reported here and skipped): a second `:` (the old tool
silently used `latest`), a digest (`@` became part of the name), text after
the image (no inline comments there either), a two-part name whose first part
is a host (`ghcr.io/x`: the old tool asked Docker Hub for namespace
`ghcr.io`), an empty tag. And `?` or `[…]` without `*` are wildcards here; the
old tool only looked for `*` and asked for the literal tag, which no registry
can hold.
"""

from __future__ import annotations

from typing import Optional

from ..errors import InvalidReferenceError
from ..registry.reference import DOCKER_HUB, is_valid_tag, parse_reference
from ..watchlist import glob_problem
from .record import ListedImage, ListRead, is_host

# What makes a tag a wildcard (fnmatch's special characters).
_WILDCARD = frozenset("*?[")


def parse_osg(text: str, file: str) -> ListRead:
    """Every line of a `docker_images.txt`; lines that cannot be read are
    recorded as problems (file:line) and skipped, the others kept in order."""
    out = ListRead(file)
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        image = _parse_line(out, number, line)
        if image is not None:
            out.images.append(image)
    return out


def _parse_line(out: ListRead, number: int, line: str) -> Optional[ListedImage]:
    """One line's image, or None with the problem recorded."""
    if any(c.isspace() for c in line):
        out.problem(number, f"{line!r}: one image a line, nothing after it (a comment is a line of its own, "
                            "starting with '#')")
        return None
    if "@" in line:
        out.problem(number, f"{line!r}: digests are not part of this format; give a tag")
        return None
    parts = line.split("/")
    if len(parts) == 1:
        host, namespace, rest = DOCKER_HUB, "library", parts[0]
    elif len(parts) == 2:
        host, namespace, rest = DOCKER_HUB, parts[0], parts[1]
        if is_host(namespace):
            out.problem(number, f"{line!r}: {namespace!r} reads as a Docker Hub namespace in this format; for "
                                f"that registry write {namespace}/<namespace>/<name>:<tag>")
            return None
    else:
        host, namespace, rest = parts[0], parts[1], "/".join(parts[2:])
    name, colon, tag = rest.partition(":")
    if not colon:
        tag = "latest"
    elif ":" in tag:
        out.problem(number, f"{line!r}: more than one ':' (cvmfs-singularity-sync would have used tag "
                            "'latest'); write <name>:<tag>")
        return None
    elif not tag:
        out.problem(number, f"{line!r}: an empty tag after ':'")
        return None
    repository = f"{namespace}/{name}"
    try:
        source = parse_reference(f"{host}/{repository}", default_tag=None)
    except InvalidReferenceError as exc:
        out.problem(number, str(exc))
        return None
    if _WILDCARD & set(tag):
        problem = glob_problem(tag)
        if problem:
            out.problem(number, f"{line!r}: the wildcard {problem}")
            return None
        return ListedImage(number, host, repository, source, glob=tag)
    if not is_valid_tag(tag):
        out.problem(number, f"{line!r}: {tag!r} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 128)")
        return None
    return ListedImage(number, host, repository, source, tag=tag)
