"""Trusted public keys: ECDSA P-256 in PKIX PEM (what `cosign generate-key-pair`
writes), identified by the SHA-256 of their SubjectPublicKeyInfo.

Keys come only from configuration: a key carried by a signature object is
never used (cosign GHSA-fx35-mq7g-6g98: a bare key in a bundle bypassed the
checks). Only P-256 with SHA-256 is accepted: the cosign spec requires it,
and the hash is not stored in a signature, so the verifier must pin it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# A P-256 signature in IEEE P1363 form: r and s, 32 bytes each.
_P1363_SIZE = 64


class KeyFormatError(ValueError):
    """A key that is not a PEM ECDSA P-256 public key (the message says what it is)."""


@dataclass(frozen=True)
class TrustedKey:
    """One configured public key."""

    source: str  # where it was configured (a file path), for messages
    fingerprint: str  # hex SHA-256 of the DER SubjectPublicKeyInfo
    key: ec.EllipticCurvePublicKey = field(repr=False, compare=False)

    @property
    def short(self) -> str:
        """The fingerprint's first 16 hex digits, for one-line messages."""
        return self.fingerprint[:16]

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` (DER, or raw r‖s as sigstore also accepts) is
        this key's ECDSA-SHA256 signature of `data`."""
        candidates = [signature]
        if len(signature) == _P1363_SIZE:
            half = _P1363_SIZE // 2
            r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            candidates.append(encode_dss_signature(r, s))
        for candidate in candidates:
            try:
                self.key.verify(candidate, data, ec.ECDSA(hashes.SHA256()))
                return True
            except (InvalidSignature, ValueError):
                continue
        return False


def spki_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the key's DER SubjectPublicKeyInfo (as
    `openssl pkey -pubin -outform DER | sha256sum` prints it)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_public_key(pem: bytes, source: str) -> TrustedKey:
    """Parse one PEM public key; KeyFormatError says why it is refused."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        if b"PRIVATE KEY" in pem:
            raise KeyFormatError("a private key, not a public one (give the .pub file cosign wrote)") from None
        raise KeyFormatError(f"not a PEM public key ({exc})") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for e.g. DSA variants
        raise KeyFormatError(f"not a supported public key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = type(key).__name__.lstrip("_").replace("PublicKey", "") or "this"
        raise KeyFormatError(f"an {kind} key; only ECDSA P-256 keys are supported (cosign generate-key-pair)")
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError(f"an ECDSA key on {key.curve.name}; only P-256 (secp256r1) is supported")
    return TrustedKey(source, spki_fingerprint(key), key)
