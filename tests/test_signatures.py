"""The pure verification core (reconciler.signatures): keys made here, one
case per way a signature can be wrong (signatures.md §8.2.1)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from reconciler.signatures.check import MAX_SIGNATURE_BLOB
from reconciler.signatures.keys import KeyFormatError, load_public_key
from reconciler.signatures.policy import IdentityRule, SignaturePolicy
from reconciler.signatures.simple import SIMPLE_SIGNING
from reconciler.signatures.verify import Accepted, Found, Rejected, verify
from tests.cosign_signer import (
    Artifact,
    Signer,
    bundle,
    payload,
    referrer,
    sha256,
    sig_manifest,
    signed,
    statement,
)

REPO = "registry.example.org/team/app"
DIGEST = sha256(b"the image manifest")
OTHER = sha256(b"another image manifest")
SIG = "registry.example.org/team/app:sha256-abc.sig"


@pytest.fixture
def signer():
    return Signer()


def policy_of(*signers: Signer, identity: str = "repository") -> SignaturePolicy:
    return SignaturePolicy(tuple(load_public_key(s.pem, f"key{i}.pub") for i, s in enumerate(signers)),
                           IdentityRule.parse(identity))


def check(art: Artifact, policy: SignaturePolicy, digest: str = DIGEST, tag: str = "v1"):
    return verify(digest, REPO, tag, Found(SIG, art.manifest, "the referrers API"), policy, art.fetch)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_valid_signature_is_accepted_with_the_signers_fingerprint(signer):
    verdict = check(signed(signer, DIGEST, REPO), policy_of(Signer(), signer))
    assert verdict == Accepted(signer.fingerprint, f"{SIG} layer 0")


def test_any_listed_key_may_sign_and_one_valid_layer_of_two_suffices(signer):
    stranger = Signer()
    good, bad = payload(DIGEST, REPO), payload(DIGEST, REPO + "x")
    art = sig_manifest([(bad, b64(stranger.sign(bad)), SIMPLE_SIGNING), (good, b64(signer.sign(good)), SIMPLE_SIGNING)])
    verdict = check(art, policy_of(signer))
    assert isinstance(verdict, Accepted) and verdict.where.endswith("layer 1")


def test_a_raw_r_s_signature_is_accepted_too(signer):
    data = payload(DIGEST, REPO)
    r, s = decode_dss_signature(signer.sign(data))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert isinstance(check(sig_manifest([(data, b64(raw), SIMPLE_SIGNING)]), policy_of(signer)), Accepted)


def test_an_unknown_key_is_refused_naming_the_trusted_ones(signer):
    trusted = Signer()
    verdict = check(signed(signer, DIGEST, REPO), policy_of(trusted))
    assert verdict == Rejected((f"{SIG} layer 0: signed by an unknown key; trusted: {trusted.fingerprint[:16]}",))


def test_a_replayed_signature_of_another_digest_is_refused(signer):
    verdict = check(signed(signer, OTHER, REPO), policy_of(signer))
    assert isinstance(verdict, Rejected)
    assert verdict.reasons == (f"{SIG} layer 0: signature (key {signer.fingerprint[:16]}) names {OTHER[:19]}, "
                               f"not {DIGEST[:19]}",)


def test_a_signature_over_another_blob_is_refused(signer):
    data, other = payload(DIGEST, REPO), payload(DIGEST, REPO + "/other")
    verdict = check(sig_manifest([(data, b64(signer.sign(other)), SIMPLE_SIGNING)]), policy_of(signer))
    assert "signed by an unknown key" in str(verdict)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.replace(b"cosign container image signature", b"atomic container signature"),
     "critical.type is 'atomic container signature'"),
    (lambda d: d.replace(b'"optional":null', b'"optional":null,"critical":{}'), "critical holds []"),
    (lambda d: b"[" + d + b"]", "no critical section"),
    (lambda d: d[:-3], "not JSON"),
    (lambda d: d.replace(b'"type"', b'"extra":1,"type"'), "critical holds ['extra'"),
])
def test_a_signed_but_malformed_payload_is_refused(signer, mutate, expected):
    data = mutate(payload(DIGEST, REPO))
    verdict = check(sig_manifest([(data, b64(signer.sign(data)), SIMPLE_SIGNING)]), policy_of(signer))
    assert isinstance(verdict, Rejected) and "over a malformed payload" in str(verdict)
    assert expected in str(verdict)


def test_bad_base64_and_a_missing_annotation_are_refused(signer):
    data = payload(DIGEST, REPO)
    verdict = check(sig_manifest([(data, "not base64!", SIMPLE_SIGNING), (data, None, SIMPLE_SIGNING)]),
                    policy_of(signer))
    assert isinstance(verdict, Rejected)
    assert "annotation is not valid base64" in verdict.reasons[0]
    assert "annotation is missing" in verdict.reasons[1]


def test_an_oversize_blob_is_refused_before_it_is_read(signer):
    data = payload(DIGEST, REPO) + b" " * MAX_SIGNATURE_BLOB
    art = sig_manifest([(data, b64(signer.sign(data)), SIMPLE_SIGNING)])
    read = []
    verdict = verify(DIGEST, REPO, "v1", Found(SIG, art.manifest, "x"), policy_of(signer),
                     lambda d, s: read.append(d) or art.fetch(d, s))
    assert "over the 65536 byte limit" in str(verdict) and read == []


def test_a_blob_that_does_not_match_its_digest_is_refused(signer):
    art = signed(signer, DIGEST, REPO)
    verdict = verify(DIGEST, REPO, "v1", Found(SIG, art.manifest, "x"), policy_of(signer),
                     lambda d, s: payload(OTHER, REPO))
    assert isinstance(verdict, Rejected) and "its payload hashes to" in str(verdict)


def test_other_attachments_are_not_signatures(signer):
    art = sig_manifest([(b"an SBOM", b64(signer.sign(b"an SBOM")), "text/plain")])
    verdict = check(art, policy_of(signer))
    assert verdict == Rejected((f"no signature: {SIG} holds no signature, no referrers (the referrers API)",))


def test_no_sig_and_no_referrers_says_where_it_looked(signer):
    verdict = verify(DIGEST, REPO, "v1", Found(SIG, None, "the fallback tag sha256-abc"), policy_of(signer),
                     lambda d, s: b"")
    assert str(verdict) == f"no signature: {SIG} not found, no referrers (the fallback tag sha256-abc)"


@pytest.mark.parametrize("kind", ["index", "docker"])
def test_a_sig_that_is_an_index_or_a_docker_manifest_is_refused(signer, kind):
    art = signed(signer, DIGEST, REPO)
    if kind == "index":
        art.manifest = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
                        b'"manifests":[]}')
    else:
        art.manifest = art.manifest.replace(b"application/vnd.oci.image.manifest.v1+json",
                                            b"application/vnd.docker.distribution.manifest.v2+json")
    verdict = check(art, policy_of(signer))
    assert isinstance(verdict, Rejected) and "not an OCI image manifest" in str(verdict)


@pytest.mark.parametrize("identity, reference, tag, ok", [
    ("repository", REPO, "v1", True),
    ("repository", REPO + ":v1", "v1", True),  # skopeo writes the tag
    ("repository", "registry.example.org/team/other", "v1", False),
    ("repository", "", "v1", False),  # SingularityCE's empty reference
    ("any", "", "v1", True),
    ("any", "elsewhere.org/x", "v1", True),
    ("exact", REPO + ":v1", "v1", True),
    ("exact", REPO + ":v2", "v1", False),
    ("exact", REPO, "v1", False),
    ("repository:docker.io/library/alpine", "alpine", "v1", True),
    ("repository:docker.io/library/alpine", REPO, "v1", False),
])
def test_identity_rules(signer, identity, reference, tag, ok):
    verdict = check(signed(signer, DIGEST, reference), policy_of(signer, identity=identity), tag=tag)
    assert isinstance(verdict, Accepted) == ok, verdict
    if not ok:
        assert "signed identity" in str(verdict)


def test_identity_rule_words():
    assert str(IdentityRule.parse("repository:alpine")) == "repository:docker.io/library/alpine"
    for bad in ("repo", "repository:alpine:3", "", "Exact"):
        with pytest.raises(ValueError):
            IdentityRule.parse(bad)


# -- keys ---------------------------------------------------------------------

def test_a_p256_key_loads_with_its_spki_fingerprint(signer):
    key = load_public_key(signer.pem, "k.pub")
    assert key.fingerprint == signer.fingerprint and key.short == signer.fingerprint[:16]


@pytest.mark.parametrize("make, expected", [
    (lambda: Signer(ec.SECP384R1()).pem, "secp384r1; only P-256"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "RSA"),
    (lambda: b"garbage", "not a PEM public key"),
    (lambda: Signer().key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), "a private key"),
])
def test_unsupported_keys_are_refused(make, expected):
    with pytest.raises(KeyFormatError, match=expected):
        load_public_key(make(), "k.pub")


# -- v3 bundles (DSSE in-toto referrers) ------------------------------------

def bundle_found(art: Artifact) -> Found:
    return Found(SIG, None, "the referrers API", [(f"referrer {art.digest[:19]}", art.manifest)])


def check_bundle(art: Artifact, policy: SignaturePolicy, digest: str = DIGEST):
    return verify(digest, REPO, "v1", bundle_found(art), policy, art.fetch)


def test_a_valid_bundle_is_accepted(signer):
    art = referrer(bundle(signer, statement(DIGEST)), DIGEST, 100)
    assert check_bundle(art, policy_of(signer)) == Accepted(signer.fingerprint, f"referrer {art.digest[:19]}")


@pytest.mark.parametrize("identity", ["exact", "repository:reg.example/mirror/app"])
def test_a_bundle_cannot_pass_a_rule_that_names_a_reference(signer, identity):
    # A bundle's statement names no reference: only the digest binds it.
    art = referrer(bundle(signer, statement(DIGEST)), DIGEST, 100)
    verdict = check_bundle(art, policy_of(signer, identity=identity))
    assert isinstance(verdict, Rejected), verdict
    assert f'a bundle names no image reference, so identity = "{identity}" cannot be checked' in str(verdict)


@pytest.mark.parametrize("body, payload_type, expected", [
    (statement(DIGEST), "application/json", "payloadType is 'application/json'"),
    (statement(DIGEST, predicate_type="https://slsa.dev/provenance/v1"), None, "an attestation, not a signature"),
    (statement(DIGEST).replace(b'"sha256"', b'"sha512"'), None, "no subject with a sha256 digest"),
    (statement(OTHER), None, f"names {OTHER[:19]}, not {DIGEST[:19]}"),
])
def test_a_wrong_bundle_is_refused(signer, body, payload_type, expected):
    made = bundle(signer, body, payload_type) if payload_type else bundle(signer, body)
    verdict = check_bundle(referrer(made, DIGEST, 100), policy_of(signer))
    assert isinstance(verdict, Rejected) and expected in str(verdict), verdict


def test_a_bundle_signed_by_a_key_it_carries_is_refused(signer):
    # The bundle names its own key (GHSA-fx35-mq7g-6g98): only configured keys count.
    attacker = Signer()
    made = bundle(attacker, statement(DIGEST)).replace(
        b'"tlogEntries"', b'"publicKey":{"rawBytes":"' + base64.b64encode(attacker.pem) + b'"},"tlogEntries"')
    verdict = check_bundle(referrer(made, DIGEST, 100), policy_of(signer))
    assert isinstance(verdict, Rejected) and "signed by an unknown key" in str(verdict)


def test_a_bundle_for_another_subject_is_refused(signer):
    verdict = check_bundle(referrer(bundle(signer, statement(DIGEST)), OTHER, 100), policy_of(signer))
    assert isinstance(verdict, Rejected) and f"a bundle for {OTHER[:19]}" in str(verdict)


def test_other_referrers_are_skipped(signer):
    art = referrer(bundle(signer, statement(DIGEST)), DIGEST, 100)
    art.manifest = art.manifest.replace(b"application/vnd.dev.sigstore.bundle.v0.3+json", b"application/spdx+json")
    verdict = check_bundle(art, policy_of(signer))
    assert str(verdict) == f"no signature: {SIG} not found, no bundle among the referrers (the referrers API)"


def test_a_sig_with_very_many_layers_is_read_only_so_far(signer):
    from reconciler.signatures.simple import MAX_SIGNATURES
    junk = payload(DIGEST, REPO + "/x")
    good = payload(DIGEST, REPO)
    layers = [(junk + b" " * i, b64(Signer().sign(junk)), SIMPLE_SIGNING) for i in range(MAX_SIGNATURES + 5)]
    art = sig_manifest(layers + [(good, b64(signer.sign(good)), SIMPLE_SIGNING)])
    read = []
    verdict = verify(DIGEST, REPO, "v1", Found(SIG, art.manifest, "x"), policy_of(signer),
                     lambda d, s: read.append(d) or art.fetch(d, s))
    assert isinstance(verdict, Rejected) and len(read) == MAX_SIGNATURES
    assert verdict.reasons[-1] == f"{SIG}: more than {MAX_SIGNATURES} signatures; the others were not read"


def test_reading_stops_at_the_first_valid_signature(signer):
    good = payload(DIGEST, REPO)
    art = sig_manifest([(good, b64(signer.sign(good)), SIMPLE_SIGNING),
                        (good + b" ", b64(signer.sign(good + b" ")), SIMPLE_SIGNING)])
    read = []
    verdict = verify(DIGEST, REPO, "v1", Found(SIG, art.manifest, "x"), policy_of(signer),
                     lambda d, s: read.append(d) or art.fetch(d, s))
    assert isinstance(verdict, Accepted) and len(read) == 1
