"""The service's HTTP listener (Starlette on uvicorn).

    POST /hooks/<provider>[/<token>]   webhook hints (202 at once; 401 bad secret; 400 bad body)
    GET  /healthz                      200 while the scheduler and the runner are alive
    GET  /metrics                      Prometheus text format
    GET  /status                       JSON: per image and tag, digest, published, last error, next poll
    GET  /                             the status page (HTML, rendered from the /status data)

Nobody outside can hold the listener: a request head must be complete within
HEAD_TIMEOUT_S (serve.py), a body within BODY_TIMEOUT_S; bodies read before
their sender is verified (the HMAC providers) are capped in number and in
bytes, all buffered bodies in bytes (BodyBudget); over a cap the answer is 503
at once, never a wait. The page handlers run in worker threads, so a slow
state database never stalls the event loop that answers webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Set

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .errors import ConfigError
from .registry.credentials import read_secret
from .service import Service
from .status_page import PAGE_HEADERS, render_page
from .watchlist import WebhookConfig
from .webhooks import MAX_BODY_BYTES, HookRejected, ReplayGuard, matching_entries, verify_body, verify_headers

log = logging.getLogger(__name__)


# A request head is a few hundred bytes sent at once; a client that has not
# finished one after this long is stalling, not slow.
HEAD_TIMEOUT_S = 5.0
# An idle keep-alive connection is closed after this long (uvicorn's default, made explicit).
KEEP_ALIVE_S = 5.0
# Webhook bodies are a few KiB (MAX_BODY_BYTES at most); 10 s is ample for a sender
# on any network, and bounds how long a stranger keeps a body read open.
BODY_TIMEOUT_S = 10.0
# GitHub and generic bodies must be read before their HMAC can be checked: at most
# this many such reads at once, holding at most this many bytes together (real
# ones are a few KiB; 4 MiB still takes four of the largest allowed). More
# strangers get 503 at once instead of memory (a real sender retries, or the
# next poll catches up).
MAX_UNVERIFIED_READS = 32
MAX_UNVERIFIED_BYTES = 4 << 20
# All buffered bodies together, verified senders' included: leaves at least
# 4 MiB to senders whose token was checked in the headers. The process grows by
# about twice the bytes held (copies on the way from the socket), however many
# clients stall.
MAX_BUFFERED_BYTES = 8 << 20
# Open connections; more are closed on accept. Well under the usual 1024-fd limit,
# well over what a handful of registries and status readers need.
MAX_CONNECTIONS = 256
# On SIGTERM, requests in progress get this long to finish (idle connections
# are closed at once); then body reads still waiting are answered 503, and
# whatever is left after SHUTDOWN_BACKSTOP_S more is cancelled and dropped.
SHUTDOWN_GRACE_S = 3.0
SHUTDOWN_BACKSTOP_S = 2.0


@dataclass(frozen=True)
class ListenerLimits:
    """How long and how much the listener gives clients. The defaults are the
    production values; tests pass shorter timeouts."""

    head_timeout_s: float = HEAD_TIMEOUT_S
    keep_alive_s: float = KEEP_ALIVE_S
    body_timeout_s: float = BODY_TIMEOUT_S
    unverified_reads: int = MAX_UNVERIFIED_READS
    unverified_bytes: int = MAX_UNVERIFIED_BYTES
    buffered_bytes: int = MAX_BUFFERED_BYTES
    connections: int = MAX_CONNECTIONS
    shutdown_grace_s: float = SHUTDOWN_GRACE_S


def load_hook_secrets(webhooks: Dict[str, WebhookConfig], file: str) -> Dict[str, str]:
    """Read every configured webhook secret now, so a missing one stops the start (exit 2).
    Read as registry passwords are (`read_secret`): a file's trailing newline is
    dropped, nothing else."""
    secrets: Dict[str, str] = {}
    for provider, config in webhooks.items():
        where = f"{file}: webhooks.{provider}"
        if not (config.token_file or config.token_env):
            raise ConfigError(f"{where}: give token_env or token_file (the shared secret for this provider)")
        secrets[provider] = read_secret(owner=where, password_file=config.token_file, password_env=config.token_env,
                                        file_key="token_file", env_key="token_env")
        if len(secrets[provider]) < 16:
            raise ConfigError(f"{where}: the secret is shorter than 16 characters; use a long random one")
    return secrets


class BodyBudget:
    """The bodies being buffered: their bytes in total, and how many (and how
    many bytes) come from senders not yet verified. Used only on the event
    loop's thread, so it needs no lock."""

    def __init__(self, limits: ListenerLimits) -> None:
        self.limits = limits
        self.total_bytes = 0
        self.unverified_bytes = 0
        self.unverified_reads = 0

    @contextlib.contextmanager
    def hold(self, verified: bool) -> Iterator["BodyHold"]:
        """A hold on the budget for one body, released on exit. Raises
        HookRejected(503) when `verified` is False and the unverified reads are
        at their cap."""
        if not verified:
            if self.unverified_reads >= self.limits.unverified_reads:
                raise HookRejected(503, f"{self.unverified_reads} unverified webhook bodies are being read "
                                        "already; try again later")
            self.unverified_reads += 1
        held = BodyHold(self, verified)
        try:
            yield held
        finally:
            self.total_bytes -= held.bytes
            if not verified:
                self.unverified_bytes -= held.bytes
                self.unverified_reads -= 1

    def _take(self, n: int, verified: bool) -> None:
        if self.total_bytes + n > self.limits.buffered_bytes or \
                (not verified and self.unverified_bytes + n > self.limits.unverified_bytes):
            raise HookRejected(503, "too many webhook bodies are being received at once; try again later")
        self.total_bytes += n
        if not verified:
            self.unverified_bytes += n


class BodyHold:
    """One body's share of a BodyBudget."""

    def __init__(self, budget: BodyBudget, verified: bool) -> None:
        self.budget = budget
        self.verified = verified
        self.bytes = 0

    def take(self, n: int) -> None:
        """Account `n` more bytes; HookRejected(503) when the budget has no room."""
        self.budget._take(n, self.verified)
        self.bytes += n


async def _read_capped(request: Request, hold: BodyHold) -> bytes:
    """The request body, each chunk accounted in `hold` before it is kept.
    HookRejected 413 when it is (or says it is) over MAX_BODY_BYTES, 503 when
    the budget has no room."""
    declared = request.headers.get("content-length")
    # fullmatch on ASCII digits: str.isdigit() would also take "²" and int() then fail.
    if declared and re.fullmatch(r"[0-9]+", declared) and int(declared) > MAX_BODY_BYTES:
        raise HookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > MAX_BODY_BYTES:
            raise HookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
        hold.take(len(chunk))
        body += chunk
    return bytes(body)


class Drain:
    """Started when the listener stops: body reads still waiting then end at
    once (answered 503), so the shutdown need not cancel their handlers. Used
    on the event loop's thread only; bound to no loop until a read waits."""

    def __init__(self) -> None:
        self.started = False
        self._waiting: "Set[asyncio.Future[None]]" = set()

    def start(self) -> None:
        self.started = True
        for future in self._waiting:
            if not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        """Return once started."""
        if self.started:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.add(future)
        try:
            await future
        finally:
            self._waiting.discard(future)


async def _read_within(request: Request, hold: BodyHold, timeout: float, drain: Drain) -> bytes:
    """`_read_capped`, but HookRejected 408 after `timeout` seconds and 503
    as soon as the drain starts."""
    read = asyncio.ensure_future(_read_capped(request, hold))
    stopping = asyncio.ensure_future(drain.wait())
    try:
        done, _ = await asyncio.wait({read, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (read, stopping):
            task.cancel()  # the one still waiting; no-op on a finished one
    if read in done:
        return read.result()
    if stopping in done:
        raise HookRejected(503, "the service is stopping; send the hook again later")
    raise HookRejected(408, f"the body did not arrive within {timeout:g} s")


# Answers that end the connection: the client may still be sending a body we
# will not read, and a stalled client must not keep the socket.
_CLOSE = {"Connection": "close"}
_OUTCOMES = {413: "too_large", 503: "busy", 408: "timeout"}

def _refused(request: Request, provider: str, exc: HookRejected) -> Response:
    """Log a refused hook (the reason never includes a secret) and answer it."""
    log.warning("webhook %s from %s refused: %s", provider, request.client.host if request.client else "?", exc)
    headers = _CLOSE if exc.status in _OUTCOMES else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


def build_app(service: Service, secrets: Dict[str, str], limits: ListenerLimits = ListenerLimits(),
              drain: Optional[Drain] = None) -> Starlette:
    """The ASGI application of a running service; `drain`, when given, ends its
    waiting body reads when the listener stops."""
    replays = ReplayGuard()
    budget = BodyBudget(limits)
    drain = Drain() if drain is None else drain
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
        # Token providers were authenticated by their headers; the HMAC ones
        # (a signature to check) are strangers until their body is read.
        verified = checked.signature is None
        try:
            with budget.hold(verified) as hold:
                body = await _read_within(request, hold, limits.body_timeout_s, drain)
                hints = verify_body(checked, secret, body, now=now, replays=replays)
        except HookRejected as exc:
            service.metrics.hooks.labels(provider, _OUTCOMES.get(exc.status, "rejected")).inc()
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
