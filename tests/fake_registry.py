"""The made-up registry the pytest-httpx tests talk to: its names, its token
realm and one blob, shared by the protocol and the quirks tests."""

from __future__ import annotations

import hashlib

from reconciler.registry.manifest import Descriptor

REG = "registry.example.org"
BASE = f"https://{REG}/v2"
REALM = "https://auth.example.org/token"
SCOPE = "repository:library/app:pull"
CHALLENGE = f'Bearer realm="{REALM}",service="{REG}",scope="{SCOPE}"'
BLOB = b"layer bytes " * 1000
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
LAYER = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", BLOB_DIGEST, len(BLOB))
BLOB_URL = f"{BASE}/library/app/blobs/{BLOB_DIGEST}"
