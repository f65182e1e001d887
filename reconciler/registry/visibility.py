"""Whether anyone may pull an image: an anonymous probe of its exact digest.

The client given must carry no credentials: it asks the token service
anonymously (when the registry has one) and then the manifest by digest. A
200 means public; a refusal (401/403 from the registry or its token service)
or a 404 (registries hide private repositories as unknown ones) means that
credentials are needed; anything else (5xx, timeouts, garbage) means that we
cannot tell, which a caller must not take for "public".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import AuthenticationError, NotFoundError, RegistryError
from .client import RegistryClient


@dataclass(frozen=True)
class Visibility:
    """The answer of one probe. `public` is None when it could not be told;
    `reason` says why it is not public (or why unknown), '' when public."""

    public: Optional[bool]
    reason: str = ""


def probe_anonymously(anonymous: RegistryClient, repository: str, digest: str) -> Visibility:
    """Can `anonymous` (a client without credentials) read `repository@digest`?"""
    where = f"{anonymous.registry}/{repository}@{digest[:19]}"
    try:
        head = anonymous.head_manifest(repository, digest)
        if head is None:  # a HEAD refused other than with 404/401 (403, 405): GET says it for sure
            anonymous.get_manifest(repository, digest, expected_digest=digest)
    except AuthenticationError:
        return Visibility(False, f"{where} needs credentials: an anonymous pull is refused")
    except NotFoundError:
        return Visibility(False, f"{where} is not visible without credentials (an anonymous pull by digest finds "
                                 "no such image: a private repository, or a registry that serves tags only)")
    except RegistryError as exc:
        return Visibility(None, f"could not tell whether {where} is public: {exc}")
    return Visibility(True)
