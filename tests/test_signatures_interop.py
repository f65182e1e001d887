"""Real signatures written by cosign and skopeo (fixtures/cosign, from
containers/image df7e80d): accepted under their key, refused when broken."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import List, Optional

import pytest

from reconciler.signatures.keys import load_public_key
from reconciler.signatures.policy import IdentityRule, SignaturePolicy
from reconciler.signatures.verify import Accepted, Found, Rejected, verify
from tests.cosign_signer import sig_manifest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cosign"
PREFIX = b"\x00sigstore-json\n"
SIGNED_REPO = "192.168.64.2:5000/cosign-signed-single-sample"


def key(name: str):
    return load_public_key((FIXTURES / name).read_bytes(), name)


def policy(*names: str, identity: str = "any") -> SignaturePolicy:
    return SignaturePolicy(tuple(key(n) for n in names), IdentityRule.parse(identity))


def layers(paths: List[Path]):
    """A `.sig` manifest's layers from c/image's signature files."""
    out = []
    for path in paths:
        raw = path.read_bytes()
        assert raw.startswith(PREFIX)
        data = json.loads(raw[len(PREFIX):])
        out.append((base64.b64decode(data["payload"]), data["annotations"].get("dev.cosignproject.cosign/signature"),
                    data["mimeType"]))
    return out


def run(directory: str, pol: SignaturePolicy, signatures: Optional[List[Path]] = None, repo: str = SIGNED_REPO,
        tag: str = "latest"):
    folder = FIXTURES / directory
    digest = "sha256:" + hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    art = sig_manifest(layers(signatures or sorted(folder.glob("signature-*"))))
    return verify(digest, repo, tag, Found("fixture.sig", art.manifest, "none"), pol, art.fetch)


@pytest.mark.parametrize("directory", ["dir-img-cosign-valid", "dir-img-cosign-valid-2",
                                       "dir-img-cosign-valid-with-tag"])
def test_cosign_and_skopeo_signatures_verify_under_cosign_pub(directory):
    verdict = run(directory, policy("cosign.pub", "cosign2.pub"))
    assert isinstance(verdict, Accepted) and verdict.fingerprint == key("cosign.pub").fingerprint


def test_the_identity_they_sign_is_the_repository():
    assert isinstance(run("dir-img-cosign-valid", policy("cosign.pub", identity="repository")), Accepted)
    # skopeo signs the reference with its tag: `exact` wants the tag published
    skopeo = "192.168.64.2:5000/skopeo-signed"
    assert isinstance(run("dir-img-cosign-valid-with-tag", policy("cosign.pub", identity="exact"), repo=skopeo,
                          tag="tag"), Accepted)
    refused = run("dir-img-cosign-valid-with-tag", policy("cosign.pub", identity="exact"), repo=skopeo, tag="v2")
    assert isinstance(refused, Rejected) and "signed identity" in str(refused)
    other = run("dir-img-cosign-valid", policy("cosign.pub", identity="repository"), repo="example.org/elsewhere")
    assert isinstance(other, Rejected) and "signed identity" in str(other)


def test_a_key_with_a_rekor_bundle_verifies_under_cosign2_pub_only():
    assert isinstance(run("dir-img-cosign-key-rekor-valid", policy("cosign2.pub")), Accepted)
    assert isinstance(run("dir-img-cosign-key-rekor-valid", policy("cosign.pub")), Rejected)


def test_an_unknown_key_is_refused():
    verdict = run("dir-img-cosign-valid", policy("cosign.pub", "cosign2.pub"),
                  [FIXTURES / "unknown-cosign-key.signature"])
    assert isinstance(verdict, Rejected) and "signed by an unknown key" in str(verdict)


def test_a_modified_manifest_is_refused_as_a_digest_mismatch():
    verdict = run("dir-img-cosign-modified-manifest", policy("cosign.pub"))
    assert isinstance(verdict, Rejected) and "names sha256:634a8f35b5f1, not sha256:" in str(verdict)


def test_another_attachment_is_no_signature():
    verdict = run("dir-img-cosign-other-attachment", policy("cosign.pub"))
    assert isinstance(verdict, Rejected) and str(verdict).startswith("no signature: fixture.sig holds no signature")


def test_mixed_accepts_the_valid_one_and_refuses_the_other_alone():
    folder = FIXTURES / "dir-img-cosign-mixed"
    assert isinstance(run("dir-img-cosign-mixed", policy("cosign.pub")), Accepted)
    singles = [run("dir-img-cosign-mixed", policy("cosign.pub"), [p]) for p in sorted(folder.glob("signature-*"))]
    assert sorted(type(v).__name__ for v in singles) == ["Accepted", "Rejected"]
