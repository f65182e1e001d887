"""Signing as cosign does, for tests: P-256 keys made here, simple-signing
`.sig` manifests and v3 Sigstore bundles (DSSE in-toto) as OCI referrers."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.signatures.bundle import BUNDLE_TYPE, COSIGN_PREDICATE, INTOTO_PAYLOAD, STATEMENT_TYPE, pae
from reconciler.signatures.simple import COSIGN_TYPE, SIGNATURE_ANNOTATION, SIMPLE_SIGNING

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Signer:
    """A cosign key pair."""

    curve: ec.EllipticCurve = field(default_factory=ec.SECP256R1)

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(self.curve)

    @property
    def pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def fingerprint(self) -> str:
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def payload(digest: str, reference: str, kind: str = COSIGN_TYPE) -> bytes:
    """A simple-signing payload as cosign writes it."""
    return compact({"critical": {"identity": {"docker-reference": reference},
                                 "image": {"docker-manifest-digest": digest}, "type": kind}, "optional": None})


@dataclass
class Artifact:
    """A manifest to push and the blobs it needs."""

    manifest: bytes
    blobs: Dict[str, bytes]
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def fetch(self, digest: str, size: int) -> bytes:
        return self.blobs[digest]


def sig_manifest(layers: List[Tuple[bytes, Optional[str], str]]) -> Artifact:
    """A `.sig` manifest: one layer per (payload, base64 signature or None, media type)."""
    config = compact({"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}, "config": {}})
    blobs = {sha256(config): config}
    descriptors = []
    for data, signature, media_type in layers:
        blobs[sha256(data)] = data
        layer: Dict[str, object] = {"mediaType": media_type, "size": len(data), "digest": sha256(data)}
        if signature is not None:
            layer["annotations"] = {SIGNATURE_ANNOTATION: signature}
        descriptors.append(layer)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                           "digest": sha256(config)}, "layers": descriptors}
    return Artifact(compact(manifest), blobs)


def signed(signer: Signer, digest: str, reference: str) -> Artifact:
    """The `.sig` manifest cosign writes for one signature of `digest`."""
    data = payload(digest, reference)
    return sig_manifest([(data, base64.b64encode(signer.sign(data)).decode(), SIMPLE_SIGNING)])


def statement(digest: str, predicate_type: str = COSIGN_PREDICATE, name: str = "") -> bytes:
    return compact({"_type": STATEMENT_TYPE, "subject": [{"name": name, "digest": {"sha256": digest.split(":")[1]}}],
                    "predicateType": predicate_type, "predicate": {}})


def bundle(signer: Signer, body: bytes, payload_type: str = INTOTO_PAYLOAD) -> bytes:
    """A v0.3 bundle with a DSSE envelope over `body`, key-only (a hint, no certificate)."""
    signature = signer.sign(pae(payload_type, body))
    return compact({"mediaType": BUNDLE_TYPE,
                    "verificationMaterial": {"publicKey": {"hint": base64.b64encode(
                        bytes.fromhex(signer.fingerprint)).decode()}, "tlogEntries": []},
                    "dsseEnvelope": {"payload": base64.b64encode(body).decode(), "payloadType": payload_type,
                                     "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}]}})


def referrer(bundle_bytes: bytes, subject_digest: str, subject_size: int) -> Artifact:
    """The OCI 1.1 referrer manifest cosign v3 pushes for a bundle."""
    empty = b"{}"
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_TYPE,
                "config": {"mediaType": EMPTY_JSON, "size": 2, "digest": sha256(empty)},
                "layers": [{"mediaType": BUNDLE_TYPE, "size": len(bundle_bytes), "digest": sha256(bundle_bytes)}],
                "subject": {"mediaType": OCI_MANIFEST, "size": subject_size, "digest": subject_digest},
                "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                                "dev.sigstore.bundle.predicateType": COSIGN_PREDICATE}}
    return Artifact(compact(manifest), {sha256(empty): empty, sha256(bundle_bytes): bundle_bytes})


def fallback_index(referrers: List[Artifact]) -> Artifact:
    """The `sha256-<hex>` index go-containerregistry writes without a referrers API."""
    entries = [{"mediaType": OCI_MANIFEST, "digest": r.digest, "size": len(r.manifest), "artifactType": BUNDLE_TYPE}
               for r in referrers]
    return Artifact(compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}), {}, OCI_INDEX)
