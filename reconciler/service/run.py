"""Running the service: the scheduler and the HTTP listener until a signal.

Apart from the `reconcile` command, so `--once` and `--dry-run` do not load
uvicorn, the scheduler and the web app they never use.

On SIGTERM or SIGINT the scheduler stops at once (no new cycle starts), the
cycle in progress finishes (published or aborted), and the listener stops
accepting, closes idle connections at once and drops the rest after
ListenerLimits.shutdown_grace_s (stalled webhook bodies are answered 503);
then the last line says "stopped after N cycles".
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Dict, List, Optional

from ..reconcile import Reconciler
from ..watchlist import Watchlist
from .limits import ListenerLimits
from .listener import ListeningServer, listening_server
from .scheduler import Service

log = logging.getLogger("reconciler")


def serve(watchlist: Watchlist, reconciler: Reconciler, secrets: Dict[str, str],
          listener: Optional[socket.socket], listen: str = "", limits: ListenerLimits = ListenerLimits()) -> None:
    """Run the service until SIGTERM or SIGINT. The scheduler stops at the
    signal; the current cycle finishes first (its transaction published or
    aborted), the listener drops what is still connected after the grace,
    then the reconciler is closed (its locks released) and a last line says
    "stopped", so an admin reading the journal knows the service is down and why."""
    received: List[str] = []
    stop = threading.Event()
    server: Optional[ListeningServer] = None

    def on_signal(signum: int, _frame: object) -> None:
        # Only flags here: the stopper thread does the work (a signal handler
        # that blocked would stall the event loop it interrupted).
        received.append(signal.Signals(signum).name)
        stop.set()
        if server is not None:
            server.should_exit = True

    service: Optional[Service] = None
    stopper: Optional[threading.Thread] = None

    def stop_service() -> None:
        assert service is not None
        log.info("%s: stopping", f"{received[0]} received" if received else "shutting down")
        service.stop()  # no new cycle from here; waits for the cycle in progress

    def stop_service_when_asked() -> None:
        stop.wait()
        stop_service()

    try:
        service = Service(watchlist, reconciler)
        if listener is not None:
            server = listening_server(service, secrets, limits)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        service.start()
        stopper = threading.Thread(target=stop_service_when_asked, name="service-stopper")
        stopper.start()
        if server is not None and listener is not None:  # a server only with a listener
            log.info("service listening on %s (webhooks: %s; status page: http://%s/)", listen,
                     ", ".join(sorted(secrets)) or "none", listen)
            server.run(sockets=[listener])  # returns once a signal asked it to exit
        else:
            log.info("service running without an HTTP listener (no [service] listen or --listen): "
                     "no webhooks, no status page")
            stop.wait()
    finally:
        stop.set()  # also when the listener failed: the stopper stops the service
        if stopper is not None:
            stopper.join()
        elif service is not None and service.scheduler.running:  # failed before the stopper started
            stop_service()
        reconciler.close()
        cycles = service.cycles_done if service is not None else 0
        log.info("stopped after %d cycle%s", cycles, "" if cycles == 1 else "s")
