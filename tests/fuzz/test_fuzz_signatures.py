"""Signature objects (reconciler/signatures): a registry chooses every byte of
a `.sig` manifest, a referrer, a bundle and a payload, and anyone can sign
garbage with a trusted key's help only if they hold it. Whatever they hold,
`verify` answers Accepted or Rejected, never an exception; random documents
are never accepted, even signed with the trusted key."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.signatures.bundle import BUNDLE_TYPE, INTOTO_PAYLOAD
from reconciler.signatures.keys import load_public_key
from reconciler.signatures.policy import SignaturePolicy
from reconciler.signatures.simple import SIMPLE_SIGNING
from reconciler.signatures.verify import Found, Rejected, verify
from tests.cosign_signer import Signer, bundle, referrer, sha256, sig_manifest
from tests.fuzz.budget import budget

DIGEST = sha256(b"the image")
REPO = "registry.example.org/team/app"
KEYS = ["critical", "identity", "docker-reference", "image", "docker-manifest-digest", "type", "optional",
        "schemaVersion", "mediaType", "config", "layers", "annotations", "digest", "size", "artifactType",
        "subject", "dsseEnvelope", "payload", "payloadType", "signatures", "sig", "_type", "predicateType",
        "sha256", "manifests"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                    st.sampled_from([DIGEST, DIGEST[7:], REPO, 2, "cosign container image signature", BUNDLE_TYPE,
                                     SIMPLE_SIGNING, INTOTO_PAYLOAD, "https://in-toto.io/Statement/v1",
                                     "https://sigstore.dev/cosign/sign/v1", "", "AAAA"]))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children,
                                               max_size=6)),
    max_leaves=30,
)
SIGNER = Signer()
POLICY = SignaturePolicy((load_public_key(SIGNER.pem, "k.pub"),))


def never_raises_nor_accepts(found: Found, blobs: dict) -> None:
    verdict = verify(DIGEST, REPO, "v1", found, POLICY, lambda d, s: blobs.get(d, b"x" * min(s, 100)))
    assert isinstance(verdict, Rejected) and verdict.reasons and all("\n" not in r for r in verdict.reasons)


@given(json_values, json_values)
@budget(300)
def test_any_sig_manifest_and_referrer_are_refused_without_an_exception(sig: Any, ref: Any) -> None:
    never_raises_nor_accepts(Found("x.sig", json.dumps(sig).encode(), "api", [("r", json.dumps(ref).encode())]), {})


@given(json_values)
@budget(300)
def test_a_signed_payload_that_is_not_a_cosign_claim_for_the_digest_is_refused(document: Any) -> None:
    data = json.dumps(document).encode()
    art = sig_manifest([(data, base64.b64encode(SIGNER.sign(data)).decode(), SIMPLE_SIGNING)])
    never_raises_nor_accepts(Found("x.sig", art.manifest, "api"), art.blobs)


@given(json_values)
@budget(300)
def test_a_signed_statement_that_is_not_a_cosign_signature_of_the_digest_is_refused(document: Any) -> None:
    art = referrer(bundle(SIGNER, json.dumps(document).encode()), DIGEST, 10)
    never_raises_nor_accepts(Found("x.sig", None, "api", [("r", art.manifest)]), art.blobs)


@given(json_values)
@budget(300)
def test_any_bundle_blob_is_refused_without_an_exception(document: Any) -> None:
    art = referrer(json.dumps(document).encode(), DIGEST, 10)
    never_raises_nor_accepts(Found("x.sig", None, "api", [("r", art.manifest)]), art.blobs)
