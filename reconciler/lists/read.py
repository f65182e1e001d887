"""Reading a list file by its format."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

from ..errors import ConfigError
from .ducc import parse_ducc
from .osg import parse_osg
from .record import ListRead

PARSERS: Dict[str, Callable[[str, str], ListRead]] = {"osg": parse_osg, "ducc": parse_ducc}

# A list is a text file of hundreds of lines; a bound keeps a wrong path (a
# disk image, /dev/zero) from filling the memory.
MAX_LIST_BYTES = 16 * 1024 * 1024


def read_list(path: Path, form: str) -> ListRead:
    """The list at `path` read as `form` ("osg" or "ducc"). Lines that cannot
    be read are in its `problems`; ConfigError when the file as a whole
    cannot (missing, unreadable, not UTF-8, too large, not YAML)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {form} list: {exc.strerror}") from None
    if len(raw) > MAX_LIST_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_LIST_BYTES // (1024 * 1024)} MiB; is it the list?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text") from None
    return PARSERS[form](text, path.name)
