"""Registry webhooks: verify the sender, then extract which repositories may
have changed. A hook is only a hint to poll sooner: its tags and digests are
never trusted, and the poll itself verifies everything.

| provider     | authentication                                              | repositories from                         |
|--------------|-------------------------------------------------------------|-------------------------------------------|
| distribution | `Authorization: Bearer <token>` (set in the registry config) | events[].target.repository (push events)  |
| dockerhub    | the secret token as the last URL path segment                | repository.repo_name                      |
| gitlab       | `X-Gitlab-Token: <token>`                                    | events[] (registry notifications) or project.path_with_namespace |
| harbor       | `Authorization: <token>` (Harbor's "Auth Header")            | event_data.repository.repo_full_name      |
| quay         | the secret token as the last URL path segment                | repository                                |
| github       | `X-Hub-Signature-256: sha256=<HMAC-SHA256(secret, body)>`    | package.namespace/package.name (container)|
| generic      | `X-Reconciler-Timestamp` + `X-Reconciler-Signature: sha256=<HMAC(secret, "<ts>.<body>")>`, 5 min window, no replays | repository or image |

Every secret comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Set, Tuple

from .errors import ReconcilerError
from .registry.reference import normalize_registry

PROVIDERS = ("distribution", "dockerhub", "gitlab", "harbor", "quay", "github", "generic")
MAX_BODY_BYTES = 1 << 20
REPLAY_WINDOW_S = 300.0


class HookRejected(ReconcilerError):
    """A webhook that is refused; `status` is the HTTP answer (401 or 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RepositoryHint:
    """A repository that may have changed; `registry` is None when the hook does not say."""

    repository: str
    registry: Optional[str] = None


def _json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HookRejected(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise HookRejected(400, "body is not a JSON object")
    return data


def _equal(given: Optional[str], expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _str_at(data: object, *path: str) -> Optional[str]:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data if isinstance(data, str) and data else None


def _distribution_events(data: dict) -> List[RepositoryHint]:
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
            hints.append(RepositoryHint(repository))
    return hints


class ReplayGuard:
    """Remembers signatures seen within the replay window. Thread-safe."""

    def __init__(self) -> None:
        self._seen: Dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, signature: str, now: float) -> bool:
        with self._lock:
            self._seen = {s: t for s, t in self._seen.items() if t > now - 2 * REPLAY_WINDOW_S}
            if signature in self._seen:
                return False
            self._seen[signature] = now
            return True


def parse_hook(provider: str, secret: str, headers: Mapping[str, str], body: bytes, *,
               path_token: Optional[str] = None, now: Optional[float] = None,
               replays: Optional[ReplayGuard] = None) -> List[RepositoryHint]:
    """Verify a webhook and return the repositories it hints at.

    `headers` must be case-insensitive (as Starlette's are). Raises
    HookRejected(401) for a bad or missing secret/signature and
    HookRejected(400) for a body that cannot be understood.
    """
    now = time.time() if now is None else now
    if len(body) > MAX_BODY_BYTES:
        raise HookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
    if provider == "distribution":
        if not _equal(headers.get("authorization"), f"Bearer {secret}"):
            raise HookRejected(401, "missing or wrong Authorization bearer token")
        return _distribution_events(_json(body))
    if provider in ("dockerhub", "quay"):
        if not _equal(path_token, secret):
            raise HookRejected(401, "missing or wrong secret in the URL")
        data = _json(body)
        if provider == "dockerhub":
            name = _str_at(data, "repository", "repo_name")
            if not name:
                raise HookRejected(400, "expected repository.repo_name")
            return [RepositoryHint(name if "/" in name else f"library/{name}", "docker.io")]
        name = _str_at(data, "repository")
        if not name:
            raise HookRejected(400, "expected repository")
        url = _str_at(data, "docker_url") or ""
        return [RepositoryHint(name, normalize_registry(url.split("/", 1)[0]) if "/" in url else None)]
    if provider == "gitlab":
        if not _equal(headers.get("x-gitlab-token"), secret):
            raise HookRejected(401, "missing or wrong X-Gitlab-Token")
        data = _json(body)
        if "events" in data:
            return _distribution_events(data)
        path = _str_at(data, "project", "path_with_namespace")
        if not path:
            raise HookRejected(400, "expected registry events or project.path_with_namespace")
        return [RepositoryHint(path.lower())]
    if provider == "harbor":
        if not _equal(headers.get("authorization"), secret):
            raise HookRejected(401, "missing or wrong Authorization header")
        data = _json(body)
        name = _str_at(data, "event_data", "repository", "repo_full_name") or \
            _str_at(data, "data", "repository", "repo_full_name")
        if not name:
            raise HookRejected(400, "expected event_data.repository.repo_full_name")
        return [RepositoryHint(name)]
    if provider == "github":
        given = headers.get("x-hub-signature-256") or ""
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not _equal(given, expected):
            raise HookRejected(401, "missing or wrong X-Hub-Signature-256")
        data = _json(body)
        package = data.get("package") or data.get("registry_package")
        if not isinstance(package, dict):
            return []  # another event type (ping, push): nothing to poll
        owner = _str_at(package, "namespace") or _str_at(package, "owner", "login")
        name = _str_at(package, "name")
        if not owner or not name:
            raise HookRejected(400, "expected package.namespace (or owner.login) and package.name")
        return [RepositoryHint(f"{owner}/{name}".lower(), "ghcr.io")]
    if provider == "generic":
        stamp = headers.get("x-reconciler-timestamp") or ""
        given = headers.get("x-reconciler-signature") or ""
        expected = "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not _equal(given, expected):
            raise HookRejected(401, "missing or wrong X-Reconciler-Signature")
        try:
            age = abs(now - float(stamp))
        except ValueError:
            raise HookRejected(401, "X-Reconciler-Timestamp is not a unix time") from None
        if age > REPLAY_WINDOW_S:
            raise HookRejected(401, f"X-Reconciler-Timestamp is outside the {REPLAY_WINDOW_S:.0f} s window")
        if replays is not None and not replays.first_time(given, now):
            raise HookRejected(401, "this signed request was already received (replay)")
        data = _json(body)
        image = _str_at(data, "image")
        if image:
            host, _, repo = image.partition("/")
            return [RepositoryHint(repo.split(":", 1)[0].split("@", 1)[0], normalize_registry(host))]
        name = _str_at(data, "repository")
        if not name:
            raise HookRejected(400, "expected repository or image")
        return [RepositoryHint(name)]
    raise HookRejected(404, f"unknown webhook provider {provider!r}")


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

