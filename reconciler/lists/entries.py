"""From a list's images to watchlist entries: one entry a published path.

A list may name one repository on several lines (a tag a line, or exact tags
beside wildcards); they become one entry, since an entry owns its `dest`. With
no wildcard it watches exact `tags`. With wildcards its tags come from the
registry's tag list and the exact tags join the selection as wildcards of
their own (a valid tag holds no wildcard character, so it matches only
itself): OSG's globs as `tag_glob` (fnmatch, as the old tool), DUCC's stars as
one anchored `tag_pattern` (DUCC's own regular expression, matched whole).
Two repositories that would publish at one path: the first line wins, the
later one is reported and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from ..registry.reference import ImageReference
from ..watchlist import ImageEntry, ListConfig, dest_problem
from .ducc import star_regex
from .record import ListedImage, ListRead, Problem


@dataclass
class _Group:
    """The lines of one published path."""

    first: ListedImage
    lines: List[ListedImage] = field(default_factory=list)


def render_dest(template: str, image: ListedImage) -> str:
    """`template` with the image's `$(registry)` and `$(repository)`."""
    return template.replace("$(registry)", image.registry).replace("$(repository)", image.repository).strip("/")


def list_entries(read: ListRead, config: ListConfig, first_index: int,
                 taken: Optional[Dict[str, str]] = None) -> Tuple[List[ImageEntry], List[Problem]]:
    """The entries of one list read, numbered from `first_index`, and the lines
    skipped on the way. `taken` maps the dests already in use (by [[image]]
    blocks or earlier lists) to what uses them; a line publishing at one of
    them is skipped and reported, and the new dests are added to it."""
    taken = {} if taken is None else taken
    problems: List[Problem] = []
    groups: Dict[str, _Group] = {}
    for image in read.images:
        dest = render_dest(config.dest, image)
        problem = dest_problem(dest)
        if problem:
            problems.append(Problem(read.file, image.line, f"dest from {config.dest!r}: {problem}"))
            continue
        group = groups.get(dest)
        if group is None and dest in taken:
            problems.append(Problem(read.file, image.line, f"{dest!r} is already published by {taken[dest]}; "
                                                           "this line is skipped"))
            continue
        if group is not None and group.first.source != image.source:
            problems.append(Problem(read.file, image.line,
                                    f"{image.source.name} would publish at {dest!r} like {group.first.source.name} "
                                    f"of line {group.first.line}; this line is skipped"))
            continue
        if group is None:
            group = groups[dest] = _Group(image)
        group.lines.append(image)
    entries = []
    for offset, (dest, group) in enumerate(groups.items()):
        origin = f"{read.file}:{group.first.line}"
        taken[dest] = origin
        entries.append(_entry(first_index + offset, group, dest, config, origin))
    return entries, problems


def _entry(index: int, group: _Group, dest: str, config: ListConfig, origin: str) -> ImageEntry:
    """One path's entry: exact tags, or a selection holding the exact tags."""
    tags = _unique(i.tag for i in group.lines if i.tag)
    globs = _unique(i.glob for i in group.lines if i.glob)
    stars = _unique(i.star for i in group.lines if i.star)
    source = ImageReference(group.first.source.registry, group.first.source.repository)
    if not (globs or stars):
        return ImageEntry(index, source, tuple(tags), dest=dest, platforms=config.platforms,
                          interval=config.interval, publish=config.publish, origin=origin,
                          signature=config.signature)
    # One list holds one format: globs (OSG) or stars (DUCC), never both.
    pattern = None
    if stars:
        pattern = r"\A(?:" + "|".join([re.escape(t) for t in tags] + [star_regex(s) for s in stars]) + r")\Z"
    return ImageEntry(index, source, tag_pattern=pattern, dest=dest, platforms=config.platforms,
                      interval=config.interval, publish=config.publish,
                      tag_glob=tuple(tags + globs) if globs else (), origin=origin, signature=config.signature)


def _unique(items: Iterable[Optional[str]]) -> List[str]:
    """The items in first-seen order, each once."""
    return [i for i in dict.fromkeys(items) if i]
