"""Type aliases, exit codes and small words, shared by every layer (a leaf)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# What a socket write takes.
Bytes = bytes | bytearray | memoryview

# The most one socket read takes: the wires read this much, and the WebSocket session
# takes a shorter read as "drained".
RECV_SIZE = 65536

# The daemon's exit codes (docs/configuration.md): a clean stop, a runtime
# error (a bind failed, a crash loop), a usage or config error (including an
# app that can't be loaded), a lifespan startup failure.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_LIFESPAN = 3


def counted(n: int, noun: str) -> str:
    """``"1 worker"``, ``"2 workers"``: a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
