"""Registry credentials: from the watchlist, or from Docker's `config.json`.

Secrets live only in `Credentials` objects, whose repr hides them; nothing
here logs or raises a message containing one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import CredentialError
from .reference import DOCKER_HUB, DOCKER_HUB_CREDENTIAL_KEY, normalize_registry

log = logging.getLogger(__name__)

_HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HELPER_TIMEOUT_S = 30


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity (refresh) token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @property
    def identity(self) -> str:
        """A non-secret key that tells credentials apart (for caches)."""
        kind = "identitytoken" if self.identity_token else "password"
        return f"{kind}:{self.username}"

    def basic_header(self) -> str:
        """The value of an `Authorization: Basic` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _credential_keys(registry: str) -> List[str]:
    """Keys under which config.json may hold a registry's credentials."""
    registry = normalize_registry(registry)
    if registry == DOCKER_HUB:
        return [DOCKER_HUB_CREDENTIAL_KEY, "index.docker.io", "docker.io", "registry-1.docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]


def _normalize_key(key: str) -> str:
    host = re.sub(r"^https?://", "", key).split("/", 1)[0]
    return normalize_registry(host)


class DockerConfig:
    """Credentials from a Docker client `config.json`.

    Reads `auths` (base64 `auth`, `username`/`password`, `identitytoken`),
    `credHelpers` and `credsStore` (running `docker-credential-<name> get`).
    The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    """

    def __init__(self, path: Optional[Path] = None, env: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if env is None else env
        if path is None:
            base = env.get("DOCKER_CONFIG")
            path = Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"
        self.path = path
        self._data: Optional[Dict[str, Any]] = None

    def _load(self) -> Dict[str, Any]:
        if self._data is None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                self._data = {}
                return self._data
            except OSError as exc:
                raise CredentialError(f"{self.path}: cannot read Docker config: {exc.strerror}") from None
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CredentialError(f"{self.path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            if not isinstance(data, dict):
                raise CredentialError(f"{self.path}: expected a JSON object")
            self._data = data
        return self._data

    def lookup(self, registry: str) -> Optional[Credentials]:
        """The credentials for `registry`, or None when none are configured."""
        data = self._load()
        registry = normalize_registry(registry)
        helpers = data.get("credHelpers") or {}
        for key, helper in helpers.items():
            if _normalize_key(key) == registry:
                return self._from_helper(helper, key)
        auths = data.get("auths") or {}
        for key, entry in auths.items():
            if _normalize_key(key) == registry and isinstance(entry, dict):
                creds = self._from_auth_entry(entry, key)
                if creds:
                    return creds
        store = data.get("credsStore")
        if store:
            for key in _credential_keys(registry):
                creds = self._from_helper(store, key)
                if creds:
                    return creds
        return None

    def _from_auth_entry(self, entry: Dict[str, Any], key: str) -> Optional[Credentials]:
        identity = entry.get("identitytoken") or ""
        username = entry.get("username") or ""
        password = entry.get("password") or ""
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise CredentialError(f"{self.path}: auths[{key!r}].auth is not base64 of 'user:password'") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise CredentialError(f"{self.path}: auths[{key!r}].auth is not base64 of 'user:password'")
        if identity:
            return Credentials(username=username, identity_token=identity)
        if username or password:
            return Credentials(username=username, password=password)
        return None

    def _from_helper(self, helper: str, server: str) -> Optional[Credentials]:
        if not _HELPER_NAME.match(str(helper)):
            raise CredentialError(f"{self.path}: credential helper name {helper!r} is not a plain program name")
        program = f"docker-credential-{helper}"
        try:
            proc = subprocess.run(
                [program, "get"], input=server.encode(), capture_output=True, timeout=_HELPER_TIMEOUT_S
            )
        except FileNotFoundError:
            raise CredentialError(f"{self.path}: credential helper {program} is not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise CredentialError(f"{program} get did not answer within {_HELPER_TIMEOUT_S}s for {server}") from None
        if proc.returncode != 0:
            # The helper's stderr may name the server but never holds the secret.
            message = proc.stdout.decode(errors="replace").strip() or proc.stderr.decode(errors="replace").strip()
            if "credentials not found" in message.lower():
                return None
            raise CredentialError(f"{program} get failed for {server} (exit {proc.returncode}): {message[:200]}")
        try:
            answer = json.loads(proc.stdout)
            username, secret = answer.get("Username", ""), answer.get("Secret", "")
        except (ValueError, AttributeError):
            raise CredentialError(f"{program} get returned something other than a JSON object for {server}") from None
        if username == "<token>":
            return Credentials(identity_token=secret)
        return Credentials(username=username, password=secret)


def read_secret(*, owner: str, password_file: Optional[str] = None, password_env: Optional[str] = None,
                env: Optional[Mapping[str, str]] = None, file_key: str = "password_file",
                env_key: str = "password_env") -> str:
    """Read a secret from a file (its trailing line break dropped, nothing
    else) or an environment variable (as it is). The one reader of every
    configured secret: registry passwords and webhook tokens.

    `owner` names the configuration entry for error messages
    (e.g. `watchlist.toml: registries."ghcr.io"`), `file_key` and `env_key`
    the keys that name the file and the variable there.
    """
    env = os.environ if env is None else env
    if password_file:
        try:
            return Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CredentialError(f"{owner}.{file_key}: cannot read {password_file}: {exc.strerror}") from None
    if password_env:
        value = env.get(password_env)
        if value is None:
            raise CredentialError(f"{owner}.{env_key}: environment variable {password_env} is not set")
        return value
    raise CredentialError(f"{owner}: username given without {file_key} or {env_key}")


@dataclass
class CredentialStore:
    """Where the client looks for credentials: explicit ones first, then Docker's config."""

    explicit: Dict[str, Credentials] = field(default_factory=dict)
    docker_config: Optional[DockerConfig] = None

    def lookup(self, registry: str) -> Optional[Credentials]:
        """Credentials for `registry` (a host[:port]), or None for anonymous access."""
        registry = normalize_registry(registry)
        if registry in self.explicit:
            return self.explicit[registry]
        if self.docker_config is not None:
            return self.docker_config.lookup(registry)
        return None
