"""cosign v3 signatures: a Sigstore bundle (v0.3) holding a DSSE envelope
with an in-toto statement, stored as an OCI 1.1 referrer of the image.

The referrer manifest's artifactType is the bundle type, its one layer the
bundle. The DSSE signature covers the pre-authentication encoding (PAE) of
the payload type and the raw payload bytes; it is verified with the
configured keys first (a key or certificate in the bundle is never used),
and only then is the statement parsed: its subject must hold the sha256 of
the digest we publish, its predicateType cosign's signing predicate. The
statement names no signed repository that cosign checks: the digest binds
them, which the default identity rule (`repository`) accepts; a rule that
asks for a particular reference (`exact`, `repository:<repo>`) refuses them
(verify.py).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .. import boundedjson
from .check import Check, FetchBlob, decode_base64, read_blob, short_digest
from .policy import SignaturePolicy

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
INTOTO_PAYLOAD = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
COSIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
# A DSSE envelope lists a few signatures at most; more is not a signature object.
MAX_ENVELOPE_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _json(data: bytes, what: str) -> Dict[str, Any]:
    try:
        parsed = boundedjson.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"{what} is not JSON") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{what} is not a JSON object")
    return parsed


def check_bundle(raw: bytes, where: str, digest: str, policy: SignaturePolicy, fetch: FetchBlob) -> Optional[Check]:
    """The referrer manifest `raw` checked as a signature of `digest`; None
    when it is not a Sigstore bundle (another kind of referrer)."""
    try:
        manifest = _json(raw, "the referrer manifest")
    except ValueError as exc:
        return Check(where, reason=f"{where}: {exc}")
    config = manifest.get("config")
    config = config if isinstance(config, dict) else {}
    if BUNDLE_TYPE not in (manifest.get("artifactType"), config.get("mediaType")):
        return None
    subject = manifest.get("subject")
    if not isinstance(subject, dict) or subject.get("digest") != digest:
        named = subject.get("digest") if isinstance(subject, dict) else None
        return Check(where, reason=f"{where}: a bundle for {short_digest(str(named))}, not {short_digest(digest)}")
    layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)
              and layer.get("mediaType") == BUNDLE_TYPE]
    if len(layers) != 1 or not isinstance(layers[0].get("digest"), str) or not isinstance(layers[0].get("size"), int):
        return Check(where, reason=f"{where}: expected one bundle layer, found {len(layers)}")
    try:
        bundle = _json(read_blob(fetch, layers[0]["digest"], layers[0]["size"], "its bundle"), "the bundle")
        return _check_envelope(bundle, where, digest, policy)
    except ValueError as exc:
        return Check(where, reason=f"{where}: {exc}")


def _check_envelope(bundle: Dict[str, Any], where: str, digest: str, policy: SignaturePolicy) -> Check:
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise ValueError("the bundle holds no DSSE envelope (a message signature is not an image signature)")
    payload_type = envelope.get("payloadType")
    if payload_type != INTOTO_PAYLOAD:
        raise ValueError(f"payloadType is {str(payload_type)[:60]!r}, not {INTOTO_PAYLOAD!r}")
    payload = decode_base64(envelope.get("payload"), "its DSSE payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not 0 < len(signatures) <= MAX_ENVELOPE_SIGNATURES:
        raise ValueError("its DSSE envelope has no signatures (or too many)")
    signed = pae(payload_type, payload)
    signer = None
    for entry in signatures:
        sig = decode_base64(entry.get("sig") if isinstance(entry, dict) else None, "a DSSE signature")
        signer = next((key for key in policy.keys if key.verifies(sig, signed)), None)
        if signer:
            break
    if signer is None:
        return Check(where, reason=f"{where}: signed by an unknown key; trusted: {policy.fingerprints}")
    try:
        subjects = _statement_subjects(_json(payload, "the statement"))
    except ValueError as exc:
        return Check(where, signer, f"{where}: signature (key {signer.short}) over a malformed statement: {exc}")
    if digest.split(":", 1)[1] not in subjects:
        named = ", ".join(short_digest("sha256:" + s) for s in subjects) or "no sha256 subject"
        return Check(where, signer, f"{where}: signature (key {signer.short}) names {named}, "
                                    f"not {short_digest(digest)}")
    return Check(where, signer)


def _statement_subjects(statement: Dict[str, Any]) -> List[str]:
    """The sha256 hex digests an in-toto statement's subjects name."""
    if statement.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"_type is {str(statement.get('_type'))[:60]!r}, not {STATEMENT_TYPE!r}")
    if statement.get("predicateType") != COSIGN_PREDICATE:
        raise ValueError(f"predicateType is {str(statement.get('predicateType'))[:80]!r}, "
                         f"not {COSIGN_PREDICATE!r} (an attestation, not a signature)")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise ValueError("no subject")
    found = []
    for subject in subjects:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        value = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(value, str):
            found.append(value)
    if not found:
        raise ValueError("no subject with a sha256 digest")
    return found
