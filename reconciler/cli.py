"""The `reconcile` command.

    reconcile --once [--watchlist F] [--log-format plain|json]   (one pass, then exit)
    reconcile --dry-run [--watchlist F]                          (the plan only)
    reconcile [--watchlist F] [--listen HOST:PORT]               (the service, until SIGTERM)
    reconcile compare PUBLISHED OURS [--hash]                    (two trees of a tag: same, or why not)
    reconcile import --format osg|ducc FILE                      (a list as [[image]] tables)

Exit codes: `EXIT_CODES` below, the one list `--help` prints (the README's
table is checked against it by tests/test_cli_help.py).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import __version__
from .errors import BusyError, ConfigError, ReconcilerError, StartError
from .progress import ProgressAwareHandler, TerminalProgress
from .reconcile import Reconciler
from .safetext import inert
from .watchlist import Watchlist, load_watchlist, parse_listen

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_START, EXIT_BUSY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
DESCRIPTION = """\
Keep a CernVM-FS repository (or a local directory) in step with container
images in OCI registries, as the watchlist file says: which images and tags,
for which platforms, published where.

three ways to run it:
  reconcile --once     one pass: check every watched tag, download and publish
                       what changed, remove tags no longer watched; then exit
                       with one of the codes below
  reconcile            without --once it runs as a service, until SIGTERM or
                       Ctrl-C: it checks each [[image]] at its interval (and
                       soon after a registry's webhook says something was
                       pushed) and publishes what changed. With --listen (or
                       [service] listen) it also serves a status page at /,
                       /status, /metrics, /healthz and the webhooks. On SIGTERM
                       it finishes the current cycle, logs "stopped" and exits 0
  reconcile --dry-run  print what --once would change, and change nothing
                       (takes no lock: safe beside a running service)

  reconcile import --format osg|ducc FILE
                       print another tool's image list as [[image]] tables
                       (see `reconcile import --help`)"""
# Each exit code and what it means, as `--help` prints it (wrapped at 80 columns).
EXIT_CODES: Tuple[Tuple[int, str], ...] = (
    (EXIT_OK, "everything converged (the service: stopped by SIGTERM or Ctrl-C)"),
    (EXIT_FAILED, "an image or entry failed (the summary names each with its reason)"),
    (EXIT_CONFIG, "a configuration error; nothing was touched"),
    (EXIT_START, "cannot start: a directory not writable, the port in use, cvmfs_server missing (the message "
                 "says which); nothing was touched"),
    (EXIT_BUSY, "another reconciler holds the lock on this state directory or publish target; nothing was "
                "touched"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C during --once); nothing is half-published"),
)
EXIT_CODES_HELP = "exit codes:\n" + "\n".join(
    textwrap.fill(meaning, 80, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7)
    for code, meaning in EXIT_CODES)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line a record: the message is made
    inert (a registry's newline or escape sequence cannot forge a line or
    steer the terminal) and a traceback's lines are indented, so no line of
    it can pass for a record of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = inert(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]  # logging's own signature
        return _indented_inert(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented_inert(stack_info)


def _indented_inert(text: str) -> str:
    """A traceback's lines, each made inert and indented: none passes for a record."""
    return "\n".join("    " + inert(line) for line in text.split("\n"))


def setup_logging(log_format: str, verbose: bool) -> Optional[TerminalProgress]:
    """Plain lines or JSON lines on stderr; with plain lines on a terminal, also a
    progress line (returned, not yet started)."""
    progress = TerminalProgress(sys.stderr) if log_format == "plain" and sys.stderr.isatty() else None
    handler: logging.Handler = (ProgressAwareHandler(sys.stderr, progress) if progress
                                else logging.StreamHandler(sys.stderr))
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # httpx logs every request URL and APScheduler every job run at INFO; keep them for --verbose.
    for noisy in ("httpx", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return progress


def bind_listener(listen: str, source: str) -> socket.socket:
    """The service's listening socket, bound now, so that a bad address or a port
    in use stops the start with one line (ConfigError or StartError), before
    anything else is touched. `source` names where `listen` came from."""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartError(f"{source}: cannot resolve host {host!r} ({exc.strerror}); give an address such as "
                         "127.0.0.1 or [::1]") from None
    family, _, _, _, address = infos[0]
    try:
        return socket.create_server(address, family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "the port is already in use by another program; stop it or choose another port"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges); choose a port above 1024"
        else:
            reason = exc.strerror or str(exc)
        raise StartError(f"cannot listen on {listen} ({source}): {reason}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line; `--help` says what each mode does and lists the exit codes."""
    parser = argparse.ArgumentParser(prog="reconcile", description=DESCRIPTION, epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchlist", type=Path, default=Path("watchlist.toml"),
                        help="the watchlist file (default: ./watchlist.toml); relative paths in it are taken "
                        "from its directory")
    parser.add_argument("--target", metavar="NAME", help="run only the watchlist's [publish.NAME] target and its "
                        "entries, with <state dir>/targets/NAME as the whole state directory: one publisher node "
                        "of a repository shared out by lease_path (see \"Several publisher nodes\" in the README)")
    parser.add_argument("--once", action="store_true", help="converge once and exit (without it: the service)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan without changing anything (takes no "
                        "lock and writes nothing: safe beside a running service)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="service only: serve webhooks, the status page and "
                        "/metrics here (overrides [service] listen), e.g. 127.0.0.1:8080")
    parser.add_argument("--log-format", choices=("plain", "json"), default="plain",
                        help="log lines on stderr: plain text (default; with a progress line on a terminal) "
                        "or one JSON object a line")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, with tracebacks for unexpected errors")
    parser.add_argument("--version", action="version", version=f"reconcile {__version__}")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:  # a tool of its own: two trees, no watchlist
        from .compare import main as compare

        return compare(argv[1:])

    if argv[:1] == ["import"]:
        from .lists.importer import main as import_main  # its own command line and exit codes

        return import_main(argv[1:])
    args = build_parser().parse_args(argv)
    progress = setup_logging(args.log_format, args.verbose)
    try:
        return _main(args, progress)
    except KeyboardInterrupt:
        print("reconcile: interrupted; nothing is half-published (an open transaction was aborted, "
              "unfinished builds are removed at the next start)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _start(args: argparse.Namespace, progress: Optional[TerminalProgress]
           ) -> Tuple[Watchlist, Dict[str, str], Optional[socket.socket], str, Reconciler]:
    """Read the configuration, bind the listener (service), take the locks and
    recover: everything that can refuse the start, before any work."""
    watchlist = load_watchlist(args.watchlist, node=args.target)
    service = not (args.once or args.dry_run)
    secrets: Dict[str, str] = {}
    listener: Optional[socket.socket] = None
    listen: str = args.listen or watchlist.listen or ""
    if service:
        from .service.hook_secrets import load_hook_secrets  # the service's modules: not loaded for --once

        secrets = load_hook_secrets(watchlist.webhooks, watchlist.path.name)
        if listen:
            listener = bind_listener(listen, "--listen" if args.listen else f"{watchlist.path.name}: service.listen")
    try:
        reconciler = Reconciler(watchlist, progress=progress, read_only=args.dry_run)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    return watchlist, secrets, listener, listen, reconciler


def _main(args: argparse.Namespace, progress: Optional[TerminalProgress]) -> int:
    log = logging.getLogger("reconciler")
    try:
        watchlist, secrets, listener, listen, reconciler = _start(args, progress)
    except ConfigError as exc:
        print(f"reconcile: {inert(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except BusyError as exc:
        print(f"reconcile: {inert(str(exc))}", file=sys.stderr)
        return EXIT_BUSY
    except ReconcilerError as exc:  # StartError and whatever else stops the start
        print(f"reconcile: cannot start: {inert(str(exc))}", file=sys.stderr)
        return EXIT_START
    if not (args.once or args.dry_run):
        from .service.run import serve

        serve(watchlist, reconciler, secrets, listener, listen or "")  # closes the reconciler
        return EXIT_OK
    if progress is not None:
        progress.start()
    try:
        report = reconciler.run_once()  # a --dry-run reconciler is read-only: it only plans
    except ConfigError as exc:
        print(f"reconcile: {inert(str(exc))}", file=sys.stderr)
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
