"""Running the service: the scheduler and the HTTP listener until a signal.

Apart from the `reconcile` command, so `--once` and `--dry-run` do not load
uvicorn, the scheduler and the web app they never use.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from typing import Dict, List, Optional

import uvicorn

from .reconcile import Reconciler
from .server import build_app
from .service import Service
from .watchlist import Watchlist


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM after
    stopping and kill the process before the current cycle can finish."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]  # uvicorn >= 0.29
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


def serve(watchlist: Watchlist, reconciler: Reconciler, secrets: Dict[str, str],
          listener: Optional[socket.socket], listen: str = "") -> None:
    """Run the service until SIGTERM or SIGINT. The current cycle finishes first
    (its transaction published or aborted), then the reconciler is closed (its
    locks released) and a last line says "stopped", so an admin reading the
    journal knows the service is down and why."""
    log = logging.getLogger("reconciler")
    received: List[str] = []
    stop = threading.Event()
    server: Optional[_Server] = None

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()
        if server is not None:
            server.should_exit = True

    service: Optional[Service] = None
    try:
        service = Service(watchlist, reconciler)
        if listener is not None:
            config = uvicorn.Config(build_app(service, secrets), log_level="warning", lifespan="off", access_log=False)
            server = _Server(config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        service.start()
        if server is not None:
            log.info("service listening on %s (webhooks: %s; status page: http://%s/)", listen,
                     ", ".join(sorted(secrets)) or "none", listen)
            server.run(sockets=[listener])  # returns once a signal asked it to exit
        else:
            log.info("service running without an HTTP listener (no [service] listen or --listen): "
                     "no webhooks, no status page")
            stop.wait()
    finally:
        why = f"{received[0]} received" if received else "shutting down"
        if service is not None:
            log.info("%s: stopping", why)
            service.stop()  # waits for the cycle in progress
        reconciler.close()
        cycles = service.cycles_done if service is not None else 0
        log.info("stopped after %d cycle%s", cycles, "" if cycles == 1 else "s")
