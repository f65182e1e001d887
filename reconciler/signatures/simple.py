"""cosign "simple signing": the OCI manifest tagged `sha256-<hex>.sig`.

Each layer of type simplesigning is a JSON payload, its signature (base64
DER) in the `dev.cosignproject.cosign/signature` annotation. The signature is
verified over the payload's raw bytes first; only a verified payload is
parsed, strictly, and must name the digest we publish and an identity the
rule accepts. Layers of other types are other attachments and are skipped.
"""

from __future__ import annotations

from typing import Any, Dict, List

from .. import boundedjson
from ..errors import ReconcilerError
from ..registry.manifest import OCI_MANIFEST, ImageManifest, parse_manifest
from .check import Check, FetchBlob, decode_base64, read_blob, short_digest
from .policy import SignaturePolicy

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
# Signatures read from one `.sig` (each costs a blob request); cosign appends
# one per `cosign sign`, so a real one holds a few.
MAX_SIGNATURES = 64


def check_simple(raw: bytes, where: str, digest: str, repository: str, tag: str, policy: SignaturePolicy,
                 fetch: FetchBlob) -> List[Check]:
    """Every simple-signing layer of the `.sig` manifest `raw` checked for
    `digest` (of the image `repository`:`tag`); [] when it holds none."""
    try:
        manifest = parse_manifest(raw, None)
    except ReconcilerError as exc:
        return [Check(where, reason=f"{where} is not a signature manifest: {exc}")]
    if not isinstance(manifest, ImageManifest) or manifest.media_type != OCI_MANIFEST:
        return [Check(where, reason=f"{where} is a {manifest.media_type}, not an OCI image manifest")]
    checks: List[Check] = []
    for i, layer in enumerate(manifest.layers):
        if layer.media_type != SIMPLE_SIGNING:
            continue  # another attachment (an SBOM, a text note): not a signature
        if len(checks) == MAX_SIGNATURES:
            checks.append(Check(where, reason=f"{where}: more than {MAX_SIGNATURES} signatures; the others were "
                                              "not read"))
            break
        check = _check_layer(f"{where} layer {i}", layer.digest, layer.size, layer.annotations, digest,
                             repository, tag, policy, fetch)
        checks.append(check)
        if check.accepted:
            break  # one valid signature suffices: read no further
    return checks


def _check_layer(where: str, blob_digest: str, size: int, annotations: Dict[str, str], digest: str,
                 repository: str, tag: str, policy: SignaturePolicy, fetch: FetchBlob) -> Check:
    try:
        signature = decode_base64(annotations.get(SIGNATURE_ANNOTATION), f"its {SIGNATURE_ANNOTATION} annotation")
        payload = read_blob(fetch, blob_digest, size, "its payload")
    except ValueError as exc:
        return Check(where, reason=f"{where}: {exc}")
    signer = next((key for key in policy.keys if key.verifies(signature, payload)), None)
    if signer is None:
        return Check(where, reason=f"{where}: signed by an unknown key; trusted: {policy.fingerprints}")
    try:
        claim = _parse_payload(payload)
    except ValueError as exc:
        return Check(where, signer, f"{where}: signature (key {signer.short}) over a malformed payload: {exc}")
    named = claim["critical"]["image"]["docker-manifest-digest"]
    if named != digest:
        return Check(where, signer, f"{where}: signature (key {signer.short}) names {short_digest(named)}, "
                                    f"not {short_digest(digest)}")
    mismatch = policy.identity.mismatch(claim["critical"]["identity"]["docker-reference"], repository, tag)
    if mismatch:
        return Check(where, signer, f"{where}: signature (key {signer.short}): {mismatch}")
    return Check(where, signer)


def _parse_payload(payload: bytes) -> Dict[str, Any]:
    """The payload, parsed strictly (as containers/image does); ValueError says what is wrong."""
    try:
        data = boundedjson.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("critical"), dict):
        raise ValueError("no critical section")
    critical = data["critical"]
    if set(critical) != {"identity", "image", "type"}:
        raise ValueError(f"critical holds {sorted(critical)}, not identity, image and type")
    if critical["type"] != COSIGN_TYPE:
        raise ValueError(f"critical.type is {str(critical['type'])[:60]!r}, not {COSIGN_TYPE!r}")
    image, identity = critical["image"], critical["identity"]
    if not isinstance(image, dict) or set(image) != {"docker-manifest-digest"} or \
            not isinstance(image["docker-manifest-digest"], str):
        raise ValueError("critical.image must hold only docker-manifest-digest, a string")
    if not isinstance(identity, dict) or set(identity) != {"docker-reference"} or \
            not isinstance(identity["docker-reference"], str):
        raise ValueError("critical.identity must hold only docker-reference, a string")
    if "optional" in data and data["optional"] is not None and not isinstance(data["optional"], dict):
        raise ValueError("optional is neither an object nor null")
    return data
