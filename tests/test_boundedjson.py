"""JSON from outside is measured before it is parsed (issue #19): Python 3.9's
C decoder can abort the whole process on a document nested past the recursion
limit ("Cannot recover from stack overflow"), depending on how deep the
caller's stack is, so a registry answering `[[[[…` could stop the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from reconciler import boundedjson
from reconciler.errors import RegistryError
from reconciler.registry.manifest import InvalidManifestError, parse_manifest
from reconciler.registry.refusals import error_codes
from reconciler.webhooks import HookRejected, verify_body, verify_headers

ROOT = Path(__file__).resolve().parent.parent
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("document, depth", [
    (b"1", 0), (b"[]", 1), (b'{"a": [1, {"b": 2}]}', 3), (b'{"a": "[[[[{{{{"}', 1),
    (b'["\\"[[", [[]]]', 3), ("[[\u00e9]]", 2), (DEEP, 100_000),
])
def test_nesting_is_counted_outside_strings(document, depth):
    assert boundedjson.nesting_depth(document) == depth


def test_documents_deeper_than_the_bound_are_refused_before_parsing():
    assert boundedjson.loads(b"[" * 64 + b"]" * 64, max_depth=64) is not None
    with pytest.raises(boundedjson.JSONTooDeepError, match="65 levels deep, more than the 64 allowed"):
        boundedjson.loads(b"[" * 65 + b"]" * 65, max_depth=64)
    with pytest.raises(ValueError):  # what every caller already catches for malformed JSON
        boundedjson.loads(DEEP)


def test_a_deep_manifest_webhook_body_or_error_body_is_our_error():
    with pytest.raises(InvalidManifestError, match="nested 100000 levels deep"):
        parse_manifest(DEEP, None)
    assert error_codes(httpx.Response(400, content=b'{"errors": ' + DEEP + b"}")) == []
    secret = "a-secret-of-enough-length"
    checked = verify_headers("gitlab", secret, {"x-gitlab-token": secret}, path_token=None, now=0.0)
    with pytest.raises(HookRejected) as refused:
        verify_body(checked, secret, DEEP, now=0.0)
    assert refused.value.status == 400


def test_a_deep_document_read_from_deep_in_the_stack_does_not_abort_the_process():
    """The process survives a deeply nested manifest even when the caller is
    itself near the recursion limit (where 3.9's decoder aborted)."""
    code = (
        "import sys\n"
        "from reconciler.errors import RegistryError\n"
        "from reconciler.registry.manifest import parse_manifest\n"
        "DEEP = b'[' * 100000 + b']' * 100000\n"
        "def descend(n):\n"
        "    if n == 0:\n"
        "        try:\n"
        "            parse_manifest(DEEP, None)\n"
        "        except RegistryError:\n"
        "            return 'refused'\n"
        "        return 'parsed'\n"
        "    return descend(n - 1)\n"
        "print(descend(sys.getrecursionlimit() - 60))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "refused", (done.returncode, done.stderr[-2000:])


def test_registry_error_type_is_kept():
    assert issubclass(InvalidManifestError, RegistryError)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be", "utf-32"])
def test_the_depth_is_measured_in_the_encoding_the_decoder_reads(encoding):
    """UTF-16 puts a NUL after every ASCII byte: measured as UTF-8, a quote
    and a backslash fell out of step and the brackets hid inside a 'string'."""
    document = '["a\\"b", ' + "[" * 5000 + "]" * 5000 + ', "x"]'
    with pytest.raises(boundedjson.JSONTooDeepError, match="5001 levels"):
        boundedjson.loads(document.encode(encoding))


def test_an_unterminated_string_is_scanned_once():
    """`"\\"\\"\\"…` never closes: each position is scanned once. With a regex
    that needed the closing quote every quote restarted the scan (quadratic:
    hours for a 4 MiB manifest); here 4 MiB must still be refused as malformed."""
    raw = b'"' + b'\\"' * (2 << 20)
    assert boundedjson.nesting_depth(raw) == 0
    with pytest.raises(ValueError):
        boundedjson.loads(raw)
