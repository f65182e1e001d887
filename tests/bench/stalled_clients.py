"""`python -m tests.bench.stalled_clients`: what stalled clients cost the service.

Starts the real service (tests/listener_runner.py, production limits unless
--limits gives others) beside an empty loopback docker-registry, then for each
kind of stalled client opens N of them (default 100) and reads the service's
VmRSS and open fds from /proc: before, the peak while they stall, and after
the service has dropped them (or --wait seconds passed). Last, N of each kind
at once, then SIGTERM: the seconds until the process exits. Not a test: it
prints one line per phase and writes the figures to .bench/stalled-clients.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict

from tests.registry_server import start_registry, wait_until
from tests.stalled_clients import ROOT, ServiceProcess, Stallers, fd_count, rss_kib, start_service

KINDS = ("half_head", "trickle_head", "forged_body", "trickle_body")


def phase(service: ServiceProcess, kind: str, n: int, wait: float, settle: float) -> Dict[str, float]:
    """Open n stalled clients of one kind; RSS (MiB) and fds before, at the peak, after."""
    pid = service.proc.pid
    rss0, fds0 = rss_kib(pid), fd_count(pid)
    stallers = Stallers(service.port)
    started = time.monotonic()
    getattr(stallers, kind)(n)
    peak_rss, peak_fds = rss_kib(pid), fd_count(pid)
    hook = service.valid_hook()  # a real sender while strangers stall
    healthy = service.healthy()
    # Sampled until every stalled connection is gone, and for at least `settle`
    # seconds (the body timeout and a little), so the peak and "after" are seen.
    deadline, settle_until = time.monotonic() + wait, started + settle
    dropped_after = None
    while time.monotonic() < deadline:
        peak_rss, peak_fds = max(peak_rss, rss_kib(pid)), max(peak_fds, fd_count(pid))
        if dropped_after is None and fd_count(pid) <= fds0 + 1:
            dropped_after = time.monotonic() - started
        if dropped_after is not None and time.monotonic() >= settle_until:
            break
        time.sleep(0.05)
    rss2, fds2 = rss_kib(pid), fd_count(pid)
    stallers.close()
    return {"clients": n, "rss_before_mib": round(rss0 / 1024, 1), "rss_peak_mib": round(peak_rss / 1024, 1),
            "rss_after_mib": round(rss2 / 1024, 1), "fds_before": fds0, "fds_peak": peak_fds, "fds_after": fds2,
            "dropped_after_s": None if dropped_after is None else round(dropped_after, 1),
            "valid_hook_status": hook, "healthy_while_stalled": healthy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="stalled clients per kind (default 100)")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for them to be dropped (default 30)")
    parser.add_argument("--settle", type=float, default=12.0,
                        help="seconds to watch each phase at least (default 12: the body timeout and 2)")
    parser.add_argument("--limits", default="{}", help="ListenerLimits fields as JSON (default: production values)")
    args = parser.parse_args()
    results: Dict[str, object] = {"limits": json.loads(args.limits)}
    with tempfile.TemporaryDirectory() as tmp:
        registry = start_registry(Path(tmp) / "registry")
        try:
            for kind in KINDS:
                work = Path(tmp) / kind
                work.mkdir()
                service = start_service(work, registry.host, results["limits"])  # type: ignore[arg-type]
                try:
                    service.valid_hook()  # warm the paths before the baseline
                    results[kind] = row = phase(service, kind, args.clients, args.wait, args.settle)
                    print(f"bench: {args.clients} {kind}: RSS {row['rss_before_mib']} -> peak {row['rss_peak_mib']} "
                          f"-> {row['rss_after_mib']} MiB; fds {row['fds_before']} -> peak {row['fds_peak']} -> "
                          f"{row['fds_after']}; all dropped after {row['dropped_after_s']} s; real hook "
                          f"{row['valid_hook_status']}, healthy {row['healthy_while_stalled']}", flush=True)
                finally:
                    service.terminate(timeout=60)
            work = Path(tmp) / "sigterm"
            work.mkdir()
            service = start_service(work, registry.host, results["limits"])  # type: ignore[arg-type]
            stallers = Stallers(service.port)
            try:
                # The slow one first, so the others are all still stalled at the signal.
                for kind in ("forged_body", "half_head", "trickle_head", "trickle_body"):
                    getattr(stallers, kind)(args.clients)
                wait_until(lambda: len(stallers.trickling) == 2 * args.clients, timeout=30,
                           what="every trickling client to have started")
                fds = fd_count(service.proc.pid)
                started = time.monotonic()
                code = service.terminate(timeout=args.wait)
                took = time.monotonic() - started
            finally:
                stallers.close()
            results["sigterm"] = {"clients": args.clients * len(KINDS), "fds_at_signal": fds, "exit_code": code,
                                  "seconds_to_exit": round(took, 2) if code is not None else None,
                                  "last_message": service.messages()[-1:]}
            print(f"bench: SIGTERM with {args.clients * len(KINDS)} stalled clients ({fds} fds): "
                  + (f"exit {code} after {took:.2f} s" if code is not None else f"still running after {args.wait} s (killed)")
                  + f"; last line {service.messages()[-1:]}", flush=True)
        finally:
            registry.stop()
    out = ROOT / ".bench" / "stalled-clients.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"bench: details in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
