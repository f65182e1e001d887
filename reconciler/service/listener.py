"""The service's HTTP listener: uvicorn serving the web app (app.py) with
what uvicorn lacks: a deadline for each request head, a cap on open
connections, no signal handling of its own, and a shutdown that answers the
stalled body reads and drops what is still open after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Dict, Iterator, List, Optional

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import build_app
from .bodies import Drain
from .limits import SHUTDOWN_BACKSTOP_S, ListenerLimits
from .scheduler import Service

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

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # h11 types it BaseTransport
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


class ListeningServer(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM after
    stopping and kill the process before the current cycle can finish. On
    shutdown, the app's drain starts after the grace."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
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



def listening_server(service: Service, secrets: Dict[str, str], limits: ListenerLimits) -> ListeningServer:
    """The uvicorn server of the service's web app, within `limits`; it serves
    once `run(sockets=[listener])` is called, until its `should_exit` is set."""
    drain = Drain()
    config = uvicorn.Config(build_app(service, secrets, limits, drain), log_level="warning", lifespan="off",
                            access_log=False, http=_protocol_class(limits),
                            # uvicorn types both as int, and takes any number of seconds.
                            timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]  # float seconds
                            timeout_graceful_shutdown=limits.shutdown_grace_s + SHUTDOWN_BACKSTOP_S,  # type: ignore[arg-type]  # float
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES, backlog=LISTEN_BACKLOG)
    return ListeningServer(config, drain, limits.shutdown_grace_s)
