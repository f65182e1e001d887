"""`reconcile import --format osg|ducc [--dest TEMPLATE] FILE`: a list's
images as `[[image]]` tables on stdout, the lines it skips on stderr (each
`file:line: why`).

Exit status: 0 every line was imported; 1 some lines were skipped or need a
watchlist setting (the others are printed); 2 the file cannot be read at
all, or the command line is wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..config.values import parse_duration
from ..config.watchlist_keys import DEFAULTS, LIST_FORMATS
from ..errors import ConfigError
from ..registry.manifest import Platform
from ..safetext import inert
from ..watchlist import DEFAULT_LIST_DEST, DEST_VARIABLES, ListConfig
from .entries import list_entries
from .read import read_list
from .toml_out import image_tables

EXIT_OK, EXIT_SKIPPED, EXIT_UNREADABLE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The `reconcile import` command line."""
    parser = argparse.ArgumentParser(
        prog="reconcile import",
        description="Print the images of another tool's list as [[image]] tables for watchlist.toml (stdout); "
                    "lines that cannot be imported are named on stderr as FILE:LINE. Or name the list in a "
                    "[[list]] table and the reconciler reads it at every cycle.",
        epilog="exit codes: 0 every line imported; 1 some lines skipped or needing a watchlist setting (the "
               "rest is printed); 2 the file cannot be read, or a wrong option")
    parser.add_argument("--format", required=True, choices=LIST_FORMATS,
                        help="osg: cvmfs-singularity-sync's docker_images.txt; ducc: a DUCC wishlist (YAML)")
    parser.add_argument("--dest", metavar="TEMPLATE",
                        help=f"where each image is published, from {' and '.join(DEST_VARIABLES)} (default: "
                             "the format's own tool's paths: osg $(repository), ducc $(registry)/$(repository))")
    parser.add_argument("file", type=Path, help="the list file")
    return parser


def main(argv: List[str]) -> int:
    """Run `reconcile import`; returns the exit status."""
    args = build_parser().parse_args(argv)
    dest: Optional[str] = args.dest or DEFAULT_LIST_DEST[args.format]
    assert dest is not None
    if "$(repository)" not in dest:
        print(f"reconcile import: --dest {dest!r}: expected a template with $(repository)", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        read = read_list(args.file, args.format)
    except ConfigError as exc:
        print(f"reconcile import: {inert(str(exc))}", file=sys.stderr)
        return EXIT_UNREADABLE
    # interval and platforms are not printed: the watchlist's [defaults] apply.
    config = ListConfig(0, args.file, args.format, dest,
                        tuple(Platform.parse(p) for p in DEFAULTS.default_strings("platforms")),
                        parse_duration(DEFAULTS.default_text("interval")))
    entries, problems = list_entries(read, config, 1)
    sys.stdout.write(image_tables(entries))
    skipped = sorted(read.problems + problems, key=lambda p: p.line)
    for problem in skipped:
        print(inert(str(problem)), file=sys.stderr)
    return EXIT_SKIPPED if skipped else EXIT_OK
