"""A threaded HTTP/1.1 server on a free 127.0.0.1 port, for the test peers that
answer registry requests by hand (the fault proxy, the garbage registry)."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from tests.registry_server import free_port

Handle = Callable[[BaseHTTPRequestHandler, str], None]  # (request, method) -> answers it


class LoopbackServer:
    """Serves GET and HEAD with `handle` until `close()`; `host` is `127.0.0.1:PORT`."""

    def __init__(self, handle: Handle) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                handle(self, "GET")

            def do_HEAD(self) -> None:  # noqa: N802
                handle(self, "HEAD")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
                # Clients giving up on a slow, broken or garbage answer is what these peers provoke.
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
