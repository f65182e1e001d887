"""Text to value: the sizes, durations and listen addresses a configuration
file writes as strings. Each parser raises ValueError saying what is wrong,
for the caller to put beside the file and key."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Tuple

# ASCII digits only: \d would also take "٣", which int() reads as 3.
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
# Longer is a typo, and dates moved by much more overflow (year 9999): the
# scheduler would fail with OverflowError when it starts, not here.
MAX_DURATION_S = 10 * 365 * 86400
# An interval of "0s" would poll every second (the scheduler's floor).
MIN_INTERVAL_S = 1.0


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_size(text: str) -> int:
    """`500MB`, `50GiB` -> bytes."""
    m = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"expected a size such as \"50GiB\" or \"500MB\", got {text!r}")
    size = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(size):  # a few hundred digits overflow the float
        raise ValueError(f"{text[:20]!r}... is too large")
    return int(size)


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `1h30m`, `2d` -> seconds, at most MAX_DURATION_S."""
    m = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or not text.strip() or not any(m.groups()):
        raise ValueError(f"expected a duration such as \"30s\", \"15m\", \"1h30m\" or \"2d\", got {text!r}")
    try:
        d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    except ValueError:  # thousands of digits: more than int() converts
        raise ValueError(f"{text[:20]!r}... is too long") from None
    seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    if seconds > MAX_DURATION_S:
        shown = f"{text[:20]!r}..." if len(text) > 20 else repr(text)
        raise ValueError(f"{shown} is too long: at most {MAX_DURATION_S // 86400}d (10 years)")
    return float(seconds)


_LISTEN_EXAMPLE = 'HOST:PORT such as "127.0.0.1:8080", "0.0.0.0:8080" or "[::1]:8080"'
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")


def parse_listen(text: str) -> Tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port), the host without brackets
    (as uvicorn wants it). Raises ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected {_LISTEN_EXAMPLE}, got {type(text).__name__} {text!r}")
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"expected {_LISTEN_EXAMPLE}, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} (in brackets) is not an IPv6 address, in {text!r}") from None
    elif ":" in host:
        raise ValueError(f"put an IPv6 address in brackets, e.g. \"[::1]:8080\", got {text!r}")
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or address, in {text!r}")
    # ASCII digits only: int() would also take "٨٠" or " 80".
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535, in {text!r}")
    return host, int(port)
