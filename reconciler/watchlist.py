"""`watchlist.toml`: which images and tags to keep published, and where.

Parsing is strict: every mistake raises ConfigError naming the file, the entry
and the key, and what was expected; unknown keys are errors, so a typo never
passes silently. Relative paths are taken from the watchlist's directory.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11
    import tomli as tomllib

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .apptainer import DEFAULT_BIND_POINTS
from .errors import ConfigError, InvalidReferenceError
from .registry.manifest import Platform
from .registry.reference import ImageReference, is_valid_tag, normalize_registry, parse_reference

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
BACKENDS = ("local", "cvmfs")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_size(text: str) -> int:
    """`500MB`, `50GiB` -> bytes."""
    m = _SIZE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"expected a size such as \"50GiB\" or \"500MB\", got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `1h30m`, `2d` -> seconds."""
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m or not text.strip() or not any(m.groups()):
        raise ValueError(f"expected a duration such as \"30s\", \"15m\", \"1h30m\" or \"2d\", got {text!r}")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


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


class _Section:
    """Typed access to one TOML table that reports mistakes precisely."""

    def __init__(self, file: str, where: str, data: Any) -> None:
        self.file, self.where = file, where
        if not isinstance(data, dict):
            raise self.error("", "expected a table")
        self.data = data
        self.used: set = set()

    def error(self, key: str, message: str) -> ConfigError:
        location = ".".join(p for p in (self.where, key) if p)
        return ConfigError(f"{self.file}: {location}: {message}" if location else f"{self.file}: {message}")

    def get(self, key: str, kind: type, default: Any = None, expected: str = "") -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise self.error(key, f"expected {expected or kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def strings(self, key: str, default: Any = None) -> Any:
        value = self.get(key, list, default, "a list of strings")
        if value is not default and not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return value

    def duration(self, key: str, default: float) -> float:
        value = self.get(key, str, None, 'a duration string such as "15m"')
        if value is None:
            return default
        try:
            return parse_duration(value)
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

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.error(unknown[0], f"unknown key (known keys here: {known})")


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def load_watchlist(path: Path) -> Watchlist:
    """Read and validate a watchlist file."""
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
    base = path.resolve().parent
    top = _Section(name, "", data)

    pub = _Section(name, "publish", top.get("publish", dict, {}))
    backend = pub.get("backend", str, "local")
    if backend not in BACKENDS:
        raise pub.error("backend", f"expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    repository = pub.get("repository", str)
    lease_path = pub.get("lease_path", str)
    root_text = pub.get("root", str)
    if backend == "cvmfs":
        if not repository:
            raise pub.error("repository", "required for backend \"cvmfs\" (the repository name, e.g. containers.example.org)")
        root = _path(base, root_text) if root_text else Path("/cvmfs") / repository
    else:
        if repository or lease_path:
            raise pub.error("repository" if repository else "lease_path", "only meaningful with backend = \"cvmfs\"")
        root = _path(base, root_text or "publish")
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
    pub.done()
    publish = PublishConfig(backend, root, repository, lease_path.strip("/") if lease_path else None,
                            tuple(p.strip("/") for p in bind_points), gc_grace, gc_max)

    state = _Section(name, "state", top.get("state", dict, {}))
    state_dir = _path(base, state.get("dir", str, ".reconciler"))
    cache_text = state.get("blob_cache_max", str)
    try:
        blob_cache_max = parse_size(cache_text) if cache_text is not None else None
    except ValueError as exc:
        raise state.error("blob_cache_max", str(exc)) from None
    state.done()

    defaults = _Section(name, "defaults", top.get("defaults", dict, {}))
    interval = defaults.duration("interval", 900.0)
    platforms = defaults.platforms("platforms", (Platform("linux", "amd64"),))
    defaults.done()

    registries: Dict[str, RegistryConfig] = {}
    for host, table in top.get("registries", dict, {}).items():
        reg = _Section(name, f'registries."{host}"', table)
        config = RegistryConfig(
            host=normalize_registry(host),
            insecure=reg.get("insecure", bool, False, "true or false"),
            username=reg.get("username", str),
            password_file=reg.get("password_file", str),
            password_env=reg.get("password_env", str),
            mirror=reg.get("mirror", str),
            max_concurrency=reg.get("max_concurrency", int, 4, "a whole number"),
        )
        if config.username and not (config.password_file or config.password_env):
            raise reg.error("username", "needs password_file or password_env beside it")
        if config.password_file and config.password_env:
            raise reg.error("password_env", "give password_file or password_env, not both")
        if (config.password_file or config.password_env) and not config.username:
            raise reg.error("username", "required when a password is configured")
        if config.password_file:
            config = RegistryConfig(**{**config.__dict__, "password_file": str(_path(base, config.password_file))})
        if config.max_concurrency < 1:
            raise reg.error("max_concurrency", "expected at least 1")
        if config.mirror and not re.match(r"^https?://[^/]+", config.mirror):
            raise reg.error("mirror", "expected a URL such as \"http://mirror:5000\"")
        reg.done()
        registries[config.host] = config

    service = _Section(name, "service", top.get("service", dict, {}))
    listen = service.get("listen", str)
    if listen is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$", listen):
        raise service.error("listen", f"expected HOST:PORT, got {listen!r}")
    service.done()

    webhooks: Dict[str, WebhookConfig] = {}
    for provider, table in top.get("webhooks", dict, {}).items():
        hook = _Section(name, f"webhooks.{provider}", table)
        if provider not in ("distribution", "dockerhub", "gitlab", "harbor", "quay", "github", "generic"):
            raise hook.error("", "unknown provider (known: distribution, dockerhub, gitlab, harbor, quay, github, generic)")
        config = WebhookConfig(provider, hook.get("token_env", str), hook.get("token_file", str))
        if config.token_file:
            config = WebhookConfig(provider, None, str(_path(base, config.token_file)))
        hook.done()
        webhooks[provider] = config

    images: List[ImageEntry] = []
    entries = top.get("image", list, [], "a list of [[image]] tables")
    for i, table in enumerate(entries, start=1):
        images.append(_image_entry(name, i, table, interval, platforms))
    top.done()
    seen: Dict[Tuple[str, str], int] = {}
    for entry in images:
        key = (entry.dest, "")
        if key in seen:
            raise ConfigError(f"{name}: {entry.label}.dest: {entry.dest!r} is already the destination of "
                              f"image[{seen[key]}]; give one of them another dest")
        seen[key] = entry.index
    return Watchlist(path, publish, state_dir, blob_cache_max, interval, platforms, registries, listen, webhooks, tuple(images))


def _image_entry(file: str, index: int, table: Any, interval: float, platforms: Tuple[Platform, ...]) -> ImageEntry:
    sec = _Section(file, f"image[{index}]", table)
    source_text = sec.get("source", str)
    if not source_text:
        raise sec.error("source", "required: the image to watch, e.g. \"docker.io/library/alpine\"")
    try:
        source = parse_reference(source_text, default_tag=None)
    except InvalidReferenceError as exc:
        raise sec.error("source", str(exc)) from None
    if source.tag or source.digest:
        raise sec.error("source", "give the repository only; put tags in `tags` (or `tag_pattern`)")
    sec.where = f"image[{index}] ({source.name})"
    tags = sec.strings("tags")
    tag_pattern = sec.get("tag_pattern", str)
    semver = sec.get("semver", str)
    newest = sec.get("newest", int, None, "a whole number")
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
    if semver:
        try:
            SpecifierSet(semver)
        except InvalidSpecifier:
            raise sec.error("semver", f"not a version range such as \">=1.2,<2\": {semver!r}") from None
    if newest is not None and newest < 1:
        raise sec.error("newest", "expected at least 1")
    dest = sec.get("dest", str) or source.name
    dest = dest.strip("/")
    last = dest.rsplit("/", 1)[-1]
    if not dest or any(p in ("", ".", "..") or p.startswith(".") for p in dest.split("/")) or ":" in last or "@" in last:
        raise sec.error("dest", "expected a relative path of plain names (no '..', no leading dots, "
                                f"no ':' or '@' in the last name), got {dest!r}")
    entry = ImageEntry(index, source, tuple(tags or ()), tag_pattern, semver, newest, dest,
                       sec.platforms("platforms", platforms), sec.duration("interval", interval))
    sec.done()
    return entry
