"""`python -m tests.bench.signatures`: what verifying a signature costs per
image, on the loopback docker-registry (distribution 2.8: no referrers API).

Two measures, alternating:
- one verification (`cycle.signature_gate._verdict`, one shared client as in
  a cycle) for each place a signature can be: a cosign `.sig`, a v3 bundle in
  the `sha256-<hex>` fallback index, and none (an unsigned image); its HTTP
  requests (counted by the client) and milliseconds;
- a whole `run_once` of N tags, each its own signed image (one manifest each
  over the same layers), with and without a policy, fresh state each time;
  the difference per tag.

Not a test: it prints one line per measure and writes .bench/signatures.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import httpx

from fixtures.build import Blob, build_all
from reconciler.cycle.signature_gate import _verdict
from reconciler.reconcile import Reconciler
from reconciler.registry.attachments import digest_tag
from reconciler.registry.client import RegistryClient
from reconciler.signatures.keys import load_public_key
from reconciler.signatures.policy import SignaturePolicy
from reconciler.signatures.verify import Accepted
from reconciler.watchlist import load_watchlist
from tests.cosign_signer import bundle, fallback_index, referrer, statement
from tests.test_signature_gate import REPO, Site

ROOT = Path(__file__).resolve().parents[2]


class _Clients:
    """The Registries a verification asks for: one client, kept alive."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    def client(self, host: str) -> RegistryClient:
        return self._client

    def mirror(self, host: str) -> None:
        return None


def verification(site: Site, digest: str, policy: SignaturePolicy, rounds: int) -> Dict[str, float]:
    """Median milliseconds and requests of one verification of `digest`."""
    key = (site.name, digest, "v1", policy)
    times: List[float] = []
    sent: List[str] = []
    http = httpx.Client(timeout=60, event_hooks={"request": [lambda r: sent.append(f"{r.method} {r.url.path}")]})
    with http, RegistryClient(site.host, insecure=True, http=http) as client:
        clients = _Clients(client)
        _verdict(clients, key)  # connect once, as a cycle's client already has
        sent.clear()
        for _ in range(rounds):
            start = time.perf_counter()
            verdict = _verdict(clients, key)
            times.append((time.perf_counter() - start) * 1000)
        requests = len(sent) / rounds
    return {"ms_median": round(statistics.median(times), 3), "ms_p90": round(sorted(times)[int(rounds * .9)], 3),
            "requests": requests, "accepted": isinstance(verdict, Accepted)}


def cycle(site: Site, tags: int, with_policy: bool, scratch: Path) -> float:
    """Seconds of one run_once over `tags` tags, fresh state and root."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    (work / "trusted.pub").write_bytes(site.key.pem)
    policy = '[image.signature]\nkeys = ["trusted.pub"]\n' if with_policy else ""
    tag_list = ", ".join(f'"t{i}"' for i in range(tags))
    (work / "watchlist.toml").write_text(
        f'[publish]\nroot = "publish"\n[state]\ndir = "state"\n[registries."{site.host}"]\ninsecure = true\n'
        f'[[image]]\nsource = "{site.name}"\ntags = [{tag_list}]\ndest = "app"\n{policy}')
    reconciler = Reconciler(load_watchlist(work / "watchlist.toml"))
    try:
        start = time.perf_counter()
        report = reconciler.run_once()
        elapsed = time.perf_counter() - start
    finally:
        reconciler.close()
    assert not report.failed, report.summary()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="verifications per kind")
    parser.add_argument("--tags", type=int, default=50, help="tags in the cycle measure")
    parser.add_argument("--pairs", type=int, default=3, help="cycles with and without a policy, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        site = Site(scratch, build_all())
        try:
            policy = SignaturePolicy((load_public_key(site.key.pem, "trusted.pub"),))
            sig_digest = site.push("basic", "v1")
            site.sign(sig_digest)
            bundle_digest = site.push("edges", "b1")
            art = referrer(bundle(site.key, statement(bundle_digest)), bundle_digest,
                           len(site.images["edges"].top.data))
            site.attach(art, art.digest)
            site.attach(fallback_index([art]), digest_tag(bundle_digest))
            unsigned = site.push("manytags", "u1")
            results: Dict[str, object] = {}
            for kind, digest in (("sig", sig_digest), ("bundle", bundle_digest), ("unsigned", unsigned)):
                results[kind] = verification(site, digest, policy, args.rounds)
                print(f"{kind:9} {results[kind]}")
            for i in range(args.tags):  # one image a tag: the same layers, a manifest of its own
                manifest = json.loads(site.images["basic"].top.data)
                manifest["annotations"] = {"bench": str(i)}
                variant = Blob(site.images["basic"].top.media_type, json.dumps(manifest).encode())
                site.pusher.push_manifest(REPO, variant, f"t{i}")
                site.sign(variant.digest)
            on, off = [], []
            for _ in range(args.pairs):
                off.append(cycle(site, args.tags, False, scratch))
                on.append(cycle(site, args.tags, True, scratch))
            per_tag = (statistics.median(on) - statistics.median(off)) / args.tags * 1000
            results["cycle"] = {"tags": args.tags, "without_policy_s": [round(t, 3) for t in off],
                                "with_policy_s": [round(t, 3) for t in on], "ms_per_tag": round(per_tag, 2)}
            print(f"cycle     {results['cycle']}")
        finally:
            site.server.stop()
    out = ROOT / ".bench" / "signatures.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    assert isinstance(results["unsigned"], dict) and not results["unsigned"]["accepted"]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
