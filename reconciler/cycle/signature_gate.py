"""The signature gate: between the plan and the fetch stage, every planned
change whose entry has a signature policy is verified against the digest the
plan computed from the bytes it read, before any layer is downloaded.

Fail closed: an image without a valid signature by a trusted key fails alone
(its reason names the image, the digest and where we looked); its published
revision stays, and since a failure never records the digest as seen, the
next poll resolves it again and checks anew (CI usually pushes the
signature after the image). A multi-arch tag needs the signature on what the
tag points at (the index, which `cosign sign <tag>` signs); one on the
chosen platform's manifest (`cosign sign --recursive`) is accepted too, and
the outcome records which.

Lookups go to the registry: the `sha256-<hex>.sig` tag first (one manifest
GET and one blob GET per signature), the referrers (API, else the
`sha256-<hex>` fallback index) only when that did not verify.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

from ..errors import ReconcilerError, SignatureError
from ..registry.attachments import digest_tag
from ..registry.client import RegistryClient
from ..signatures.bundle import BUNDLE_TYPE
from ..signatures.check import MAX_SIGNATURE_BLOB
from ..signatures.policy import SignaturePolicy
from ..signatures.verify import Accepted, Found, Rejected, Verdict, verify
from .outcome import ImageOutcome, Registries, describe_failure, traceback_for
from .plan import Plan

log = logging.getLogger(__name__)

# Verifications in flight (each registry client also bounds its own requests).
GATE_WORKERS = 8

# (source, digest, tag or "", policy): one verdict per cycle, shared by the
# platforms of a tag and, unless the rule is `exact`, by tags of one digest.
_Key = Tuple[str, str, str, SignaturePolicy]


def check_signatures(plan: Plan, registries: Registries) -> None:
    """Verify the signature of every planned change whose entry has a policy;
    record the signer on the accepted ones and fail the others."""
    gated = [o for o in plan.changes if o.entry.signature is not None and o.resolved is not None]
    if not gated:
        return
    verdicts: Dict[_Key, Verdict] = {}
    with ThreadPoolExecutor(max_workers=GATE_WORKERS) as pool:
        # What each tag points at first; a platform manifest only where that failed.
        for wanted in (_tag_digests, _platform_digests):
            keys = sorted({key for o in gated for key in wanted(o, verdicts)}, key=lambda k: k[:3])
            for key, verdict in zip(keys, pool.map(lambda k: _verdict(registries, k), keys)):
                verdicts[key] = verdict
    for outcome in gated:
        _settle(outcome, verdicts)


def _key(outcome: ImageOutcome, digest: str) -> _Key:
    policy = outcome.entry.signature
    assert policy is not None
    # Only the `exact` rule reads the tag: otherwise tags sharing a digest share its verdict.
    return outcome.entry.source.name, digest, outcome.tag if policy.identity.kind == "exact" else "", policy


def _tag_digests(outcome: ImageOutcome, verdicts: Dict[_Key, Verdict]) -> List[_Key]:
    assert outcome.resolved is not None
    return [_key(outcome, outcome.resolved.tag_digest)]


def _platform_digests(outcome: ImageOutcome, verdicts: Dict[_Key, Verdict]) -> List[_Key]:
    assert outcome.resolved is not None
    tag_digest, manifest_digest = outcome.resolved.tag_digest, outcome.resolved.manifest_digest
    if manifest_digest == tag_digest or isinstance(verdicts[_key(outcome, tag_digest)], Accepted):
        return []
    return [_key(outcome, manifest_digest)]


def _settle(outcome: ImageOutcome, verdicts: Dict[_Key, Verdict]) -> None:
    assert outcome.resolved is not None
    tag_digest, manifest_digest = outcome.resolved.tag_digest, outcome.resolved.manifest_digest
    on_tag = verdicts[_key(outcome, tag_digest)]
    on_platform = verdicts.get(_key(outcome, manifest_digest)) if manifest_digest != tag_digest else None
    for verdict, what in ((on_tag, ""), (on_platform, f" (on its {outcome.platform} manifest)")):
        if isinstance(verdict, Accepted):
            outcome.signed_by, outcome.signed_where = verdict.fingerprint, verdict.where + what
            log.info("%s: signature verified: key %s, %s%s", outcome.name, verdict.fingerprint[:16],
                     verdict.where, what)
            return
    index = " (the tag's index)" if manifest_digest != tag_digest else ""
    reason = f"not published: no valid signature on {tag_digest}{index}: {on_tag}"
    if isinstance(on_platform, Rejected):
        reason += f"; nor on its {outcome.platform} manifest {manifest_digest}: {on_platform}"
    outcome.refuse("signature", SignatureError(reason + "; the published revision stays, checked again at the "
                                                        "next poll"))


def _verdict(registries: Registries, key: _Key) -> Verdict:
    """Look up and verify the signatures of one digest; a registry error refuses it (fail closed)."""
    name, digest, tag, policy = key
    host, _, repository = name.partition("/")
    client = registries.client(host)
    blobs: Dict[str, bytes] = {}

    def fetch(blob_digest: str, size: int) -> bytes:
        if blob_digest not in blobs:  # the second pass re-reads what the first fetched
            blobs[blob_digest] = client.fetch_small_blob(repository, blob_digest, size, MAX_SIGNATURE_BLOB)
        return blobs[blob_digest]

    sig_where = f"{name}:{digest_tag(digest, 'sig')[:19]}….sig"
    try:
        sig = client.get_attachment(repository, digest_tag(digest, "sig"))
        sig_raw = sig.raw if sig is not None else None
        first = verify(digest, name, tag, Found(sig_where, sig_raw, "not looked up"), policy, fetch)
        if isinstance(first, Accepted):
            return first
        listing, referrers = _referrers(client, name, repository, digest)
        return verify(digest, name, tag, Found(sig_where, sig_raw, listing, referrers), policy, fetch)
    except ReconcilerError as exc:
        return Rejected((f"cannot read its signatures from the registry: {describe_failure(exc)}",))
    except Exception as exc:  # noqa: BLE001 - one image's failure is never the cycle's; fail closed
        log.error("%s@%s: checking its signature failed", name, digest[:19], exc_info=traceback_for(exc))
        return Rejected((f"cannot check its signatures: {describe_failure(exc)}",))


def _referrers(client: RegistryClient, name: str, repository: str, digest: str) -> Tuple[str, List[Tuple[str, bytes]]]:
    """Where the referrers were listed, and each one that may be a bundle, opened."""
    listing = client.list_referrers(repository, digest)
    opened = []
    for referrer in listing.referrers:
        if referrer.artifact_type not in (None, BUNDLE_TYPE):
            continue  # an SBOM, an attestation: not a signature
        manifest = client.get_manifest(repository, referrer.digest)
        opened.append((f"referrer {name}@{referrer.digest[:19]}", manifest.raw))
    where = listing.source.replace(f"{repository}:", f"{name}:")
    return where, opened

