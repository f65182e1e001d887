"""Manifests, indexes and image configs (registry/manifest.py): a registry
chooses every byte of them."""

from __future__ import annotations

import json
from typing import Any, Optional

from hypothesis import example, given
from hypothesis import strategies as st

from reconciler.errors import PlatformNotFoundError, RegistryError
from reconciler.registry.manifest import (
    CONFIG_TYPES,
    DOCKER_SCHEMA1,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    ImageIndex,
    ImageManifest,
    Platform,
    parse_image_config,
    parse_manifest,
)
from tests.fuzz.budget import budget

DIGEST = "sha256:" + "ab" * 32
KEYS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size", "platform",
        "annotations", "urls", "os", "architecture", "variant", "rootfs", "type", "diff_ids", "Env",
        "Entrypoint", "Cmd", "Labels", "WorkingDir", "User"]
MEDIA_TYPES = list(INDEX_TYPES + IMAGE_MANIFEST_TYPES + CONFIG_TYPES + DOCKER_SCHEMA1) + [
    "application/json", "text/plain", "application/octet-stream", ""]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                    st.sampled_from(MEDIA_TYPES + [DIGEST, "layers", 2, 1, -1, 2.0, "linux", "amd64"]))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children,
                                               max_size=6)),
    max_leaves=30,
)
content_types = st.one_of(st.none(), st.sampled_from(MEDIA_TYPES), st.text(max_size=30),
                          st.sampled_from(MEDIA_TYPES).map(lambda t: t.upper() + "; charset=utf-8"))


def check_manifest(raw: bytes, content_type: Optional[str]) -> None:
    """Parse: a manifest, or one of our RegistryErrors; nothing else."""
    try:
        manifest = parse_manifest(raw, content_type)
    except RegistryError:
        return
    assert isinstance(manifest, (ImageManifest, ImageIndex))
    if isinstance(manifest, ImageIndex):
        for wanted in ("linux/amd64", "linux/arm64/v8", "unknown/unknown"):
            try:
                manifest.select(Platform.parse(wanted))
            except PlatformNotFoundError:
                pass


def check_config(raw: bytes) -> None:
    try:
        parse_image_config(raw)
    except RegistryError:
        return


DEEP = b"[" * 100_000 + b"]" * 100_000


@given(json_values, content_types)
@budget(500)
@example({"schemaVersion": 2, "manifests": [{"mediaType": IMAGE_MANIFEST_TYPES[0], "digest": DIGEST, "size": 1,
                                            "platform": {"os": [], "architecture": {}}}]}, None)
@example({"schemaVersion": 2.0, "config": {"mediaType": "x", "digest": DIGEST, "size": True}, "layers": []}, None)
def test_any_json_document_is_a_manifest_or_our_error(document: Any, content_type: Optional[str]) -> None:
    check_manifest(json.dumps(document).encode(), content_type)
    check_config(json.dumps(document).encode())


nested = st.builds(lambda n, opener, inner: opener * n + inner + {b"[": b"]", b"{\"a\":": b"}"}[opener] * n,
                   st.integers(0, 3000), st.sampled_from([b"[", b'{"a":']), st.sampled_from([b"1", b"", b"{}"]))


@given(st.one_of(st.binary(max_size=300), nested), content_types)
@budget(200)
@example(DEEP, None)  # nesting deeper than the recursion limit: RecursionError from json
@example(b'{"schemaVersion": 2, "x": ' + DEEP + b"}", IMAGE_MANIFEST_TYPES[0])
@example(b"\xef\xbb\xbf{}", None)
@example(b"\xff\xfe{\x00}\x00", None)
@example(b'{"schemaVersion": 2, "n": ' + b"9" * 5000 + b"}", None)  # over int()'s digit limit
def test_any_bytes_are_a_manifest_or_our_error(raw: bytes, content_type: Optional[str]) -> None:
    check_manifest(raw, content_type)
    check_config(raw)


def descriptor(media_type: str) -> dict:
    return {"mediaType": media_type, "digest": DIGEST, "size": 10}


VALID = [
    {"schemaVersion": 2, "mediaType": IMAGE_MANIFEST_TYPES[0], "config": descriptor(CONFIG_TYPES[0]),
     "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip")]},
    {"schemaVersion": 2, "mediaType": INDEX_TYPES[1], "manifests": [
        dict(descriptor(IMAGE_MANIFEST_TYPES[1]), platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        dict(descriptor(IMAGE_MANIFEST_TYPES[0]), platform={"os": "unknown", "architecture": "unknown"},
             annotations={"vnd.docker.reference.type": "attestation-manifest"})]},
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
     "config": {"Env": ["A=b"], "Entrypoint": ["/bin/sh"], "Cmd": None, "Labels": {"a": "b"}, "WorkingDir": "/"}},
]


@st.composite
def mutated(draw) -> Any:
    """A valid document with a few values replaced, removed or added, anywhere in it."""
    document = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        # Walk down to a random container.
        node = document
        while True:
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            containers = [(k, v) for k, v in children if isinstance(v, (dict, list))]
            if not containers or draw(st.booleans()):
                break
            node = draw(st.sampled_from(containers))[1]
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace" and keys:
            node[draw(st.sampled_from(keys))] = draw(json_values)
        elif action == "delete" and keys:
            del node[draw(st.sampled_from(keys))]
        elif isinstance(node, dict):
            node[draw(st.sampled_from(KEYS))] = draw(json_values)
        else:
            node.append(draw(json_values))
    return document


@given(mutated(), content_types)
@budget(500)
def test_mutated_manifests_are_a_manifest_or_our_error(document: Any, content_type: Optional[str]) -> None:
    raw = json.dumps(document).encode()
    check_manifest(raw, content_type)
    check_config(raw)


@given(st.sampled_from(VALID[:2]))
@budget(5)
def test_the_valid_documents_parse(document: dict) -> None:
    """The seeds of the mutations are valid: the fuzzing starts from real manifests."""
    parsed = parse_manifest(json.dumps(document).encode(), document["mediaType"])
    assert isinstance(parsed, (ImageManifest, ImageIndex))
    parse_image_config(json.dumps(VALID[2]).encode())
