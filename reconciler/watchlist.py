"""`watchlist.toml`: which images and tags to keep published, and where.

Parsing is strict: every mistake raises ConfigError naming the file, the entry
and the key, and what was expected; unknown keys are errors, so a typo never
passes silently, and they are reported before anything else (with a close
match when there is one), since a misspelt key is the likeliest cause of a
"required" error elsewhere. Relative paths are taken from the watchlist's
directory.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11
    import tomli as tomllib

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .config.section import Section, config_path, unknown_message
from .config.values import MAX_DURATION_S, MIN_INTERVAL_S, parse_duration, parse_listen, parse_size
from .config.watchlist_keys import (
    BACKENDS,
    DEFAULTS,
    FOREIGN_TAG_POLICIES,
    IMAGE,
    LIST,
    LIST_FORMATS,
    PUBLISH,
    REGISTRY,
    SERVICE,
    SIGNATURE,
    SIGNATURE_NONE,
    STATE,
    TOP,
    VISIBILITIES,
    WEBHOOK,
)
from .errors import ConfigError, InvalidReferenceError
from .registry.manifest import Platform
from .registry.reference import ImageReference, is_valid_tag, normalize_registry, parse_reference
from .signatures.keys import KeyFormatError, TrustedKey, load_public_key
from .signatures.policy import IdentityRule, SignaturePolicy
from .webhooks import PROVIDERS

__all__ = ["BACKENDS", "MAX_DURATION_S", "MIN_INTERVAL_S", "CvmfsTarget", "ImageEntry", "ListConfig", "LocalTarget",
           "PublishConfig", "PublishTarget", "RegistryConfig",
           "Watchlist", "WebhookConfig", "load_watchlist", "parse_duration", "parse_listen", "parse_size"]

# Defaults the records share with the loader, from the declarations.
_DEFAULT_INTERVAL = parse_duration(DEFAULTS.default_text("interval"))
_DEFAULT_PLATFORMS = tuple(Platform.parse(p) for p in DEFAULTS.default_strings("platforms"))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTarget:
    """`backend = "local"`: a plain directory, the publish root itself."""

    kind: ClassVar[str] = "local"


@dataclass(frozen=True)
class CvmfsTarget:
    """`backend = "cvmfs"`: a CernVM-FS repository, published whole or
    through a gateway lease on `lease_path`."""

    repository: str
    lease_path: Optional[str] = None
    kind: ClassVar[str] = "cvmfs"


# What a `[publish]` table publishes to: the backend's own settings, one type a
# backend, so that code picks a publisher by type, never by comparing names.
PublishTarget = Union[LocalTarget, CvmfsTarget]
TARGETS: Tuple[Type[Any], ...] = (LocalTarget, CvmfsTarget)
if tuple(t.kind for t in TARGETS) != BACKENDS:  # pragma: no cover - a declaration out of step
    raise RuntimeError("config/watchlist_keys.BACKENDS must name the publish targets in order")


@dataclass(frozen=True)
class PublishConfig:
    """The `[publish]` table: its target (a tagged union, one type a backend)
    and what every backend shares. Defaults come from its declaration
    (config/watchlist_keys.py)."""

    target: PublishTarget = LocalTarget()
    root: Path = Path(PUBLISH.default_text("root"))
    bind_points: Tuple[str, ...] = PUBLISH.default_strings("bind_points")
    gc_grace: float = parse_duration(PUBLISH.default_text("gc_grace"))
    gc_max_per_cycle: int = PUBLISH.default_whole("gc_max_per_cycle")
    name: str = ""  # "" for the one [publish] table, else <name> of [publish.<name>]
    visibility: Optional[str] = None  # "public" or "restricted" as the file says; None: the backend's default
    # Stratum 1s to follow (cvmfs), and when one that has not caught up is lagging.
    replicas: Tuple[str, ...] = PUBLISH.default_strings("replicas")
    replica_lag_max: float = parse_duration(PUBLISH.default_text("replica_lag_max"))
    # "keep" or "collect": an earlier tool's tag links no entry watches (a repository taken over).
    foreign_tags: str = PUBLISH.default_text("foreign_tags")

    @property
    def backend(self) -> str:
        """The target's name in `[publish] backend`."""
        return self.target.kind

    @property
    def label(self) -> str:
        """How messages name this target's table."""
        return f"[publish.{self.name}]" if self.name else "[publish]"


@dataclass(frozen=True)
class RegistryConfig:
    """One `[registries."host"]` table, or the defaults for a host without one."""

    host: str
    insecure: bool = REGISTRY.default_flag("insecure")
    username: Optional[str] = None
    password_file: Optional[str] = None
    password_env: Optional[str] = None
    mirror: Optional[str] = None
    max_concurrency: int = REGISTRY.default_whole("max_concurrency")  # blob downloads at once
    max_lookups: int = REGISTRY.default_whole("max_lookups")  # manifest and tag-list requests at once
    # Token services this registry may name on a private address (host or host:port).
    token_realms: Tuple[str, ...] = REGISTRY.default_strings("token_realms")
    # Where requests go when not to `host` itself (a test registry, a full mirror).
    address: Optional[str] = None


@dataclass(frozen=True)
class WebhookConfig:
    """One `[webhooks.<provider>]` table."""

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
    interval: float = _DEFAULT_INTERVAL
    publish: str = ""  # the name of its target ("" for the one [publish] table)
    private_ok: bool = False  # it may go to a public target even if it needs credentials
    tag_glob: Tuple[str, ...] = ()  # shell wildcards, as fnmatch: a selection like tag_pattern
    origin: str = ""  # `file:line` of a [[list]]'s line; empty for an [[image]] block
    signature: Optional[SignaturePolicy] = None  # None: published without a signature check

    @property
    def label(self) -> str:
        """How messages name this entry."""
        return f"{self.origin or f'image[{self.index}]'} ({self.source.name})"

    @property
    def lists_tags(self) -> bool:
        """True when the tags come from the registry's tag list."""
        return not self.tags


@dataclass(frozen=True)
class ListConfig:
    """One `[[list]]` block: a list file another tool reads, read as it is
    (reconciler/lists) at every cycle; its entries get these settings."""

    index: int  # 1-based position among the [[list]] blocks
    path: Path
    format: str  # one of LIST_FORMATS
    dest: str  # a template of $(registry) and $(repository)
    platforms: Tuple[Platform, ...]
    interval: float
    publish: str = ""  # the target of its entries ("" for the one [publish] table)
    signature: Optional[SignaturePolicy] = None  # its entries' ([defaults] signature)

    @property
    def label(self) -> str:
        """How messages name this list."""
        return f"list[{self.index}] ({self.path.name})"


# The variables a [[list]]'s dest template may use, and each format's default
# (the path its own tool publishes at).
DEST_VARIABLES = ("$(registry)", "$(repository)")
DEFAULT_LIST_DEST = {"osg": "$(repository)", "ducc": "$(registry)/$(repository)"}


@dataclass(frozen=True)
class Watchlist:
    """The whole file, checked, with relative paths resolved."""

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
    # Every publish target in file order ([publish] alone, or the [publish.<name>]
    # tables); `publish` is the first. Empty: `publish` is the only one.
    targets: Tuple[PublishConfig, ...] = ()
    lists: Tuple[ListConfig, ...] = ()
    # The one [publish.<name>] this process runs (`reconcile --target`, a publisher
    # node of a sharded repository); its state directory is then the target's own.
    node: str = ""

    def registry(self, host: str) -> RegistryConfig:
        """The settings of `host`, or the defaults (https, no credentials)."""
        return self.registries.get(host) or RegistryConfig(host)

    @property
    def publish_targets(self) -> Tuple[PublishConfig, ...]:
        """Every publish target, in file order."""
        return self.targets or (self.publish,)

    def for_target(self, target: PublishConfig) -> "Watchlist":
        """This watchlist as one target's cycle sees it: that target as its
        [publish] table, and only the entries published there."""
        return replace(self, publish=target, targets=(target,),
                       images=tuple(e for e in self.images if e.publish == target.name))

    def target_state_dir(self, target: PublishConfig) -> Path:
        """Where a target keeps its state database (and a CVMFS target its
        transaction marker): the state directory itself for the one [publish]
        table, `targets/<name>/` in it for a named one. The blob store is shared.
        A node's watchlist (`select_node`) already has the target's own as its state directory."""
        return self.state_dir / "targets" / target.name if target.name and not self.node else self.state_dir

    def select_node(self, name: str) -> "Watchlist":
        """The part of this watchlist that one publisher node runs: the target
        [publish.<name>], its entries only, and `<state dir>/targets/<name>/` as
        the whole state directory (lock, blob store, state database, transaction
        marker), so that two nodes on one machine never share a lock.
        ConfigError when the watchlist has no such target."""
        names = [t.name for t in self.publish_targets if t.name]
        if name not in names:
            where = f"--target {name}: {self.path.name}"
            if not names:
                raise ConfigError(f"{where} has one [publish] table and no [publish.<name>] ones; --target picks "
                                  "one of several named targets (one per publisher node)")
            raise ConfigError(f"{where}: {unknown_message(name, names, 'target')}")
        target = next(t for t in self.publish_targets if t.name == name)
        return replace(self.for_target(target), state_dir=self.target_state_dir(target), node=name,
                       lists=tuple(config for config in self.lists if config.publish == name))


_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_REGISTRY_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?")


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


# The tables that hold keys directly (not one table per host or provider),
# named in messages by their declared title.
_SIMPLE_TABLES = (STATE, DEFAULTS, SERVICE)


def _named_targets(data: Dict[str, Any]) -> Dict[str, Any]:
    """The [publish.<name>] tables of a [publish] table (none: it is the one target)."""
    return {name: table for name, table in data.items() if isinstance(table, dict)}


def _check_known_keys(file: str, data: Any) -> None:
    """First pass over the whole file: unknown keys anywhere are reported
    before any value is checked. Values of the wrong type are skipped here;
    the second pass reports them."""
    Section(file, "", data, TOP)
    publish = data.get("publish")
    if isinstance(publish, dict):
        named = _named_targets(publish)
        for name, table in named.items():
            Section(file, f"publish.{name}", table, PUBLISH)
        if not named:
            Section(file, "publish", publish, PUBLISH)
    for declared in _SIMPLE_TABLES:
        if isinstance(data.get(declared.title), dict):
            Section(file, declared.title, data[declared.title], declared)
    if isinstance(data.get("defaults"), dict) and isinstance(data["defaults"].get("signature"), dict):
        Section(file, "defaults.signature", data["defaults"]["signature"], SIGNATURE)
    registries = data.get("registries")
    if isinstance(registries, dict):
        for host, table in registries.items():
            if isinstance(table, dict):
                Section(file, f'registries."{host}"', table, REGISTRY)
    webhooks = data.get("webhooks")
    if isinstance(webhooks, dict):
        for provider, table in webhooks.items():
            _check_provider(file, provider)
            if isinstance(table, dict):
                Section(file, f"webhooks.{provider}", table, WEBHOOK)
    images = data.get("image")
    if isinstance(images, list):
        for index, table in enumerate(images, start=1):
            if isinstance(table, dict):
                Section(file, _image_where(index, table), table, IMAGE)
                if isinstance(table.get("signature"), dict):
                    Section(file, f"{_image_where(index, table)}.signature", table["signature"], SIGNATURE)
    lists = data.get("list")
    if isinstance(lists, list):
        for index, table in enumerate(lists, start=1):
            if isinstance(table, dict):
                Section(file, f"list[{index}]", table, LIST)


def _check_provider(file: str, provider: str) -> None:
    """ConfigError unless `provider` is a webhook provider we know."""
    if provider not in PROVIDERS:
        raise ConfigError(f"{file}: webhooks.{provider}: {unknown_message(provider, PROVIDERS, 'provider')}")


def _read_toml(path: Path) -> Dict[str, Any]:
    """The file's TOML document; ConfigError when it cannot be read or parsed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the watchlist: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: TOML syntax error: {exc}") from None


def load_watchlist(path: Path, node: Optional[str] = None) -> Watchlist:
    """Read and validate a watchlist file; every mistake raises ConfigError.
    `node`: only the target [publish.<node>] (see `Watchlist.select_node`),
    for one publisher node of a repository whose lease paths are shared out
    among targets; the whole file is still checked."""
    path = Path(path)
    name = path.name
    data = _read_toml(path)
    _check_known_keys(name, data)
    base = path.resolve().parent
    top = Section(name, "", data, TOP)

    targets = _publish_targets(name, top, base, one_process=node is None)
    state = Section(name, "state", top.table("state"), STATE)
    state_dir = state.path("dir", base, STATE.default_text("dir"))
    assert state_dir is not None
    cache_text = state.text("blob_cache_max")
    try:
        blob_cache_max = parse_size(cache_text) if cache_text is not None else None
    except ValueError as exc:
        raise state.error("blob_cache_max", str(exc)) from None

    defaults = Section(name, "defaults", top.table("defaults"), DEFAULTS)
    interval = defaults.duration("interval", minimum=MIN_INTERVAL_S)
    platforms = defaults.platforms("platforms", _DEFAULT_PLATFORMS)
    default_target = _default_target(defaults, targets)
    keys = _KeyFiles(base)
    signature = _signature(defaults, keys, None)

    registries = _registries(name, top, base)
    service = Section(name, "service", top.table("service"), SERVICE)
    listen = service.text("listen")
    if listen is not None:
        try:
            parse_listen(listen)
        except ValueError as exc:
            raise service.error("listen", str(exc)) from None
    webhooks = _webhooks(name, top, base)
    images = _images(name, top, interval, platforms, default_target, targets, signature, keys)
    lists = _lists(name, top, base, interval, platforms, default_target, targets, signature)
    watchlist = Watchlist(path, targets[0], state_dir, blob_cache_max, interval, platforms, registries, listen,
                          webhooks, images, targets, lists)
    return watchlist.select_node(node) if node is not None else watchlist


def _publish_targets(file: str, top: Section, base: Path, one_process: bool = True) -> Tuple[PublishConfig, ...]:
    """The one [publish] table, or every [publish.<name>] table in file order;
    no two of them may publish to the same tree or one inside the other.
    `one_process`: all of them run in this process, so no two may share a
    CernVM-FS repository (a node holds one transaction per repository)."""
    data = top.table("publish")
    named = _named_targets(data)
    if not named:
        return (_publish(Section(file, "publish", data, PUBLISH), base),)
    plain = [key for key in data if key not in named]
    if plain:
        raise ConfigError(f"{file}: publish.{plain[0]}: [publish] holds named targets ([publish.{next(iter(named))}]) "
                          "beside keys of its own; put every target's keys in its own [publish.<name>] table")
    targets: List[PublishConfig] = []
    for target_name, table in named.items():
        sec = Section(file, f"publish.{target_name}", table, PUBLISH)
        if not _TARGET_NAME.fullmatch(target_name):
            raise sec.error("", "expected a target name of letters, digits, '-' and '_' (such as \"public\")")
        targets.append(_publish(sec, base, target_name))
    repositories: Dict[str, PublishConfig] = {}
    for target in targets if one_process else ():
        if isinstance(target.target, CvmfsTarget):
            other = repositories.setdefault(target.target.repository, target)
            if other is not target:
                # A publisher node holds one transaction per repository at a time.
                raise ConfigError(f"{file}: {target.label}: the same CernVM-FS repository as {other.label} "
                                  f"({target.target.repository}); one node publishes a repository through one "
                                  "target: give them one lease_path covering both, or run each on its own "
                                  f"publisher node with `reconcile --target {other.name}` / "
                                  f"`--target {target.name}`")
    trees = [(t, _published_tree(t)) for t in targets]
    for i, (one, tree) in enumerate(trees):
        for other, other_tree in trees[:i]:
            if tree == other_tree or tree in other_tree.parents or other_tree in tree.parents:
                raise ConfigError(f"{file}: {one.label}: publishes to {tree}, which overlaps {other.label}'s "
                                  f"{other_tree}; give each target a tree of its own")
    return tuple(targets)


def _published_tree(target: PublishConfig) -> Path:
    """The tree a target writes: its root, or a CVMFS lease's sub-tree of it."""
    lease = getattr(target.target, "lease_path", None)
    return target.root / lease if lease else target.root


def _default_target(defaults: Section, targets: Tuple[PublishConfig, ...]) -> Optional[str]:
    """The target of entries that name none: `[defaults] publish`, or the only
    target; None when there are several and [defaults] names none."""
    named = defaults.text("publish")
    if named is not None:
        _check_target_name(defaults, "publish", named, targets)
        return named
    return targets[0].name if len(targets) == 1 else None


def _check_target_name(sec: Section, key: str, name: str, targets: Tuple[PublishConfig, ...]) -> None:
    """ConfigError unless `name` is one of the [publish.<name>] targets."""
    names = [t.name for t in targets if t.name]
    if name not in names:
        if not names:
            raise sec.error(key, "names a target, but the watchlist has one [publish] table and no [publish.<name>] "
                                 "ones: remove the key, or name the targets")
        raise sec.error(key, unknown_message(name, names, "target"))


def _publish(pub: Section, base: Path, name: str = "") -> PublishConfig:
    """The [publish] table: the backend and where it publishes."""
    backend = pub.text("backend")
    if backend not in BACKENDS:
        raise pub.error("backend", f"expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    target, root = _publish_target(pub, base, backend)
    bind_points = pub.strings("bind_points")
    assert bind_points is not None  # declared with a default
    for point in bind_points:
        if not point.strip("/") or ".." in point.split("/"):
            raise pub.error("bind_points",
                            f"expected directory names inside the image such as \"cvmfs\", got {point!r}")
    gc_grace = pub.duration("gc_grace")
    gc_max = _declared_whole(pub, "gc_max_per_cycle")
    if gc_max < 0:
        raise pub.error("gc_max_per_cycle", "expected 0 (never collect) or more")
    foreign_tags = pub.text("foreign_tags")
    if foreign_tags not in FOREIGN_TAG_POLICIES:
        raise pub.error("foreign_tags", f"expected one of {', '.join(map(repr, FOREIGN_TAG_POLICIES))}, "
                                        f"got {foreign_tags!r}")
    visibility = pub.text("visibility")
    if visibility is not None and visibility not in VISIBILITIES:
        raise pub.error("visibility", f"expected one of {', '.join(map(repr, VISIBILITIES))}, got {visibility!r}")
    replicas, replica_lag_max = _replicas(pub, target)
    return PublishConfig(target, root, tuple(p.strip("/") for p in bind_points), gc_grace, gc_max, name, visibility,
                         foreign_tags=foreign_tags,
                         replicas=replicas, replica_lag_max=replica_lag_max)


def _replicas(pub: Section, target: PublishTarget) -> Tuple[Tuple[str, ...], float]:
    """`replicas` (stratum 1 URLs, cvmfs only) and `replica_lag_max`."""
    replicas = tuple(url.rstrip("/") for url in pub.strings("replicas") or ())
    if replicas and not isinstance(target, CvmfsTarget):
        raise pub.error("replicas", "only meaningful with backend = \"cvmfs\" (stratum 1s of its repository)")
    for url in replicas:
        if not re.match(r"^https?://[^/\s]+/\S*$", url + "/"):
            raise pub.error("replicas", f'expected URLs such as "http://stratum1.example.org/cvmfs/<repository>", '
                                        f"got {url!r}")
    return replicas, pub.duration("replica_lag_max")


def _publish_target(pub: Section, base: Path, backend: str) -> Tuple[PublishTarget, Path]:
    """The one place a backend's name becomes its type; with the publish root
    (a CVMFS repository's is /cvmfs/<repository> unless the file says)."""
    repository = pub.text("repository")
    lease_path = pub.text("lease_path")
    if backend != CvmfsTarget.kind:
        if repository or lease_path:
            raise pub.error("repository" if repository else "lease_path", "only meaningful with backend = \"cvmfs\"")
        root = pub.path("root", base, PUBLISH.default_text("root"))
        assert root is not None
        return LocalTarget(), root
    if not repository:
        raise pub.error("repository", "required for backend \"cvmfs\" (the repository name, "
                                      "e.g. containers.example.org)")
    if lease_path is not None and (lease_path.startswith("/") or ".." in lease_path.split("/")
                                   or not lease_path.strip("/")):
        raise pub.error("lease_path", "expected a relative sub-path of the repository, such as \"ligo\"")
    root_text: Optional[str] = pub.get("root")  # the file's own: cvmfs has another default
    root = pub.path("root", base) if root_text else Path("/cvmfs") / repository
    assert root is not None
    return CvmfsTarget(repository, lease_path.strip("/") if lease_path else None), root


def _registries(file: str, top: Section, base: Path) -> Dict[str, RegistryConfig]:
    """The [registries."host"] tables by normalized host; two names for one host are refused."""
    registries: Dict[str, RegistryConfig] = {}
    named: Dict[str, str] = {}  # normalized host -> how the file wrote it
    for host, table in top.table("registries").items():
        reg = Section(file, f'registries."{host}"', table, REGISTRY)
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


def _registry(reg: Section, host: str, base: Path) -> RegistryConfig:
    """One registry's settings, with the rules between its keys checked."""
    password_file = reg.path("password_file", base)
    config = RegistryConfig(
        host=host,
        insecure=reg.flag("insecure"),
        username=reg.text("username"),
        password_file=str(password_file) if password_file else None,
        password_env=reg.text("password_env"),
        mirror=reg.text("mirror"),
        max_concurrency=_declared_whole(reg, "max_concurrency"),
        max_lookups=_declared_whole(reg, "max_lookups"),
        token_realms=tuple(reg.strings("token_realms") or ()),
        address=reg.text("address"),
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
    if config.max_lookups < 1:
        raise reg.error("max_lookups", "expected at least 1")
    if config.address is not None and not _REGISTRY_HOST.fullmatch(config.address):
        raise reg.error("address", 'expected a host and port such as "127.0.0.1:5000", without "https://" or a path '
                                   "(plain http: insecure = true)")
    if config.mirror and not re.match(r"^https?://[^/]+", config.mirror):
        raise reg.error("mirror", "expected a URL such as \"http://mirror:5000\"")
    return config


def _declared_whole(sec: Section, name: str) -> int:
    """A whole number whose declaration gives a default, so never None."""
    value = sec.whole(name)
    assert value is not None, f"{name} is declared without a default"
    return value


def _webhooks(file: str, top: Section, base: Path) -> Dict[str, WebhookConfig]:
    """The [webhooks.<provider>] tables by provider."""
    webhooks: Dict[str, WebhookConfig] = {}
    for provider, table in top.table("webhooks").items():
        _check_provider(file, provider)
        hook = Section(file, f"webhooks.{provider}", table, WEBHOOK)
        token_env = hook.text("token_env")
        token_file = hook.path("token_file", base)
        if token_env and token_file:
            # Which one would win is not obvious to a reader; make them pick.
            raise hook.error("token_env", "give token_env or token_file, not both")
        webhooks[provider] = WebhookConfig(provider, token_env, str(token_file) if token_file else None)
    return webhooks


def _images(file: str, top: Section, interval: float, platforms: Tuple[Platform, ...],
            default_target: Optional[str], targets: Tuple[PublishConfig, ...], signature: Optional[SignaturePolicy],
            keys: "_KeyFiles") -> Tuple[ImageEntry, ...]:
    """The [[image]] blocks, in file order; two with one dest are refused.
    `signature` is the [defaults]' (None: no policy)."""
    raw = top.data.get("image", [])
    if isinstance(raw, dict):
        raise top.error("image", "expected a list of [[image]] tables: write [[image]], with double brackets, "
                                 "not [image]")
    entries = top.tables("image")
    images = [_image_entry(file, i, table, interval, platforms, default_target, targets, signature, keys)
              for i, table in enumerate(entries, start=1)]
    seen: Dict[str, int] = {}
    for entry in images:
        if entry.dest in seen:
            raise ConfigError(f"{file}: {entry.label}.dest: {entry.dest!r} is already the destination of "
                              f"image[{seen[entry.dest]}]; give one of them another dest")
        seen[entry.dest] = entry.index
    return tuple(images)


def _image_entry(file: str, index: int, table: Any, interval: float, platforms: Tuple[Platform, ...],
                 default_target: Optional[str], targets: Tuple[PublishConfig, ...],
                 signature: Optional[SignaturePolicy], keys: "_KeyFiles") -> ImageEntry:
    """One [[image]] block; `interval`, `platforms`, `default_target` and `signature` are the [defaults]."""
    sec = Section(file, _image_where(index, table), table, IMAGE)
    source_text = sec.text("source")
    if not source_text:
        raise sec.error("source", "required: the image to watch, e.g. \"docker.io/library/alpine\"")
    try:
        source = parse_reference(source_text, default_tag=None)
    except InvalidReferenceError as exc:
        raise sec.error("source", str(exc)) from None
    if source.tag or source.digest:
        raise sec.error("source", "give the repository only; put tags in `tags` (or `tag_pattern`)")
    tags = sec.strings("tags")
    tag_pattern = sec.text("tag_pattern")
    semver = sec.text("semver")
    newest = sec.whole("newest")
    _check_selection(sec, tags, tag_pattern, semver, newest, sec.strings("tag_glob"))
    dest = (sec.text("dest") or source.name).strip("/")
    problem = dest_problem(dest)
    if problem:
        raise sec.error("dest", problem)
    target = _entry_target(sec, default_target, targets)
    return ImageEntry(index, source, tuple(tags or ()), tag_pattern, semver, newest, dest,
                      sec.platforms("platforms", platforms), sec.duration("interval", interval, MIN_INTERVAL_S),
                      target, sec.flag("private_ok"), tuple(sec.strings("tag_glob") or ()),
                      signature=_signature(sec, keys, signature))


def _entry_target(sec: Section, default_target: Optional[str], targets: Tuple[PublishConfig, ...]) -> str:
    """The target an [[image]] or [[list]] block names, or the default one."""
    target = sec.text("publish")
    if target is not None:
        _check_target_name(sec, "publish", target, targets)
        return target
    if default_target is None:
        raise sec.error("publish", "required with several targets: one of "
                                   f"{', '.join(repr(t.name) for t in targets)} (or set [defaults] publish)")
    return default_target


def could_match_tags(glob: str) -> bool:
    """True when `glob` holds only characters a tag or a wildcard can: ASCII,
    printable, no space, no '/', ':' or '@'."""
    return bool(glob) and all(c.isascii() and c.isprintable() and not c.isspace() and c not in "/:@" for c in glob)


def reversed_range(glob: str) -> Optional[str]:
    """A character range `[z-a]` of `glob` whose ends are in reverse order, as
    fnmatch reads brackets; None when it has none. Python 3.10 and later drop
    such a range, 3.9 cannot compile it: refused, the glob means the same on each."""
    i, n = 0, len(glob)
    while i < n:
        if glob[i] != "[":
            i += 1
            continue
        j = i + 1
        if j < n and glob[j] == "!":
            j += 1
        if j < n and glob[j] == "]":
            j += 1
        while j < n and glob[j] != "]":
            j += 1
        if j >= n:  # no closing bracket: a literal '['
            return None
        inside = glob[i + 2:j] if glob[i + 1:i + 2] == "!" else glob[i + 1:j]
        for k in range(len(inside) - 2):
            if inside[k + 1] == "-" and ord(inside[k]) > ord(inside[k + 2]):
                return inside[k:k + 3]
        i = j + 1
    return None


def glob_problem(glob: str) -> Optional[str]:
    """Why `glob` cannot select tags, or None when it can."""
    if not could_match_tags(glob):
        return f"{glob!r} holds characters no tag has (tags are ASCII letters, digits, '_', '.' and '-')"
    backwards = reversed_range(glob)
    if backwards is not None:
        return f"{glob!r}: the range {backwards!r} goes backwards (write its ends in order, such as '0-9')"
    try:
        re.compile(fnmatch.translate(glob))
    except re.error as exc:
        return f"{glob!r} is not a wildcard this Python can use: {exc}"
    return None


def dest_problem(dest: str) -> Optional[str]:
    """Why `dest` cannot be where tags are published, or None when it can."""
    last = dest.rsplit("/", 1)[-1]
    if (not dest or any(p in ("", ".", "..") or p.startswith(".") for p in dest.split("/"))
            or ":" in last or "@" in last):
        return ("expected a relative path of plain names (no '..', no leading dots, "
                f"no ':' or '@' in the last name), got {dest!r}")
    return None


class _KeyFiles:
    """The signature keys of one watchlist, each file read and parsed once."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._loaded: Dict[Path, TrustedKey] = {}

    def load(self, sec: Section, text: str) -> TrustedKey:
        """The key in file `text`; ConfigError naming the file, the table and the key otherwise."""
        try:
            path = config_path(self.base, text)
        except ValueError as exc:
            raise sec.error("signature.keys", str(exc)) from None
        if path in self._loaded:
            return self._loaded[path]
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise sec.error("signature.keys", f"cannot read the key {path}: {exc.strerror}") from None
        try:
            key = load_public_key(pem, str(path))
        except KeyFormatError as exc:
            raise sec.error("signature.keys", f"{path}: {exc}") from None
        self._loaded[path] = key
        return key


def _signature(sec: Section, keys: _KeyFiles, inherited: Optional[SignaturePolicy]) -> Optional[SignaturePolicy]:
    """The table's `signature`: its own policy, none ("none"), or `inherited` when absent."""
    value = sec.get("signature")
    if value is None:
        return inherited
    if value == SIGNATURE_NONE:
        return None
    if not isinstance(value, dict):
        raise sec.error("signature", f'expected a table {{ keys = ["cosign.pub"] }} or "{SIGNATURE_NONE}", '
                                     f"got {value!r}"[:200])
    table = Section(sec.file, f"{sec.where}.signature", value, SIGNATURE)
    paths = table.strings("keys")
    if not paths:
        raise table.error("keys", 'required: the cosign public keys that may sign, e.g. ["cosign.pub"]')
    identity_text = table.text("identity")
    assert identity_text is not None  # declared with a default
    try:
        identity = IdentityRule.parse(identity_text)
    except ValueError as exc:
        raise table.error("identity", str(exc)) from None
    loaded = tuple(dict.fromkeys(keys.load(sec, p) for p in paths))
    for key in loaded:
        log.info("%s: %s.signature: key %s, SHA-256 fingerprint %s", sec.file, sec.where, key.source,
                 key.fingerprint)
    return SignaturePolicy(loaded, identity)


def _check_selection(sec: Section, tags: Optional[List[str]], tag_pattern: Optional[str], semver: Optional[str],
                     newest: Optional[int], tag_glob: Optional[List[str]]) -> None:
    """Exact tags, or a selection from the registry's tag list; not both, not neither."""
    if tags is not None:
        if not tags:
            raise sec.error("tags", "expected at least one tag")
        bad = [t for t in tags if not is_valid_tag(t)]
        if bad:
            raise sec.error("tags", f"{bad[0]!r} is not a valid tag")
        if tag_pattern or semver or newest is not None or tag_glob is not None:
            raise sec.error("tags", "give either exact `tags` or a selection (`tag_pattern`, `tag_glob`, `semver`, "
                                    "`newest`), not both")
    elif not (tag_pattern or semver or tag_glob is not None):
        raise sec.error("tags", "required: a list of tags, or `tag_pattern` / `tag_glob` / `semver` to select "
                                "from the registry's tags")
    if tag_glob is not None:
        if not tag_glob:
            raise sec.error("tag_glob", "expected at least one wildcard such as \"rhel7-*\"")
        for glob in tag_glob:
            problem = glob_problem(glob)
            if problem:
                raise sec.error("tag_glob", problem)
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


def _lists(file: str, top: Section, base: Path, interval: float, platforms: Tuple[Platform, ...],
           default_target: Optional[str], targets: Tuple[PublishConfig, ...],
           signature: Optional[SignaturePolicy]) -> Tuple[ListConfig, ...]:
    """The [[list]] blocks, in file order (their files are read by reconciler.lists);
    their entries take the [defaults] `signature`."""
    raw = top.data.get("list", [])
    if isinstance(raw, dict):
        raise top.error("list", "expected a list of [[list]] tables: write [[list]], with double brackets, "
                                "not [list]")
    out: List[ListConfig] = []
    for index, table in enumerate(top.tables("list"), start=1):
        sec = Section(file, f"list[{index}]", table, LIST)
        path = sec.path("path", base)
        if path is None:
            raise sec.error("path", "required: the list file, e.g. \"docker_images.txt\"")
        form = sec.text("format")
        if form not in LIST_FORMATS:
            raise sec.error("format", f"expected one of {', '.join(map(repr, LIST_FORMATS))}, got {form!r}")
        dest = sec.text("dest") or DEFAULT_LIST_DEST[form]
        if "$(repository)" not in dest:
            raise sec.error("dest", "expected a template with $(repository) (else every image of the list would "
                                    f"publish at one path), got {dest!r}")
        leftover = dest
        for variable in DEST_VARIABLES:
            leftover = leftover.replace(variable, "x")
        if "$(" in leftover:
            raise sec.error("dest", f"the variables are {' and '.join(DEST_VARIABLES)}; the tag is added after "
                                    f"':' by itself; got {dest!r}")
        problem = dest_problem(leftover.strip("/"))
        if problem:
            raise sec.error("dest", problem)
        out.append(ListConfig(index, path, form, dest, sec.platforms("platforms", platforms),
                              sec.duration("interval", interval, MIN_INTERVAL_S),
                              _entry_target(sec, default_target, targets), signature))
    return tuple(out)
