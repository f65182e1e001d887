"""Both ways with the real `cosign` (Debian 13 packages 2.5.0; skipped where
it is absent, as on Debian 12): what `cosign sign --key` pushes is accepted,
and what tests/cosign_signer.py pushes passes `cosign verify --key`."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from reconciler.registry.attachments import digest_tag
from tests.cosign_signer import signed
from tests.test_signature_gate import site  # noqa: F401  (the fixture)

COSIGN = shutil.which("cosign")
pytestmark = pytest.mark.skipif(COSIGN is None, reason="no cosign binary (Debian 13: apt install cosign)")
# A loopback registry over plain http, no Rekor, no prompts.
REGISTRY_FLAGS = ["--allow-insecure-registry", "--allow-http-registry"]


def cosign(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "COSIGN_PASSWORD": "", "COSIGN_YES": "true"}
    return subprocess.run([COSIGN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_an_image_signed_by_cosign_is_published(site):  # noqa: F811
    digest = site.push("basic", "v1")
    made = cosign("generate-key-pair", cwd=site.tmp_path)
    assert made.returncode == 0, made.stderr
    (site.tmp_path / "cosign.pub").replace(site.tmp_path / "trusted.pub")
    done = cosign("sign", "--key", "cosign.key", "--tlog-upload=false", *REGISTRY_FLAGS, f"{site.name}@{digest}",
                  cwd=site.tmp_path)
    assert done.returncode == 0, done.stderr
    report = site.run()
    assert [str(o.status) for o in report.outcomes] == ["published"], report.summary()
    assert site.rows()[("v1", "linux/amd64")].signed_where.startswith(f"{site.name}:{digest_tag(digest)[:19]}")


def test_cosign_verifies_what_the_tests_sign(site):  # noqa: F811
    digest = site.push("basic", "v1")
    site.attach(signed(site.key, digest, site.name), digest_tag(digest, "sig"))
    done = cosign("verify", "--key", "trusted.pub", "--insecure-ignore-tlog", *REGISTRY_FLAGS,
                  f"{site.name}@{digest}", cwd=site.tmp_path)
    assert done.returncode == 0, done.stderr
