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

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from typing import Dict, List, Optional

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .reconcile import Reconciler
from .server import SHUTDOWN_BACKSTOP_S, Drain, ListenerLimits, build_app
from .service import Service
from .watchlist import Watchlist

# A request head larger than this is refused (400) before it is complete
# (h11's own default, made explicit: headers of any real webhook fit many times).
MAX_HEAD_BYTES = 16 << 10
# Connections waiting in the kernel to be accepted. asyncio accepts up to this
# many in one go before the cap on open connections can close the extra ones,
# so it also bounds how far a burst overshoots that cap (uvicorn's 2048 would
# let a burst open 2048 fds for a moment).
LISTEN_BACKLOG = 64

log = logging.getLogger("reconciler")


def _protocol_class(limits: ListenerLimits) -> type:
    """uvicorn's h11 protocol with what it lacks: a deadline for each request
    head (after connecting, and after each response on a kept-alive
    connection) and a cap on open connections. uvicorn's keep-alive timer is
    cancelled by any byte received, so alone it lets a client that sends half
    a head hold the connection for ever. Always h11 (never httptools, even
    when installed): this relies on H11Protocol's `cycle`, `connections`,
    `transport` and `on_response_complete`."""

    class DeadlineProtocol(H11Protocol):
        _head_deadline: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.connections:
                transport.abort()
                return
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            self._arm_head_deadline()  # before: a pipelined request may start in there
            super().on_response_complete()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)

        def _arm_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            # A new request head makes a new cycle: the same one at the deadline
            # means no head arrived in time.
            waiting_since = self.cycle
            self._head_deadline = self.loop.call_later(limits.head_timeout_s, self._head_overdue, waiting_since)

        def _head_overdue(self, waiting_since: object) -> None:
            if self.cycle is waiting_since and not self.transport.is_closing():
                self.transport.abort()

    return DeadlineProtocol


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM after
    stopping and kill the process before the current cycle can finish. On
    shutdown, the app's drain starts after the grace."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]  # uvicorn >= 0.29
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    async def shutdown(self, sockets: Optional[List[socket.socket]] = None) -> None:
        # uvicorn closes idle connections at once and waits for the others; after
        # the grace the drain answers the stalled body reads. Past
        # timeout_graceful_shutdown it cancels what still runs, but leaves the
        # sockets open: dropped here.
        asyncio.get_running_loop().call_later(self.grace_s, self.drain.start)
        await super().shutdown(sockets)
        stalled = list(self.server_state.connections)
        for connection in stalled:
            connection.transport.abort()
        if stalled:
            log.warning("dropped %d connection%s still open after the shutdown grace",
                        len(stalled), "" if len(stalled) == 1 else "s")


def serve(watchlist: Watchlist, reconciler: Reconciler, secrets: Dict[str, str],
          listener: Optional[socket.socket], listen: str = "", limits: ListenerLimits = ListenerLimits()) -> None:
    """Run the service until SIGTERM or SIGINT. The scheduler stops at the
    signal; the current cycle finishes first (its transaction published or
    aborted), the listener drops what is still connected after the grace,
    then the reconciler is closed (its locks released) and a last line says
    "stopped", so an admin reading the journal knows the service is down and why."""
    received: List[str] = []
    stop = threading.Event()
    server: Optional[_Server] = None

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
            drain = Drain()
            config = uvicorn.Config(build_app(service, secrets, limits, drain), log_level="warning", lifespan="off",
                                    access_log=False, http=_protocol_class(limits),
                                    timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
                                    timeout_graceful_shutdown=limits.shutdown_grace_s + SHUTDOWN_BACKSTOP_S,  # type: ignore[arg-type]
                                    h11_max_incomplete_event_size=MAX_HEAD_BYTES, backlog=LISTEN_BACKLOG)
            server = _Server(config, drain, limits.shutdown_grace_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        service.start()
        stopper = threading.Thread(target=stop_service_when_asked, name="service-stopper")
        stopper.start()
        if server is not None:
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
