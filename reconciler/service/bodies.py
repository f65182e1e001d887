"""Reading webhook bodies within the listener's limits: a byte budget shared
by all bodies being read (tighter for senders not yet verified), a deadline,
and a drain that ends the waiting reads when the listener stops."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Iterator, Set

from starlette.requests import ClientDisconnect, Request

from ..webhooks import MAX_BODY_BYTES, HookRejected
from .limits import ListenerLimits


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


async def read_capped(request: Request, hold: BodyHold) -> bytes:
    """The request body, each chunk accounted in `hold` before it is kept.
    HookRejected 413 when it is (or says it is) over MAX_BODY_BYTES, 503 when
    the budget has no room."""
    declared = request.headers.get("content-length")
    # fullmatch on ASCII digits: str.isdigit() would also take "²" and int() then fail.
    if declared and re.fullmatch(r"[0-9]+", declared) and int(declared) > MAX_BODY_BYTES:
        raise HookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > MAX_BODY_BYTES:
                raise HookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
            hold.take(len(chunk))
            body += chunk
    except ClientDisconnect:  # a client that hangs up mid-body: a refusal like any other, no traceback
        raise HookRejected(400, "the client went away before its body was complete") from None
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


async def read_within(request: Request, hold: BodyHold, timeout: float, drain: Drain) -> bytes:
    """`read_capped`, but HookRejected 408 after `timeout` seconds and 503
    as soon as the drain starts."""
    read = asyncio.ensure_future(read_capped(request, hold))
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
