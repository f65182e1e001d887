"""One verdict for one digest: Accepted (by which key, where) or Rejected
(every reason, one line each), from what the registry side found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from .bundle import check_bundle
from .check import Check, FetchBlob
from .policy import SignaturePolicy
from .simple import check_simple


@dataclass(frozen=True)
class Found:
    """The signature objects of one digest, raw, as the registry gave them."""

    sig_where: str  # the `.sig` tag looked up: "reg/app:sha256-ab….sig"
    sig_manifest: Optional[bytes]  # its manifest, None when there is none
    referrers_where: str  # where referrers were listed (the API, or the fallback tag)
    referrers: Sequence[Tuple[str, bytes]] = ()  # (which, manifest) of each referrer opened


@dataclass(frozen=True)
class Accepted:
    """A trusted key signed the digest."""

    fingerprint: str
    where: str


@dataclass(frozen=True)
class Rejected:
    """No valid signature: every reason, one line each."""

    reasons: Tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join(self.reasons)


Verdict = Union[Accepted, Rejected]


def verify(digest: str, repository: str, tag: str, found: Found, policy: SignaturePolicy,
           fetch: FetchBlob) -> Verdict:
    """Whether a key of `policy` signed `digest`, the image `repository`
    (registry/repository) at `tag`. One valid signature suffices; the
    first found wins (simple signing first, as cosign before v3 wrote)."""
    checks: List[Check] = []
    if found.sig_manifest is not None:
        checks.extend(check_simple(found.sig_manifest, found.sig_where, digest, repository, tag, policy, fetch))
    # A bundle's statement names no reference: it cannot pass a rule that
    # asks for a particular one (exact, or another repository).
    names_reference = policy.identity.kind == "exact" or policy.identity.repository is not None
    for where, raw in found.referrers:
        check = check_bundle(raw, where, digest, policy, fetch)
        if check is not None and check.accepted and names_reference:
            check = Check(where, reason=f"{where}: a valid cosign v3 bundle, but a bundle names no image reference, "
                                        f"so identity = \"{policy.identity}\" cannot be checked on it: sign so "
                                        "that a .sig is written (cosign's legacy format), or use identity = "
                                        "\"repository\"")
        if check is not None:
            checks.append(check)
    for check in checks:
        if check.accepted and check.signer is not None:
            return Accepted(check.signer.fingerprint, check.where)
    if not checks:
        sig = "not found" if found.sig_manifest is None else "holds no signature"
        bundles = "no referrers" if not found.referrers else "no bundle among the referrers"
        return Rejected((f"no signature: {found.sig_where} {sig}, {bundles} ({found.referrers_where})",))
    return Rejected(tuple(check.reason for check in checks))
