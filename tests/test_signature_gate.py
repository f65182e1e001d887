"""Signature verification before publish, end to end on the loopback
`docker-registry` (distribution 2.8: no referrers API): images pushed, signed
here as cosign does, and `run_once` publishing or refusing them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import List, Optional

import pytest

from fixtures.build import Blob
from fixtures.push import FixturePusher
from reconciler.errors import NotFoundError
from reconciler.reconcile import Reconciler
from reconciler.registry.attachments import digest_tag
from reconciler.registry.client import RegistryClient, RetryPolicy
from reconciler.registry.manifest import DOCKER_MANIFEST
from reconciler.registry.manifests import get_manifest
from reconciler.state import StateDB
from reconciler.watchlist import load_watchlist
from tests.cosign_signer import Artifact, Signer, bundle, fallback_index, referrer, signed, statement
from tests.registry_server import start_registry

REPO = "team/app"


class Site:
    """A registry of our own, a trusted key and a watchlist requiring it."""

    def __init__(self, tmp_path: Path, fixture_images: dict) -> None:
        self.tmp_path = tmp_path
        self.images = fixture_images
        self.server = start_registry(tmp_path / "registry")
        self.host = self.server.host
        self.pusher = FixturePusher(self.host)
        self.key = Signer()
        self.key.write(tmp_path / "trusted.pub")
        self.root = tmp_path / "publish"

    @property
    def name(self) -> str:
        return f"{self.host}/{REPO}"

    def push(self, fixture: str, tag: str) -> str:
        """Push a fixture image as team/app:`tag`; the digest the tag points at."""
        image = self.images[fixture]
        self.pusher.push(type(image)(image.name, REPO, image.blobs, image.manifests, [tag], image.layer_tars))
        return image.top.digest

    def attach(self, art: Artifact, reference: str) -> None:
        """Push a signature object (its blobs, then its manifest at `reference`)."""
        with tempfile.TemporaryDirectory() as tmp:
            for data in art.blobs.values():
                self.pusher.push_blob(REPO, Blob("application/octet-stream", data), Path(tmp))
        self.pusher.push_manifest(REPO, Blob(art.media_type, art.manifest), reference)

    def sign(self, digest: str, signer: Optional[Signer] = None, names: Optional[str] = None) -> None:
        """Push the `.sig` cosign writes for `digest` (signed by `signer`, naming `names`)."""
        self.attach(signed(signer or self.key, names or digest, self.name), digest_tag(digest, "sig"))

    def watchlist(self, selection: str = 'tags = ["v1"]', extra: str = "") -> Path:
        path = self.tmp_path / "watchlist.toml"
        path.write_text(f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n'
                        f'[registries."{self.host}"]\ninsecure = true\n'
                        f'[[image]]\nsource = "{self.name}"\n{selection}\ndest = "app"\n{extra}'
                        '[image.signature]\nkeys = ["trusted.pub"]\n')
        return path

    def run(self, path: Optional[Path] = None):
        reconciler = Reconciler(load_watchlist(path or self.watchlist()), retry=RetryPolicy(attempts=2,
                                                                                           base_delay=0.01))
        try:
            return reconciler.run_once()
        finally:
            reconciler.close()

    def rows(self):
        state = StateDB(self.tmp_path / "state" / "state.db")
        try:
            return {(r.tag, r.platform): r for r in state.all()}
        finally:
            state.close()

    def published(self, tag_path: str = "app:v1") -> Optional[str]:
        link = self.root / tag_path
        return os.readlink(link) if os.path.islink(link) else None


@pytest.fixture
def site(tmp_path, fixture_images):
    s = Site(tmp_path, fixture_images)
    yield s
    s.server.stop()


def statuses(report) -> List[str]:
    return [str(o.status) for o in report.outcomes]


def reasons(report) -> str:
    return "\n".join(o.reason for o in report.outcomes)


def test_a_signed_image_is_published_with_its_signer_recorded(site):
    digest = site.push("basic", "v1")
    site.sign(digest)
    report = site.run()
    assert statuses(report) == ["published"]
    assert digest.split(":")[1] in site.published()
    row = site.rows()[("v1", "linux/amd64")]
    assert row.signed_by == site.key.fingerprint
    assert row.signed_where == f"{site.name}:{digest_tag(digest)[:19]}….sig layer 0"


def test_an_unsigned_image_is_refused_before_its_layers_are_downloaded(site):
    digest = site.push("basic", "v1")
    report = site.run()
    assert statuses(report) == ["failed"] and site.published() is None
    sig = f"{site.name}:{digest_tag(digest)[:19]}….sig"
    assert reasons(report) == (
        f"not published: no valid signature on {digest}: no signature: {sig} not found, no referrers "
        f"(the fallback tag {site.name}:{digest_tag(digest)}); the published revision stays, checked again at "
        "the next poll")
    layer_gets = [e for e in site.server.access_log() if "/blobs/" in e["http.request.uri"]
                  and e["http.request.method"] == "GET" and e["http.response.status"] == 200]
    image = site.images["basic"]
    layers = {b.digest for b in image.blobs} - {image.top.digest}
    fetched = {e["http.request.uri"].rsplit("/", 1)[1] for e in layer_gets}
    assert len(fetched & layers) <= 1  # the config at most, never a layer
    assert site.rows()[("v1", "linux/amd64")].seen_digest is None  # not recorded as seen


def test_an_image_signed_by_another_key_is_refused(site):
    digest = site.push("basic", "v1")
    site.sign(digest, signer=Signer())
    report = site.run()
    assert statuses(report) == ["failed"]
    assert f"signed by an unknown key; trusted: {site.key.fingerprint[:16]}" in reasons(report)
    assert report.outcomes[0].refusal == "signature"  # counted in reconciler_refusals_total{policy="signature"}


def test_a_signature_for_another_digest_is_refused(site):
    digest = site.push("basic", "v1")
    other = site.images["edges"].top.digest
    site.sign(digest, names=other)
    report = site.run()
    assert statuses(report) == ["failed"]
    assert f"names {other[:19]}, not {digest[:19]}" in reasons(report)


def test_an_image_signed_after_its_push_is_published_at_the_next_poll(site):
    digest = site.push("basic", "v1")
    assert statuses(site.run()) == ["failed"]
    site.sign(digest)  # CI signs once the push is done
    assert statuses(site.run()) == ["published"]
    assert site.rows()[("v1", "linux/amd64")].signed_by == site.key.fingerprint


def test_the_published_revision_stays_when_the_tag_moves_to_an_unsigned_image(site):
    site.sign(site.push("basic", "v1"))
    site.run()
    before = site.published()
    site.push("edges", "v1")
    report = site.run()
    assert statuses(report) == ["failed"] and site.published() == before


def test_a_multi_arch_index_signed_at_the_index_publishes_every_platform(site):
    index = site.push("multiarch", "v1")
    site.sign(index)
    path = site.watchlist(extra='platforms = ["linux/amd64", "linux/arm/v7"]\n')
    report = site.run(path)
    assert statuses(report) == ["published", "published"]
    rows = site.rows()
    assert {r.signed_by for r in rows.values()} == {site.key.fingerprint}
    assert all(r.signed_where.startswith(f"{site.name}:{digest_tag(index)[:19]}") for r in rows.values())


def test_a_platform_manifest_signed_alone_is_accepted_and_recorded_as_such(site):
    site.push("multiarch", "v1")
    index = json.loads(site.images["multiarch"].top.data)
    (amd64,) = [m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64"]
    site.sign(amd64)
    path = site.watchlist(extra='platforms = ["linux/amd64", "linux/arm/v7"]\n')
    report = site.run(path)
    by_platform = {str(o.platform): o for o in report.outcomes}
    assert str(by_platform["linux/amd64"].status) == "published"
    assert by_platform["linux/amd64"].signed_where.endswith("(on its linux/amd64 manifest)")
    assert str(by_platform["linux/arm/v7"].status) == "failed"
    assert "(the tag's index)" in by_platform["linux/arm/v7"].reason
    assert "nor on its linux/arm/v7 manifest" in by_platform["linux/arm/v7"].reason


def test_a_v3_bundle_listed_in_the_fallback_index_is_accepted(site):
    digest = site.push("basic", "v1")
    size = len(site.images["basic"].top.data)
    art = referrer(bundle(site.key, statement(digest)), digest, size)
    site.attach(art, art.digest)
    site.attach(fallback_index([art]), digest_tag(digest))
    report = site.run()
    assert statuses(report) == ["published"]
    assert site.rows()[("v1", "linux/amd64")].signed_where == f"referrer {site.name}@{art.digest[:19]}"


def test_a_v3_bundle_by_an_unknown_key_is_refused_with_the_sig_lookup_too(site):
    digest = site.push("basic", "v1")
    size = len(site.images["basic"].top.data)
    art = referrer(bundle(Signer(), statement(digest)), digest, size)
    site.attach(art, art.digest)
    site.attach(fallback_index([art]), digest_tag(digest))
    report = site.run()
    assert statuses(report) == ["failed"]
    assert f"referrer {site.name}@{art.digest[:19]}: signed by an unknown key" in reasons(report)


def test_a_broad_tag_pattern_never_selects_signature_tags(site):
    digest = site.push("basic", "v1")
    site.sign(digest)
    site.attach(fallback_index([]), digest_tag(digest))
    report = site.run(site.watchlist(selection='tag_pattern = "."'))
    assert [o.tag for o in report.outcomes] == ["v1"] and statuses(report) == ["published"]


def test_the_sig_tag_is_read_with_the_oci_accept_header(site):
    # Regression: distribution 2.8 answers 404 for an OCI manifest unless Accept lists the OCI type,
    # the same answer as "unsigned".
    digest = site.push("basic", "v1")
    site.sign(digest)
    with RegistryClient(site.host, insecure=True) as client:
        assert client.get_attachment(REPO, digest_tag(digest, "sig")) is not None
        with pytest.raises(NotFoundError):
            get_manifest(client, REPO, digest_tag(digest, "sig"), accept=DOCKER_MANIFEST)


def test_attachment_tags_are_never_selected_even_without_a_policy():
    from reconciler.cycle.plan import select_tags
    from reconciler.registry.reference import parse_reference
    from reconciler.watchlist import ImageEntry

    entry = ImageEntry(1, parse_reference("example.org/app", default_tag=None), tag_pattern=".")
    hexes = "ab" * 32
    available = ["v1", f"sha256-{hexes}.sig", f"sha256-{hexes}", f"sha256-{hexes}.att", f"sha256-{hexes}.sbom",
                 "sha256-abc.sig", f"sha256-{hexes}.sig2"]
    assert select_tags(entry, available) == sorted(["sha256-abc.sig", f"sha256-{hexes}.sig2", "v1"])


def test_exact_identity_is_checked_per_tag_even_for_one_digest(site):
    digest = site.push("basic", "v1")
    site.push("basic", "v2")
    site.attach(signed(site.key, digest, f"{site.name}:v1"), digest_tag(digest, "sig"))
    report = site.run(site.watchlist(selection='tags = ["v1", "v2"]'))
    assert statuses(report) == ["published", "published"]  # the default rule: the repository, any tag
    path = site.watchlist(selection='tags = ["v1", "v2", "v3"]')
    path.write_text(path.read_text() + 'identity = "exact"\n')
    site.push("basic", "v3")
    report = site.run(path)
    by_tag = {o.tag: o for o in report.outcomes}
    assert str(by_tag["v3"].status) == "failed"
    assert f"signed identity '{site.name}:v1' ≠ '{site.name}:v3' (rule exact)" in by_tag["v3"].reason


def test_an_unexpected_error_while_checking_fails_that_image_alone(site, monkeypatch):
    digest = site.push("basic", "v1")
    site.sign(digest)

    def broken(self, repository, tag):
        raise RuntimeError("a bug")

    monkeypatch.setattr(RegistryClient, "get_attachment", broken)
    report = site.run()
    assert statuses(report) == ["failed"] and site.published() is None
    assert "cannot check its signatures: unexpected RuntimeError: a bug" in reasons(report)


def test_with_two_targets_each_entry_is_held_to_its_own_policy(site):
    digest = site.push("basic", "v1")
    site.sign(digest)
    site.push("edges", "v2")
    path = site.tmp_path / "watchlist.toml"
    path.write_text(f'[publish.open]\nroot = "public"\nvisibility = "public"\n'
                    f'[publish.members]\nroot = "restricted"\n[state]\ndir = "state"\n'
                    f'[registries."{site.host}"]\ninsecure = true\n'
                    f'[defaults]\nsignature = {{ keys = ["trusted.pub"] }}\n'
                    f'[[image]]\nsource = "{site.name}"\ntags = ["v1"]\ndest = "signed"\npublish = "open"\n'
                    f'[[image]]\nsource = "{site.name}"\ntags = ["v2"]\ndest = "unsigned"\npublish = "members"\n'
                    f'[[image]]\nsource = "{site.name}"\ntags = ["v2"]\ndest = "exempt"\npublish = "members"\n'
                    'signature = "none"\n')
    report = site.run(path)
    by_dest = {o.entry.dest: o for o in report.outcomes}
    assert {d: str(o.status) for d, o in by_dest.items()} == {"signed": "published", "unsigned": "failed",
                                                              "exempt": "published"}
    assert "no valid signature" in by_dest["unsigned"].reason
    assert os.path.islink(site.tmp_path / "public" / "signed:v1")
    assert os.path.islink(site.tmp_path / "restricted" / "exempt:v2")
    assert not os.path.lexists(site.tmp_path / "restricted" / "unsigned:v2")
