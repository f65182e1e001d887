"""The watchlist the service tests start the real service with."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple


def write_service_watchlist(path: Path, host: str, images: Sequence[Tuple[str, str, str]], *,
                            listen: Optional[str] = None, webhook: Optional[str] = None) -> Path:
    """Write a watchlist at `path`: publish root and state beside it, hourly
    checks (only a webhook or the first cycle makes one happen in a test), the
    insecure registry `host`, and each (repository, tag, dest) of `images`.
    `listen` adds the service's listener; `webhook` that provider, its token
    from $HOOK_TOKEN."""
    text = f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[defaults]\ninterval = "1h"\n' \
           f'[registries."{host}"]\ninsecure = true\n'
    if listen:
        text += f'[service]\nlisten = "{listen}"\n'
    if webhook:
        text += f'[webhooks.{webhook}]\ntoken_env = "HOOK_TOKEN"\n'
    text += "".join(f'[[image]]\nsource = "{host}/{repository}"\ntags = ["{tag}"]\ndest = "{dest}"\n'
                    for repository, tag, dest in images)
    path.write_text(text)
    return path
