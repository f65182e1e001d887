"""The `reconcile` command.

    reconcile --once [--watchlist F] [--dry-run] [--log-format plain|json]
    reconcile [--watchlist F] [--listen HOST:PORT]       (the service)

Exit codes: 0 everything converged, 1 an image or entry failed (the summary
names each with its reason), 2 a configuration error (nothing touched).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import uvicorn

from . import __version__
from .errors import ConfigError, ReconcilerError
from .progress import ProgressAwareHandler, TerminalProgress
from .reconcile import Reconciler
from .server import build_app, load_hook_secrets
from .service import Service
from .watchlist import load_watchlist

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(log_format: str, verbose: bool) -> Optional[TerminalProgress]:
    """Plain lines or JSON lines on stderr; with plain lines on a terminal, also a
    progress line (returned, not yet started)."""
    progress = TerminalProgress(sys.stderr) if log_format == "plain" and sys.stderr.isatty() else None
    handler: logging.Handler = ProgressAwareHandler(sys.stderr, progress) if progress else logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # httpx logs every request URL and APScheduler every job run at INFO; keep them for --verbose.
    for noisy in ("httpx", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return progress


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM after
    stopping and kill the process before the current cycle can finish."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]  # uvicorn >= 0.29
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


def serve(watchlist, reconciler: Reconciler, secrets, listen: Optional[str]) -> int:
    """Run the service until SIGTERM or SIGINT; the current cycle finishes first."""
    log = logging.getLogger("reconciler")
    service = Service(watchlist, reconciler)
    service.start()
    try:
        if listen:
            host, _, port = listen.rpartition(":")
            config = uvicorn.Config(build_app(service, secrets), host=host.strip("[]"), port=int(port),
                                    log_level="warning", lifespan="off", access_log=False)
            server = _Server(config)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
            log.info("service listening on %s (webhooks: %s)", listen, ", ".join(sorted(secrets)) or "none")
            server.run()  # returns once a signal asked it to exit
        else:
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            log.info("service running without an HTTP listener (no [service] listen or --listen)")
            stop.wait()
    finally:
        log.info("stopping: letting the current cycle finish")
        service.stop()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reconcile", description="Keep a CVMFS repository (or a local directory) "
                                     "in step with container images in OCI registries.")
    parser.add_argument("--watchlist", type=Path, default=Path("watchlist.toml"),
                        help="the watchlist file (default: ./watchlist.toml)")
    parser.add_argument("--once", action="store_true", help="converge once and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the plan without changing anything")
    parser.add_argument("--listen", metavar="HOST:PORT", help="service mode: where to accept webhooks")
    parser.add_argument("--log-format", choices=("plain", "json"), default="plain")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"reconcile {__version__}")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    progress = setup_logging(args.log_format, args.verbose)
    log = logging.getLogger("reconciler")
    try:
        watchlist = load_watchlist(args.watchlist)
    except ConfigError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    secrets = {}
    if not (args.once or args.dry_run):
        try:
            secrets = load_hook_secrets(watchlist.webhooks, watchlist.path.name)
        except ConfigError as exc:
            print(f"reconcile: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        reconciler = Reconciler(watchlist, progress=progress)
    except ConfigError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ReconcilerError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILED
    if not (args.once or args.dry_run):
        try:
            return serve(watchlist, reconciler, secrets, args.listen or watchlist.listen)
        finally:
            reconciler.close()
    if progress is not None:
        progress.start()
    try:
        report = reconciler.run_once(dry_run=args.dry_run)
    except ConfigError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ReconcilerError as exc:
        log.error("cycle failed: %s", exc)
        return EXIT_FAILED
    finally:
        if progress is not None:
            progress.stop()
        reconciler.close()
    print(("plan: " if args.dry_run else "") + report.summary())
    return EXIT_FAILED if report.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
