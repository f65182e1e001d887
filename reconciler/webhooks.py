"""Registry webhooks: verify the sender, then extract which repositories may
have changed. A hook is only a hint to poll sooner: its tags and digests are
never trusted, and the poll itself verifies everything.

| provider     | authentication                                              | repositories from                         |
|--------------|-------------------------------------------------------------|-------------------------------------------|
| distribution | `Authorization: Bearer <token>` (set in the registry config) | events[].target.repository (push events)  |
| dockerhub    | the secret token as the last URL path segment                | repository.repo_name                      |
| gitlab       | `X-Gitlab-Token: <token>`                                    | events[] (registry notifications) or project.path_with_namespace |
| harbor       | `Authorization: <token>` (Harbor's "Auth Header")            | event_data.repository.repo_full_name      |
| quay         | the secret token as the last URL path segment                | repository (one hint per updated_tags)    |
| github       | `X-Hub-Signature-256: sha256=<HMAC-SHA256(secret, body)>`; a delivery (`X-GitHub-Delivery`) or signature seen within the window is a replay | package.namespace/package.name (container)|
| generic      | `X-Reconciler-Timestamp` (unix seconds) + `X-Reconciler-Signature: sha256=<HMAC(secret, "<ts>.<body>")>`, 5 min window either way, no replays | repository or image |

Verification has two stages, so that a stranger cannot make the service read
(or wait for) a body: `verify_headers` checks everything the URL and headers
can show (tokens; the form of signatures and timestamps) before the body is
read, and `verify_body` checks the HMAC, refuses replays and parses.
Every secret comparison is constant-time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from . import boundedjson
from .errors import ReconcilerError
from .registry.reference import is_valid_tag, normalize_registry
from .safetext import inert

log = logging.getLogger(__name__)

PROVIDERS = ("distribution", "dockerhub", "gitlab", "harbor", "quay", "github", "generic")
MAX_BODY_BYTES = 1 << 20
REPLAY_WINDOW_S = 300.0
# A generic signature stays valid while its timestamp is within ±window of now,
# i.e. for up to twice the window after it is first seen; remember that long.
REPLAY_MEMORY_S = 2 * REPLAY_WINDOW_S
# Only verified requests are remembered, so only a secret holder can fill the
# guard; the cap still keeps a runaway sender from growing it without limit.
REPLAY_MAX_ENTRIES = 10_000

_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")
# Whole unix seconds, optionally with a fraction: no sign, exponent, hex,
# underscores, `nan` or `inf`, all of which float() would otherwise accept.
_TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_DELIVERY = re.compile(r"[0-9A-Za-z-]{1,64}")


class HookRejected(ReconcilerError):
    """A webhook that is refused; `status` is the HTTP answer (401, 400, 404 or 413;
    408 and 503 when the listener's limits end the read, see service/bodies.py)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RepositoryHint:
    """A repository that may have changed; `registry` is None when the hook does not say."""

    repository: str
    registry: Optional[str] = None
    # When the registry says the push happened (unix seconds) and of which tag, where the provider sends them.
    pushed_at: Optional[float] = None
    tag: Optional[str] = None


@dataclass(frozen=True)
class CheckedHeaders:
    """What `verify_headers` accepted; `verify_body` takes only this, so the
    header checks cannot be skipped.

    For the HMAC providers, `signature` is the claimed signature, `signed_prefix`
    what precedes the body in the signed text, and `replay_keys` the further
    header values (GitHub's delivery ID) that must not repeat.
    """

    provider: str
    signature: Optional[str] = None
    signed_prefix: bytes = b""
    replay_keys: Tuple[str, ...] = ()


class ReplayGuard:
    """Remembers keys (signatures, delivery IDs) for REPLAY_MEMORY_S, at most
    `max_entries` of them (the oldest are dropped first). Thread-safe."""

    def __init__(self, max_entries: int = REPLAY_MAX_ENTRIES, memory_s: float = REPLAY_MEMORY_S) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.memory_s = memory_s
        self._seen: "OrderedDict[str, float]" = OrderedDict()  # key -> first seen, oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def first_time(self, *keys: str, now: float) -> bool:
        """True, and remember every key, when none of `keys` was seen within
        the memory; False (remembering nothing new) otherwise."""
        with self._lock:
            self._forget_before(now - self.memory_s)
            if any(key in self._seen for key in keys):
                return False
            for key in keys:
                self._seen[key] = now
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return True

    def _forget_before(self, cutoff: float) -> None:
        # Entries are in arrival order, so the expired ones are at the front.
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if oldest > cutoff:
                break
            self._seen.popitem(last=False)


# --- stage 1: URL and headers -------------------------------------------------

def _equal(given: Optional[str], expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _signature_header(headers: Mapping[str, str], name: str) -> str:
    given = headers.get(name.lower())
    if not given:
        raise HookRejected(401, f"missing {name}")
    if not _SIGNATURE.fullmatch(given):
        raise HookRejected(401, f"{name} is not \"sha256=\" followed by 64 lowercase hex digits")
    return given


def _timestamp(headers: Mapping[str, str], now: float) -> str:
    """The generic provider's timestamp, refused unless it is plain unix
    seconds within the window on either side of `now`."""
    stamp = headers.get("x-reconciler-timestamp")
    if not stamp:
        raise HookRejected(401, "missing X-Reconciler-Timestamp")
    if not _TIMESTAMP.fullmatch(stamp):
        raise HookRejected(401, "X-Reconciler-Timestamp is not a unix time in seconds (digits, optionally a fraction)")
    value = float(stamp)
    # The pattern already rules out nan and inf; checked again because a
    # non-finite value would slip through every comparison below.
    if not math.isfinite(value) or abs(now - value) > REPLAY_WINDOW_S:
        raise HookRejected(401, f"X-Reconciler-Timestamp is outside the {REPLAY_WINDOW_S:.0f} s window "
                                "(is the sender's clock right?)")
    return stamp


def _check_header_token(provider: str, header: str, what: str, prefix: str = "") -> Callable[..., CheckedHeaders]:
    """A provider that sends the secret, after `prefix`, in a header."""
    def check(secret: str, headers: Mapping[str, str], path_token: Optional[str], now: float) -> CheckedHeaders:
        if not _equal(headers.get(header), prefix + secret):
            raise HookRejected(401, f"missing or wrong {what}")
        return CheckedHeaders(provider)
    return check


def _check_path_token(provider: str) -> Callable[..., CheckedHeaders]:
    def check(secret: str, headers: Mapping[str, str], path_token: Optional[str], now: float) -> CheckedHeaders:
        if not _equal(path_token, secret):
            raise HookRejected(401, "missing or wrong secret in the URL")
        return CheckedHeaders(provider)
    return check


def _check_github(secret: str, headers: Mapping[str, str], path_token: Optional[str], now: float) -> CheckedHeaders:
    signature = _signature_header(headers, "X-Hub-Signature-256")
    delivery = headers.get("x-github-delivery")
    keys: Tuple[str, ...] = ()
    if delivery is not None:
        # Not covered by the signature, so it is only one more replay key; the
        # form check keeps arbitrary text out of the guard.
        if not _DELIVERY.fullmatch(delivery):
            raise HookRejected(401, "X-GitHub-Delivery is not a delivery ID (a GUID)")
        keys = (f"github delivery {delivery}",)
    return CheckedHeaders("github", signature, b"", keys)


def _check_generic(secret: str, headers: Mapping[str, str], path_token: Optional[str], now: float) -> CheckedHeaders:
    signature = _signature_header(headers, "X-Reconciler-Signature")
    stamp = _timestamp(headers, now)
    return CheckedHeaders("generic", signature, stamp.encode() + b".")


_HEADER_CHECKS: Dict[str, Callable[[str, Mapping[str, str], Optional[str], float], CheckedHeaders]] = {
    "distribution": _check_header_token("distribution", "authorization", "Authorization bearer token", "Bearer "),
    "dockerhub": _check_path_token("dockerhub"),
    "quay": _check_path_token("quay"),
    "gitlab": _check_header_token("gitlab", "x-gitlab-token", "X-Gitlab-Token"),
    "harbor": _check_header_token("harbor", "authorization", "Authorization header"),
    "github": _check_github,
    "generic": _check_generic,
}


def verify_headers(provider: str, secret: str, headers: Mapping[str, str], *,
                   path_token: Optional[str] = None, now: Optional[float] = None) -> CheckedHeaders:
    """Stage 1: check what the URL and headers show, before any body is read.

    `headers` must be case-insensitive (as Starlette's are). Token providers
    are fully authenticated here; for the HMAC providers (github, generic) the
    signature header must be well formed and the generic timestamp within the
    window. Raises HookRejected (404 unknown provider, 401 otherwise).
    """
    check = _HEADER_CHECKS.get(provider)
    if check is None:
        raise HookRejected(404, f"unknown webhook provider {provider!r}")
    return check(secret, headers, path_token, time.time() if now is None else now)


# --- stage 2: body ------------------------------------------------------------

def _json(body: bytes) -> Dict[str, Any]:
    try:
        data = boundedjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HookRejected(400, "body is not JSON") from None
    except RecursionError:  # "[[[[…" nested deeper than Python's recursion limit
        raise HookRejected(400, "body nests JSON arrays or objects too deeply") from None
    if not isinstance(data, dict):
        raise HookRejected(400, "body is not a JSON object")
    return data


def _str_at(data: object, *path: str) -> Optional[str]:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data if isinstance(data, str) and data else None


def _at(data: object, *path: str) -> object:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _epoch_time(value: object) -> Optional[float]:
    """A push time given as unix seconds (Docker Hub, Harbor), or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e11:
        return None
    return float(value)


def _iso_time(value: object) -> Optional[float]:
    """A push time given as RFC 3339 (the distribution registry's events, with
    up to nanoseconds), or None when it is not one."""
    if not isinstance(value, str):
        return None
    # RFC 3339 allows a lower-case "t" and "z".
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)", value.strip())
    if match is None:
        return None
    zone = "+00:00" if match.group(4) in ("Z", "z") else match.group(4)
    try:
        when = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}{zone}")
    except ValueError:
        return None
    # The bounds of unix-seconds times: year 1 would break every ISO time written from it.
    return _epoch_time(when.timestamp() + float("0" + (match.group(3) or ".0")))


def _tag_name(value: Optional[str], provider: str) -> Optional[str]:
    """`value` when it is a tag name, else None: a hint whose tag is not one (a
    registry's bug, a body made up) names the whole repository, so the poll
    still happens and nothing is matched or recorded under that string."""
    if value is None or is_valid_tag(value):
        return value
    log.warning("webhook %s: tag %s is not a tag name; the hint names the whole repository", provider,
                inert(repr(value)[:80]))
    return None


def _distribution_events(data: Dict[str, Any], provider: str = "distribution") -> List[RepositoryHint]:
    events = data.get("events")
    if not isinstance(events, list):
        raise HookRejected(400, "expected a notification envelope with an events list")
    hints = []
    for event in events:
        if not isinstance(event, dict) or event.get("action") != "push":
            continue
        repository = _str_at(event, "target", "repository")
        # Only manifest pushes can move a tag; blob pushes come first and say nothing yet.
        media = _str_at(event, "target", "mediaType") or ""
        if repository and ("manifest" in media or "index" in media or _str_at(event, "target", "tag")):
            # No registry: the endpoint is configured per registry, and request.host is
            # whatever name the pusher used (a proxy's, say).
            hints.append(RepositoryHint(repository, pushed_at=_iso_time(event.get("timestamp")),
                                        tag=_tag_name(_str_at(event, "target", "tag"), provider)))
    return hints


def _dockerhub_hints(data: Dict[str, Any]) -> List[RepositoryHint]:
    name = _str_at(data, "repository", "repo_name")
    if not name:
        raise HookRejected(400, "expected repository.repo_name")
    return [RepositoryHint(name if "/" in name else f"library/{name}", "docker.io",
                           pushed_at=_epoch_time(_at(data, "push_data", "pushed_at")),
                           tag=_tag_name(_str_at(data, "push_data", "tag"), "dockerhub"))]


# Quay's repo_push names the tags it moved but sends no push time
# (https://docs.quay.io/guides/notifications.html: "updated_tags", a list; an
# object tag -> digest in older Quay releases), so its deliveries have no push time.
MAX_HINT_TAGS = 100  # more tags in one hook: one hint for the whole repository


def _quay_hints(data: Dict[str, Any]) -> List[RepositoryHint]:
    name = _str_at(data, "repository")
    if not name:
        raise HookRejected(400, "expected repository")
    url = _str_at(data, "docker_url") or ""
    registry = normalize_registry(url.split("/", 1)[0]) if "/" in url else None
    updated = data.get("updated_tags")
    listed = updated if isinstance(updated, list) else list(updated) if isinstance(updated, dict) else []
    tags = list(dict.fromkeys(t for t in listed if isinstance(t, str) and _tag_name(t, "quay")))
    if not tags or len(tags) > MAX_HINT_TAGS:
        return [RepositoryHint(name, registry)]
    return [RepositoryHint(name, registry, tag=tag) for tag in tags]


def _gitlab_hints(data: Dict[str, Any]) -> List[RepositoryHint]:
    # The GitLab container registry's notifications are the distribution
    # registry's (https://docs.gitlab.com/administration/packages/container_registry/
    # #configure-container-registry-notifications): their push time and tag are read
    # there. A project webhook (push, tag, pipeline events; GitLab has no registry
    # event, https://docs.gitlab.com/user/project/integrations/webhook_events/) says
    # nothing of an image: no push time, no tag.
    if "events" in data:
        return _distribution_events(data, "gitlab")
    path = _str_at(data, "project", "path_with_namespace")
    if not path:
        raise HookRejected(400, "expected registry events or project.path_with_namespace")
    return [RepositoryHint(path.lower())]


def _harbor_hints(data: Dict[str, Any]) -> List[RepositoryHint]:
    name = _str_at(data, "event_data", "repository", "repo_full_name") or \
        _str_at(data, "data", "repository", "repo_full_name")
    if not name:
        raise HookRejected(400, "expected event_data.repository.repo_full_name")
    return [RepositoryHint(name, pushed_at=_epoch_time(data.get("occur_at")))]


def _github_hints(data: Dict[str, Any]) -> List[RepositoryHint]:
    package = data.get("package") or data.get("registry_package")
    if not isinstance(package, dict):
        return []  # another event type (ping, push): nothing to poll
    owner = _str_at(package, "namespace") or _str_at(package, "owner", "login")
    name = _str_at(package, "name")
    if not owner or not name:
        raise HookRejected(400, "expected package.namespace (or owner.login) and package.name")
    # The `package` (and older `registry_package`) event's package_version has
    # updated_at/created_at (ISO 8601) and, for a container, container_metadata.tag.name
    # (https://docs.github.com/en/webhooks/webhook-events-and-payloads#package);
    # "updated" is a version that got a tag again, so updated_at is its push.
    version = package.get("package_version")
    pushed = _iso_time(_at(version, "updated_at")) or _iso_time(_at(version, "created_at"))
    return [RepositoryHint(f"{owner}/{name}".lower(), "ghcr.io", pushed_at=pushed,
                           tag=_tag_name(_str_at(version, "container_metadata", "tag", "name"), "github"))]


def _generic_time(value: object) -> Optional[float]:
    """The generic hook's optional `pushed_at`: RFC 3339 or unix seconds. One
    that is neither is ignored with a warning: the hook still makes its poll."""
    if value is None:
        return None
    when = _epoch_time(value) if isinstance(value, (int, float)) else _iso_time(value)
    if when is None:
        log.warning("webhook generic: pushed_at %s is neither an RFC 3339 time (2026-12-02T10:00:05Z) nor unix "
                    "seconds; ignored", inert(repr(value)[:80]))
    return when


def _generic_hints(data: Dict[str, Any]) -> List[RepositoryHint]:
    # Our own format (README, "Webhooks per registry"): optional `pushed_at` and
    # `tag` beside `image` or `repository`; a tag in `image` counts when `tag` is absent.
    pushed = _generic_time(data.get("pushed_at"))
    given_tag = data.get("tag")
    tag = _tag_name(_str_at(data, "tag"), "generic")
    if given_tag is not None and not _str_at(data, "tag"):
        log.warning("webhook generic: tag %s is not a tag name; ignored", inert(repr(given_tag)[:80]))
    image = _str_at(data, "image")
    if image:
        host, _, repo = image.partition("/")
        path, _, given = repo.split("@", 1)[0].partition(":")
        return [RepositoryHint(path, normalize_registry(host), pushed_at=pushed,
                               tag=tag or _tag_name(given or None, "generic"))]
    name = _str_at(data, "repository")
    if not name:
        raise HookRejected(400, "expected repository or image")
    return [RepositoryHint(name, pushed_at=pushed, tag=tag)]


_PARSERS: Dict[str, Callable[[Dict[str, Any]], List[RepositoryHint]]] = {
    "distribution": _distribution_events,
    "dockerhub": _dockerhub_hints,
    "quay": _quay_hints,
    "gitlab": _gitlab_hints,
    "harbor": _harbor_hints,
    "github": _github_hints,
    "generic": _generic_hints,
}

_SIGNATURE_HEADERS = {"github": "X-Hub-Signature-256", "generic": "X-Reconciler-Signature"}


def _verify_signature(checked: CheckedHeaders, secret: str, body: bytes, now: float,
                      replays: Optional[ReplayGuard]) -> None:
    header = _SIGNATURE_HEADERS[checked.provider]
    digest = hmac.new(secret.encode(), checked.signed_prefix + body, hashlib.sha256).hexdigest()
    if not _equal(checked.signature, "sha256=" + digest):
        raise HookRejected(401, f"wrong {header}")
    # Remembered only once verified, so forged requests cannot fill the guard.
    keys = (f"{checked.provider} signature {checked.signature}",) + checked.replay_keys
    if replays is not None and not replays.first_time(*keys, now=now):
        raise HookRejected(401, "this signed request was already received (replay)")


def verify_body(checked: CheckedHeaders, secret: str, body: bytes, *, now: Optional[float] = None,
                replays: Optional[ReplayGuard] = None) -> List[RepositoryHint]:
    """Stage 2: verify the body's signature (HMAC providers), refuse replays,
    and return the repositories the hook hints at.

    Raises HookRejected(413) for a body over MAX_BODY_BYTES, 401 for a wrong
    signature or a replay, and 400 for a body that cannot be understood.
    """
    if len(body) > MAX_BODY_BYTES:
        raise HookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
    if checked.signature is not None:
        _verify_signature(checked, secret, body, time.time() if now is None else now, replays)
    return _PARSERS[checked.provider](_json(body))


def matching_entries(hints: List[RepositoryHint], entries: List[Tuple[int, str, str]]) -> Set[int]:
    """Which watchlist entries (index, registry, repository) the hints name.
    A GitLab project path also matches the repositories below it."""
    out: Set[int] = set()
    for hint in hints:
        for index, registry, repository in entries:
            if hint.registry is not None and hint.registry != registry:
                continue
            if repository == hint.repository or repository.startswith(hint.repository + "/"):
                out.add(index)
    return out
