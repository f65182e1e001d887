"""`watchlist.toml`: which images and tags to keep published, and where.

Parsing is strict: every mistake raises ConfigError naming the file, the entry
and the key, and what was expected; unknown keys are errors, so a typo never
passes silently, and they are reported before anything else (with a close
match when there is one), since a misspelt key is the likeliest cause of a
"required" error elsewhere. Relative paths are taken from the watchlist's
directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11
    import tomli as tomllib

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .apptainer import DEFAULT_BIND_POINTS
from .errors import ConfigError, InvalidReferenceError
from .registry.manifest import Platform
from .registry.reference import ImageReference, is_valid_tag, normalize_registry, parse_reference
from .webhooks import PROVIDERS

# ASCII digits only: \d would also take "٣", which int() reads as 3.
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
# Longer is a typo, and dates moved by much more overflow (year 9999): the
# scheduler would fail with OverflowError when it starts, not here.
MAX_DURATION_S = 10 * 365 * 86400
# An interval of "0s" would poll every second (the scheduler's floor).
MIN_INTERVAL_S = 1.0
BACKENDS = ("local", "cvmfs")


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


@dataclass(frozen=True)
class PublishConfig:
    backend: str = "local"
    root: Path = Path("publish")
    repository: Optional[str] = None
    lease_path: Optional[str] = None
    bind_points: Tuple[str, ...] = DEFAULT_BIND_POINTS
    gc_grace: float = 2 * 86400.0
    gc_max_per_cycle: int = 50


@dataclass(frozen=True)
class RegistryConfig:
    host: str
    insecure: bool = False
    username: Optional[str] = None
    password_file: Optional[str] = None
    password_env: Optional[str] = None
    mirror: Optional[str] = None
    max_concurrency: int = 4
    # Token services this registry may name on a private address (host or host:port).
    token_realms: Tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhookConfig:
    provider: str
    token_env: Optional[str] = None
    token_file: Optional[str] = None


@dataclass(frozen=True)
class ImageEntry:
    """One `[[image]]` block."""

    index: int  # 1-based position in the file, for messages
    source: ImageReference  # without tag
    tags: Tuple[str, ...] = ()
    tag_pattern: Optional[str] = None
    semver: Optional[str] = None
    newest: Optional[int] = None
    dest: str = ""
    platforms: Tuple[Platform, ...] = ()
    interval: float = 900.0

    @property
    def label(self) -> str:
        """How messages name this entry."""
        return f"image[{self.index}] ({self.source.name})"

    @property
    def lists_tags(self) -> bool:
        """True when the tags come from the registry's tag list."""
        return not self.tags


@dataclass(frozen=True)
class Watchlist:
    path: Path
    publish: PublishConfig
    state_dir: Path
    blob_cache_max: Optional[int]
    interval: float
    platforms: Tuple[Platform, ...]
    registries: Dict[str, RegistryConfig]
    listen: Optional[str]
    webhooks: Dict[str, WebhookConfig]
    images: Tuple[ImageEntry, ...]

    def registry(self, host: str) -> RegistryConfig:
        """The settings of `host`, or the defaults (https, no credentials)."""
        return self.registries.get(host) or RegistryConfig(host)


# The keys each table may hold; anything else is reported before any value is checked.
_TOP_KEYS = ("publish", "state", "defaults", "registries", "service", "webhooks", "image")
_PUBLISH_KEYS = ("backend", "root", "repository", "lease_path", "bind_points", "gc_grace", "gc_max_per_cycle")
_STATE_KEYS = ("dir", "blob_cache_max")
_DEFAULTS_KEYS = ("interval", "platforms")
_REGISTRY_KEYS = ("insecure", "username", "password_file", "password_env", "mirror", "max_concurrency",
                  "token_realms")
_SERVICE_KEYS = ("listen",)
_WEBHOOK_KEYS = ("token_env", "token_file")
_IMAGE_KEYS = ("source", "tags", "tag_pattern", "semver", "newest", "dest", "platforms", "interval")
_SIMPLE_TABLES = {"publish": _PUBLISH_KEYS, "state": _STATE_KEYS, "defaults": _DEFAULTS_KEYS, "service": _SERVICE_KEYS}

_KIND_NAMES = {dict: "a table", list: "a list", bool: "true or false"}
_REGISTRY_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?")


def _describe(value: Any) -> str:
    """A value for a message: its TOML-ish type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _unknown(name: str, known: Sequence[str], noun: str = "key") -> str:
    """`unknown key "tagz" (did you mean "tags"?)`, or the known keys when none is close."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f'unknown {noun} "{name}" (did you mean "{close[0]}"?)'
    return f'unknown {noun} "{name}" (known {noun}s here: {", ".join(sorted(known))})'


class _Section:
    """Typed access to one TOML table that reports mistakes precisely. The
    table's keys are checked against `known` as soon as it is opened."""

    def __init__(self, file: str, where: str, data: Any, known: Sequence[str]) -> None:
        self.file, self.where, self.known = file, where, tuple(known)
        if not isinstance(data, dict):
            raise self.error("", f"expected a table, got {_describe(data)}")
        self.data = data
        for key in data:  # in file order: the first typo is reported first
            if key not in self.known:
                raise self.error("", _unknown(key, self.known))

    def error(self, key: str, message: str) -> ConfigError:
        location = ".".join(p for p in (self.where, key) if p)
        return ConfigError(f"{self.file}: {location}: {message}" if location else f"{self.file}: {message}")

    def get(self, key: str, kind: type, default: Any = None, expected: str = "") -> Any:
        assert key in self.known, f"{key!r} missing from the known keys of {self.where or 'the top level'}"
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise self.error(key, f"expected {expected or _KIND_NAMES.get(kind, kind.__name__)}, got {_describe(value)}")
        # Values become file names, command arguments and headers, none of
        # which can carry a NUL: every os call would fail with ValueError.
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str) and "\0" in text:
                raise self.error(key, f"{text!r} contains a NUL character")
        return value

    def table(self, key: str) -> Dict[str, Any]:
        """A sub-table, or {} when absent."""
        return self.get(key, dict, {}, f"a [{key}] table")

    def strings(self, key: str, default: Any = None) -> Any:
        value = self.get(key, list, default, "a list of strings")
        if value is not default and not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return value

    def duration(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.get(key, str, None, 'a duration string such as "15m"')
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if seconds < minimum:
            raise self.error(key, f"expected at least {minimum:.0f}s, got {value!r}")
        return seconds

    def path(self, key: str, base: Path, default: Optional[str] = None) -> Optional[Path]:
        """A path; relative ones are taken from `base`. None when absent and no default."""
        value = self.get(key, str) or default
        if value is None:
            return None
        try:
            return _path(base, value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def platforms(self, key: str, default: Tuple[Platform, ...]) -> Tuple[Platform, ...]:
        values = self.strings(key)
        if values is None:
            return default
        if not values:
            raise self.error(key, "expected at least one platform such as \"linux/amd64\"")
        try:
            return tuple(Platform.parse(v) for v in values)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None


def _path(base: Path, value: str) -> Path:
    """`value` as a path, relative ones taken from `base`; ValueError when it cannot be one."""
    if "\0" in value:
        raise ValueError(f"{value!r} contains a NUL character")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~someone" without such a user, or "~" without HOME
        raise ValueError(f"cannot expand {value!r}: no such user or no home directory") from None
    return p if p.is_absolute() else (base / p)


def _image_where(index: int, table: Any) -> str:
    """How messages name an [[image]] block: with its source once that is valid."""
    source = table.get("source") if isinstance(table, dict) else None
    if isinstance(source, str) and source:
        try:
            ref = parse_reference(source, default_tag=None)
        except InvalidReferenceError:
            return f"image[{index}]"
        if not (ref.tag or ref.digest):
            return f"image[{index}] ({ref.name})"
    return f"image[{index}]"


def _check_known_keys(file: str, data: Any) -> None:
    """First pass over the whole file: unknown keys anywhere are reported
    before any value is checked. Values of the wrong type are skipped here;
    the second pass reports them."""
    _Section(file, "", data, _TOP_KEYS)
    for key, known in _SIMPLE_TABLES.items():
        if isinstance(data.get(key), dict):
            _Section(file, key, data[key], known)
    registries = data.get("registries")
    if isinstance(registries, dict):
        for host, table in registries.items():
            if isinstance(table, dict):
                _Section(file, f'registries."{host}"', table, _REGISTRY_KEYS)
    webhooks = data.get("webhooks")
    if isinstance(webhooks, dict):
        for provider, table in webhooks.items():
            _check_provider(file, provider)
            if isinstance(table, dict):
                _Section(file, f"webhooks.{provider}", table, _WEBHOOK_KEYS)
    images = data.get("image")
    if isinstance(images, list):
        for index, table in enumerate(images, start=1):
            if isinstance(table, dict):
                _Section(file, _image_where(index, table), table, _IMAGE_KEYS)


def _check_provider(file: str, provider: str) -> None:
    if provider not in PROVIDERS:
        raise ConfigError(f"{file}: webhooks.{provider}: {_unknown(provider, PROVIDERS, 'provider')}")


def load_watchlist(path: Path) -> Watchlist:
    """Read and validate a watchlist file; every mistake raises ConfigError."""
    path = Path(path)
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the watchlist: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: TOML syntax error: {exc}") from None
    _check_known_keys(name, data)
    base = path.resolve().parent
    top = _Section(name, "", data, _TOP_KEYS)

    publish = _publish(_Section(name, "publish", top.table("publish"), _PUBLISH_KEYS), base)
    state = _Section(name, "state", top.table("state"), _STATE_KEYS)
    state_dir = state.path("dir", base, ".reconciler")
    assert state_dir is not None
    cache_text = state.get("blob_cache_max", str)
    try:
        blob_cache_max = parse_size(cache_text) if cache_text is not None else None
    except ValueError as exc:
        raise state.error("blob_cache_max", str(exc)) from None

    defaults = _Section(name, "defaults", top.table("defaults"), _DEFAULTS_KEYS)
    interval = defaults.duration("interval", 900.0, MIN_INTERVAL_S)
    platforms = defaults.platforms("platforms", (Platform("linux", "amd64"),))

    registries = _registries(name, top, base)
    service = _Section(name, "service", top.table("service"), _SERVICE_KEYS)
    listen = service.get("listen", str)
    if listen is not None:
        try:
            parse_listen(listen)
        except ValueError as exc:
            raise service.error("listen", str(exc)) from None
    webhooks = _webhooks(name, top, base)
    images = _images(name, top, interval, platforms)
    return Watchlist(path, publish, state_dir, blob_cache_max, interval, platforms, registries, listen, webhooks, images)


def _publish(pub: _Section, base: Path) -> PublishConfig:
    backend = pub.get("backend", str, "local")
    if backend not in BACKENDS:
        raise pub.error("backend", f"expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    repository = pub.get("repository", str)
    lease_path = pub.get("lease_path", str)
    root_text = pub.get("root", str)
    if backend == "cvmfs":
        if not repository:
            raise pub.error("repository", "required for backend \"cvmfs\" (the repository name, e.g. containers.example.org)")
        root = pub.path("root", base) if root_text else Path("/cvmfs") / repository
    else:
        if repository or lease_path:
            raise pub.error("repository" if repository else "lease_path", "only meaningful with backend = \"cvmfs\"")
        root = pub.path("root", base, "publish")
    assert root is not None
    if lease_path is not None and (lease_path.startswith("/") or ".." in lease_path.split("/") or not lease_path.strip("/")):
        raise pub.error("lease_path", "expected a relative sub-path of the repository, such as \"ligo\"")
    bind_points = pub.strings("bind_points", list(DEFAULT_BIND_POINTS))
    for point in bind_points:
        if not point.strip("/") or ".." in point.split("/"):
            raise pub.error("bind_points", f"expected directory names inside the image such as \"cvmfs\", got {point!r}")
    gc_grace = pub.duration("gc_grace", 2 * 86400.0)
    gc_max = pub.get("gc_max_per_cycle", int, 50, "a whole number")
    if gc_max < 0:
        raise pub.error("gc_max_per_cycle", "expected 0 (never collect) or more")
    return PublishConfig(backend, root, repository, lease_path.strip("/") if lease_path else None,
                         tuple(p.strip("/") for p in bind_points), gc_grace, gc_max)


def _registries(file: str, top: _Section, base: Path) -> Dict[str, RegistryConfig]:
    registries: Dict[str, RegistryConfig] = {}
    named: Dict[str, str] = {}  # normalized host -> how the file wrote it
    tables = top.get("registries", dict, {}, 'a table of [registries."host"] tables')
    for host, table in tables.items():
        reg = _Section(file, f'registries."{host}"', table, _REGISTRY_KEYS)
        if not _REGISTRY_HOST.fullmatch(host):
            raise reg.error("", 'expected a registry host (and port) such as "registry.example.org" or '
                                '"127.0.0.1:5000", without "https://" or a path')
        config = _registry(reg, normalize_registry(host), base)
        if config.host in named:
            raise reg.error("", f'the same registry as registries."{named[config.host]}" (both mean {config.host}); '
                                "keep one of them")
        named[config.host] = host
        registries[config.host] = config
    return registries


def _registry(reg: _Section, host: str, base: Path) -> RegistryConfig:
    password_file = reg.path("password_file", base)
    config = RegistryConfig(
        host=host,
        insecure=reg.get("insecure", bool, False, "true or false"),
        username=reg.get("username", str),
        password_file=str(password_file) if password_file else None,
        password_env=reg.get("password_env", str),
        mirror=reg.get("mirror", str),
        max_concurrency=reg.get("max_concurrency", int, 4, "a whole number"),
        token_realms=tuple(reg.strings("token_realms", [])),
    )
    for realm in config.token_realms:
        if not _REGISTRY_HOST.fullmatch(realm):
            raise reg.error("token_realms", f'expected hosts such as "auth.internal" or "10.0.0.5:5001", got {realm!r}')
    if config.username and not (config.password_file or config.password_env):
        raise reg.error("username", "needs password_file or password_env beside it")
    if config.password_file and config.password_env:
        raise reg.error("password_env", "give password_file or password_env, not both")
    if (config.password_file or config.password_env) and not config.username:
        raise reg.error("username", "required when a password is configured")
    if config.max_concurrency < 1:
        raise reg.error("max_concurrency", "expected at least 1")
    if config.mirror and not re.match(r"^https?://[^/]+", config.mirror):
        raise reg.error("mirror", "expected a URL such as \"http://mirror:5000\"")
    return config


def _webhooks(file: str, top: _Section, base: Path) -> Dict[str, WebhookConfig]:
    webhooks: Dict[str, WebhookConfig] = {}
    for provider, table in top.get("webhooks", dict, {}, "a table of [webhooks.<provider>] tables").items():
        _check_provider(file, provider)
        hook = _Section(file, f"webhooks.{provider}", table, _WEBHOOK_KEYS)
        token_env = hook.get("token_env", str)
        token_file = hook.path("token_file", base)
        if token_env and token_file:
            # Which one would win is not obvious to a reader; make them pick.
            raise hook.error("token_env", "give token_env or token_file, not both")
        webhooks[provider] = WebhookConfig(provider, token_env, str(token_file) if token_file else None)
    return webhooks


def _images(file: str, top: _Section, interval: float, platforms: Tuple[Platform, ...]) -> Tuple[ImageEntry, ...]:
    raw = top.data.get("image", [])
    if isinstance(raw, dict):
        raise top.error("image", "expected a list of [[image]] tables: write [[image]], with double brackets, "
                                 "not [image]")
    entries = top.get("image", list, [], "a list of [[image]] tables")
    images = [_image_entry(file, i, table, interval, platforms) for i, table in enumerate(entries, start=1)]
    seen: Dict[str, int] = {}
    for entry in images:
        if entry.dest in seen:
            raise ConfigError(f"{file}: {entry.label}.dest: {entry.dest!r} is already the destination of "
                              f"image[{seen[entry.dest]}]; give one of them another dest")
        seen[entry.dest] = entry.index
    return tuple(images)


def _image_entry(file: str, index: int, table: Any, interval: float, platforms: Tuple[Platform, ...]) -> ImageEntry:
    sec = _Section(file, _image_where(index, table), table, _IMAGE_KEYS)
    source_text = sec.get("source", str)
    if not source_text:
        raise sec.error("source", "required: the image to watch, e.g. \"docker.io/library/alpine\"")
    try:
        source = parse_reference(source_text, default_tag=None)
    except InvalidReferenceError as exc:
        raise sec.error("source", str(exc)) from None
    if source.tag or source.digest:
        raise sec.error("source", "give the repository only; put tags in `tags` (or `tag_pattern`)")
    tags = sec.strings("tags")
    tag_pattern = sec.get("tag_pattern", str)
    semver = sec.get("semver", str)
    newest = sec.get("newest", int, None, "a whole number")
    _check_selection(sec, tags, tag_pattern, semver, newest)
    dest = (sec.get("dest", str) or source.name).strip("/")
    last = dest.rsplit("/", 1)[-1]
    if not dest or any(p in ("", ".", "..") or p.startswith(".") for p in dest.split("/")) or ":" in last or "@" in last:
        raise sec.error("dest", "expected a relative path of plain names (no '..', no leading dots, "
                                f"no ':' or '@' in the last name), got {dest!r}")
    return ImageEntry(index, source, tuple(tags or ()), tag_pattern, semver, newest, dest,
                      sec.platforms("platforms", platforms), sec.duration("interval", interval, MIN_INTERVAL_S))


def _check_selection(sec: _Section, tags: Optional[List[str]], tag_pattern: Optional[str], semver: Optional[str],
                     newest: Optional[int]) -> None:
    """Exact tags, or a selection from the registry's tag list; not both, not neither."""
    if tags is not None:
        if not tags:
            raise sec.error("tags", "expected at least one tag")
        bad = [t for t in tags if not is_valid_tag(t)]
        if bad:
            raise sec.error("tags", f"{bad[0]!r} is not a valid tag")
        if tag_pattern or semver or newest is not None:
            raise sec.error("tags", "give either exact `tags` or a selection (`tag_pattern`, `semver`, `newest`), not both")
    elif not (tag_pattern or semver):
        raise sec.error("tags", "required: a list of tags, or `tag_pattern` / `semver` to select from the registry's tags")
    if tag_pattern:
        try:
            re.compile(tag_pattern)
        except re.error as exc:
            raise sec.error("tag_pattern", f"not a valid regular expression: {exc}") from None
        except OverflowError:  # `a{99999999999}`: a repeat count over re's limit
            raise sec.error("tag_pattern", "not a valid regular expression: a repetition count is too large") from None
        except RecursionError:  # thousands of nested groups
            raise sec.error("tag_pattern", "not a valid regular expression: groups are nested too deeply") from None
    if semver:
        try:
            SpecifierSet(semver)
        except InvalidSpecifier:
            raise sec.error("semver", f"not a version range such as \">=1.2,<2\": {semver!r}") from None
    if newest is not None and newest < 1:
        raise sec.error("newest", "expected at least 1")
