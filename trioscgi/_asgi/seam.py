"""The seam between a wire and the ASGI layer: all either side knows of the other.

A wire (``_wire.scgi``, ``_wire.fastcgi``) implements :class:`Wire` for each request (and
:class:`Tunnel` where the front-end opens a raw stream after a ``101``); the server
implements :class:`CycleHost`; the ASGI layer (``dispatch``, ``http``, ``websocket``) uses
them and :func:`error_response`, the one home of the errors trioscgi answers itself
(:func:`error_bytes`: the same as a CGI response, for the wires' own answers). Nothing
here imports the rest of the ASGI layer, so the HTTP cycle and the WebSocket session can
both import it without importing each other (docs/architecture.md).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from .. import scgi as p
from .._cgi import cgi_head
from .._types import ASGIApp, Bytes

if TYPE_CHECKING:
    from .._accesslog import AccessLogger
    from .._config import Config
    from .._counters import WorkerMetrics

__all__ = ["CycleHost", "Session", "Tunnel", "Wire", "error_bytes", "error_response"]


class Wire(Protocol):
    """What a wire layer does for one request; every method may raise ``Cancelled``."""

    async def read_body(self) -> tuple[bytes, bool]:
        """The next chunk of the request body and whether more follows.

        Raises:
            ClientDisconnected: the front-end went away, broke the framing, or stalled
                for read_timeout; the message says which.
        """

    async def write(self, head: p.Response | None, body: Bytes, more: bool) -> None:
        """Write the response head (the first time) and ``body``; ``more=False`` ends it.

        Raises:
            ClientDisconnected: the front-end is gone or stopped reading.
        """

    async def write_file(
        self, head: p.Response | None, fd: int, offset: int, count: int, more: bool
    ) -> int:
        """Like :meth:`write` with ``count`` bytes of the file ``fd``; return how many went.

        Fewer than ``count`` means the file ended early: the response is then not
        complete, whatever ``more`` said.

        Raises:
            ClientDisconnected: the front-end is gone or stopped reading.
            OSError: the file could not be read.
        """

    async def wait_disconnect(self) -> None:
        """Return once the front-end has gone away (the response is not complete)."""

    async def drain(self) -> None:
        """After a complete response: consume the unread rest of the body, bounded."""

    def abort(self) -> None:
        """The response was started and cannot be completed: make the front-end see a cut."""


class CycleHost(Protocol):
    """What the cycle needs from the server that accepted the connection (read-only)."""

    @property
    def app(self) -> ASGIApp: ...
    @property
    def config(self) -> Config: ...
    @property
    def state(self) -> dict[str, Any] | None:
        """The lifespan state: each scope gets a shallow copy; ``None`` for no ``state`` key."""

    @property
    def access_logger(self) -> AccessLogger | None: ...
    @property
    def metrics(self) -> WorkerMetrics | None:
        """The process's counters; ``None`` (and nothing counted) with metrics_bind unset."""

    @property
    def warn_request(self) -> Callable[..., None]:
        """A rate-limited warning about a request (peers choose how often it fires)."""

    @property
    def websocket_sessions(self) -> set[Session]:
        """The open WebSocket sessions (graceful shutdown closes them with 1001)."""

    def request_cut(self, scope: dict[str, Any], started: float) -> None:
        """The request's task was cancelled while the app ran (``started``: trio time)."""

    def request_served(self) -> None:
        """Count one request against ``max_requests`` (requests, not connections)."""


@functools.cache
def error_response(status: int) -> tuple[p.Response, bytes]:
    """The head and body of an error trioscgi answers itself (plain text), built once per
    status: the one home of these answers, for the cycles and the wires alike."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n".encode()
    head = p.Response(
        status=status,
        headers=[
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ],
    )
    return head, body


@functools.cache
def error_bytes(status: int) -> bytes:
    """:func:`error_response` as a whole CGI response (head and body), for a wire that
    answers a request itself before any cycle runs (a bad head, a refused body)."""
    head, body = error_response(status)
    return cgi_head(head.status, head.headers) + body


class Tunnel(Protocol):
    """The raw byte stream after a ``101`` (an SCGI connection's socket)."""

    sock: socket.socket

    async def recv_unbounded(self) -> bytes:
        """What the peer sent next; ``b""`` at EOF. Raises ``OSError`` on a reset."""

    async def recv_when_readable(self) -> bytes:
        """:meth:`recv_unbounded`, waiting for the socket first (nothing is there yet)."""

    async def sendall(self, data: Bytes, *, checked: bool = False) -> None:
        """Write all of ``data`` (``checked``: the caller has just checked for
        cancellation). Raises :class:`ClientDisconnected` when the peer is gone."""

    def abort(self) -> None:
        """Close with a reset rather than a clean EOF (the session was cut, not closed)."""


class Session(Protocol):
    """An open WebSocket session, as the server sees it."""

    def going_away(self) -> None:
        """Close with 1001 (the server is shutting down)."""
