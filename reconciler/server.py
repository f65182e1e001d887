"""The service's HTTP listener (Starlette on uvicorn).

    POST /hooks/<provider>[/<token>]   webhook hints (202 at once; 401 bad secret; 400 bad body)
    GET  /healthz                      200 while the scheduler and the runner are alive
    GET  /metrics                      Prometheus text format
    GET  /status                       JSON: per image and tag, digest, published, last error, next poll
    GET  /                             the status page (HTML, rendered from the /status data)
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Dict, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .errors import ConfigError
from .service import Service
from .status_page import PAGE_HEADERS, render_page
from .watchlist import WebhookConfig
from .webhooks import MAX_BODY_BYTES, HookRejected, ReplayGuard, matching_entries, verify_body, verify_headers

log = logging.getLogger(__name__)


def load_hook_secrets(webhooks: Dict[str, WebhookConfig], file: str) -> Dict[str, str]:
    """Read every configured webhook secret now, so a missing one stops the start (exit 2)."""
    import os

    secrets: Dict[str, str] = {}
    for provider, config in webhooks.items():
        where = f"{file}: webhooks.{provider}"
        if config.token_file:
            try:
                secrets[provider] = Path(config.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{where}.token_file: cannot read {config.token_file}: {exc.strerror}") from None
        elif config.token_env:
            value = os.environ.get(config.token_env)
            if not value:
                raise ConfigError(f"{where}.token_env: environment variable {config.token_env} is not set")
            secrets[provider] = value
        else:
            raise ConfigError(f"{where}: give token_env or token_file (the shared secret for this provider)")
        if len(secrets[provider]) < 16:
            raise ConfigError(f"{where}: the secret is shorter than 16 characters; use a long random one")
    return secrets


async def _read_capped(request: Request) -> Optional[bytes]:
    """The request body, or None when it is (or says it is) over MAX_BODY_BYTES."""
    declared = request.headers.get("content-length")
    # fullmatch on ASCII digits: str.isdigit() would also take "²" and int() then fail.
    if declared and re.fullmatch(r"[0-9]+", declared) and int(declared) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def _refused(request: Request, provider: str, exc: HookRejected) -> Response:
    """Log a refused hook (the reason never includes a secret) and answer it."""
    log.warning("webhook %s from %s refused: %s", provider, request.client.host if request.client else "?", exc)
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


def build_app(service: Service, secrets: Dict[str, str]) -> Starlette:
    """The ASGI application of a running service."""
    replays = ReplayGuard()
    entries = [(e.index, e.source.registry, e.source.repository) for e in service.watchlist.images]

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
        body = await _read_capped(request)
        if body is None:
            service.metrics.hooks.labels(provider, "too_large").inc()
            return JSONResponse({"error": f"body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            hints = verify_body(checked, secret, body, now=now, replays=replays)
        except HookRejected as exc:
            service.metrics.hooks.labels(provider, "rejected").inc()
            return _refused(request, provider, exc)
        matched = matching_entries(hints, entries)
        service.metrics.hooks.labels(provider, "accepted").inc()
        if matched:
            log.info("webhook %s: polling %s soon", provider,
                     ", ".join(e.label for e in service.watchlist.images if e.index in matched))
            service.nudge(matched)
        return JSONResponse({"accepted": True}, status_code=202)

    async def healthz(request: Request) -> Response:
        ok = service.healthy
        return JSONResponse({"status": "ok" if ok else "unhealthy"}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        return JSONResponse(service.status())

    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(service.status()), headers=PAGE_HEADERS)

    return Starlette(routes=[
        Route("/hooks/{provider}", hook, methods=["POST"]),
        Route("/hooks/{provider}/{token}", hook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ])
