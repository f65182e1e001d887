"""The service's web app (Starlette; listener.py serves it with uvicorn).

    POST /hooks/<provider>[/<token>]   webhook hints (202 at once; 401 bad secret; 400 bad body)
    GET  /healthz                      200 while the scheduler and the runner are alive
    GET  /metrics                      Prometheus text format
    GET  /status                       JSON: per image and tag, digest, published, last error, next poll
    GET  /                             the status page (HTML, rendered from the /status data)

Nobody outside can hold the listener: a request head must be complete within
HEAD_TIMEOUT_S (listener.py), a body within BODY_TIMEOUT_S; bodies read before
their sender is verified (the HMAC providers) are capped in number and in
bytes, all buffered bodies in bytes (bodies.BodyBudget); over a cap the answer is 503
at once, never a wait. The page handlers run in worker threads, so a slow
state database never stalls the event loop that answers webhooks.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Dict, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..webhooks import HookRejected, ReplayGuard, matching_entries, verify_body, verify_headers
from .bodies import BodyBudget, Drain, read_within
from .limits import ListenerLimits
from .page import PAGE_HEADERS, render_page
from .scheduler import Service

log = logging.getLogger("reconciler.server")  # its name before the package split

# Answers that end the connection: the client may still be sending a body we
# will not read, and a stalled client must not keep the socket.
_CLOSE = {"Connection": "close"}
_OUTCOMES = {413: "too_large", 503: "busy", 408: "timeout"}


def _refused(request: Request, provider: str, exc: HookRejected) -> Response:
    """Log a refused hook (the reason never includes a secret) and answer it."""
    log.warning("webhook %s from %s refused: %s", provider, request.client.host if request.client else "?", exc)
    headers = _CLOSE if exc.status in _OUTCOMES else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


def _hook_endpoint(service: Service, secrets: Dict[str, str], limits: ListenerLimits,
                   drain: Drain) -> Callable[[Request], Awaitable[Response]]:
    """The handler of `POST /hooks/<provider>[/<token>]`, with its replay guard and body budget."""
    replays = ReplayGuard()
    budget = BodyBudget(limits)

    async def hook(request: Request) -> Response:
        provider = request.path_params["provider"]
        secret = secrets.get(provider)
        if secret is None:
            return JSONResponse({"error": f"webhook provider {provider!r} is not configured"}, status_code=404)
        now = time.time()
        try:
            # Everything the URL and headers can show is checked before the body is
            # read, so a stranger cannot make us read (or wait for) a megabyte.
            checked = verify_headers(provider, secret, request.headers,
                                     path_token=request.path_params.get("token"), now=now)
        except HookRejected as exc:
            service.metrics.hooks.labels(provider, "rejected").inc()
            return _refused(request, provider, exc)
        # Token providers were authenticated by their headers; the HMAC ones
        # (a signature to check) are strangers until their body is read.
        verified = checked.signature is None
        try:
            with budget.hold(verified) as hold:
                body = await read_within(request, hold, limits.body_timeout_s, drain)
                hints = verify_body(checked, secret, body, now=now, replays=replays)
        except HookRejected as exc:
            service.metrics.hooks.labels(provider, _OUTCOMES.get(exc.status, "rejected")).inc()
            return _refused(request, provider, exc)
        # The entries now: a [[list]] file read again at a cycle may have added some.
        entries = [(e.index, e.source.registry, e.source.repository) for e in service.watchlist.images]
        matched = matching_entries(hints, entries)
        service.metrics.hooks.labels(provider, "accepted").inc()
        # In a worker thread: the push time goes to the state database, which
        # may be busy recording a cycle, and the event loop must not wait for it.
        try:
            await run_in_threadpool(service.delivery.hook, hints, service.watchlist.images, now)
        except Exception:  # only the push times are lost: the hook still makes its poll
            log.exception("webhook %s: cannot record its push times", provider)
        if matched:
            log.info("webhook %s: polling %s soon", provider,
                     ", ".join(e.label for e in service.watchlist.images if e.index in matched))
            service.nudge(matched)
        return JSONResponse({"accepted": True}, status_code=202)

    return hook


def build_app(service: Service, secrets: Dict[str, str], limits: ListenerLimits = ListenerLimits(),
              drain: Optional[Drain] = None) -> Starlette:
    """The ASGI application of a running service; `drain`, when given, ends its
    waiting body reads when the listener stops."""
    hook = _hook_endpoint(service, secrets, limits, Drain() if drain is None else drain)

    async def healthz(request: Request) -> Response:
        ok = service.healthy
        return JSONResponse({"status": "ok" if ok else "unhealthy"}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Plain functions: Starlette runs them in a worker thread, so the state
    # database (busy while a cycle records) never blocks the event loop.
    def status(request: Request) -> Response:
        return JSONResponse(service.status())

    def page(request: Request) -> Response:
        return HTMLResponse(render_page(service.status()), headers=PAGE_HEADERS)

    return Starlette(routes=[
        Route("/hooks/{provider}", hook, methods=["POST"]),
        Route("/hooks/{provider}/{token}", hook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ])
