"""An entry's signature policy: which keys may sign, and what the signed
identity must say. The words follow containers-policy.json's signedIdentity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import InvalidReferenceError
from ..registry.reference import parse_reference
from .keys import TrustedKey

# `repository`: the signed reference names this repository (cosign writes it
# without a tag, skopeo with one); `exact`: this repository and the tag being
# published; `any`: whatever it says (SingularityCE signs ""); and
# `repository:<repo>`: that other repository (a mirror of a signed original).
IDENTITY_RULES = ("repository", "exact", "any", "repository:<repo>")
DEFAULT_IDENTITY = "repository"


@dataclass(frozen=True)
class IdentityRule:
    """How a signed `docker-reference` must relate to the image published."""

    kind: str  # "repository", "exact" or "any"
    repository: Optional[str] = None  # `repository:<repo>`: the normalized registry/repository

    @classmethod
    def parse(cls, text: str) -> "IdentityRule":
        """Parse the watchlist's `identity`; ValueError says what is expected."""
        if text in ("repository", "exact", "any"):
            return cls(text)
        if text.startswith("repository:"):
            try:
                ref = parse_reference(text[len("repository:"):], default_tag=None)
            except InvalidReferenceError as exc:
                raise ValueError(str(exc)) from None
            if ref.tag or ref.digest:
                raise ValueError(f"{text!r}: give the repository without a tag or digest")
            return cls("repository", ref.name)
        raise ValueError(f"expected one of {', '.join(repr(r) for r in IDENTITY_RULES)}, got {text!r}")

    def __str__(self) -> str:
        return f"repository:{self.repository}" if self.repository else self.kind

    def mismatch(self, signed: str, repository: str, tag: str) -> Optional[str]:
        """Why the signed reference `signed` does not fit the image
        `repository`:`tag` (registry/repository, normalized), or None when it does."""
        if self.kind == "any":
            return None
        want = self.repository or repository
        try:
            ref = parse_reference(signed, default_tag=None) if signed else None
        except InvalidReferenceError:
            ref = None
        if ref is None:
            return f"signed identity {signed!r} is not a repository (rule {self}: expected {want!r})"
        if ref.name != want:
            return f"signed identity {signed!r} ≠ {want!r} (rule {self})"
        if self.kind == "exact" and ref.tag != tag:
            return f"signed identity {signed!r} ≠ '{want}:{tag}' (rule exact)"
        return None


@dataclass(frozen=True)
class SignaturePolicy:
    """`signature = { keys = [...], identity = ... }` of an entry: one of
    `keys` must have signed the exact digest published."""

    keys: Tuple[TrustedKey, ...]
    identity: IdentityRule = IdentityRule(DEFAULT_IDENTITY)

    def key(self, fingerprint: str) -> Optional[TrustedKey]:
        """The configured key with this fingerprint."""
        return next((k for k in self.keys if k.fingerprint == fingerprint), None)

    @property
    def fingerprints(self) -> str:
        """The trusted keys' short fingerprints, for messages."""
        return ", ".join(k.short for k in self.keys)
