"""The webhook providers' shared secrets, read at the start.

Kept apart from the web app so that the command line can read them (and
refuse the start) without loading Starlette.
"""

from __future__ import annotations

from typing import Dict

from ..errors import ConfigError
from ..registry.credentials import read_secret
from ..watchlist import WebhookConfig


def load_hook_secrets(webhooks: Dict[str, WebhookConfig], file: str) -> Dict[str, str]:
    """Read every configured webhook secret now, so a missing one stops the start (exit 2).
    Read as registry passwords are (`read_secret`): a file's trailing newline is
    dropped, nothing else."""
    secrets: Dict[str, str] = {}
    for provider, config in webhooks.items():
        where = f"{file}: webhooks.{provider}"
        if not (config.token_file or config.token_env):
            raise ConfigError(f"{where}: give token_env or token_file (the shared secret for this provider)")
        secrets[provider] = read_secret(owner=where, password_file=config.token_file, password_env=config.token_env,
                                        file_key="token_file", env_key="token_env")
        if len(secrets[provider]) < 16:
            raise ConfigError(f"{where}: the secret is shorter than 16 characters; use a long random one")
    return secrets
