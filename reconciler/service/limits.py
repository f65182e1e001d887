"""How long and how much the service's HTTP listener gives its clients.

A request head must be complete within HEAD_TIMEOUT_S (listener.py), a body
within BODY_TIMEOUT_S; bodies read before their sender is verified (the HMAC
providers) are capped in number and in bytes, all buffered bodies in bytes
(bodies.BodyBudget); over a cap the answer is 503 at once, never a wait.
"""

from __future__ import annotations

from dataclasses import dataclass

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
