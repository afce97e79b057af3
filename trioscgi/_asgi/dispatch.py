"""From a parsed request to its ASGI run: the scope, then an HTTP cycle or a WebSocket session.

A wire hands :func:`serve_request` the CGI variables it parsed, its :class:`~.seam.Wire`
and, when the front-end can open a raw stream after a ``101`` (SCGI, uwsgi), a
:class:`~.seam.Tunnel`. This is the one module that knows both the HTTP cycle (``http``)
and the WebSocket session (``websocket``), so neither imports the other.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .http import HTTPCycle
from .scope import ScopeError, http_scope

if TYPE_CHECKING:
    from .seam import CycleHost, Tunnel, Wire

__all__ = ["serve_request"]

log = logging.getLogger("trioscgi")


async def serve_request(
    wire: Wire,
    host: CycleHost,
    environ: list[tuple[bytes, bytes]],
    *,
    body_done: bool,
    protocol: str = "scgi",
    tunnel: Tunnel | None = None,
) -> None:
    """Serve one request whose head the wire layer has parsed.

    Args:
        wire: the request's way to the front-end.
        host: the server that accepted the connection.
        environ: the CGI variables in wire order, duplicates kept.
        body_done: the whole body is already known (empty): ``receive()`` needs no I/O.
        protocol: the one that carried them, "scgi", "fastcgi" or "uwsgi" (where the
            scope keeps them raw, the path rules of uwsgi's front-ends, what a 400 for a
            missing REQUEST_METHOD advises, the metrics' label).
        tunnel: the raw stream the front-end opens after a 101, when the wire has one
            (SCGI, uwsgi): a WebSocket handshake then runs as a WebSocket session.

    Each request is counted (``host.request_served()``) once it ends.
    """
    try:
        notes: list[str] = []
        try:
            scope = http_scope(
                environ,
                root_path=host.config.root_path,
                state=host.state,
                notes=notes,
                wire=protocol,
                websocket=tunnel is not None,
            )
        except ScopeError as exc:
            log.info("bad request: %s; answered 400", exc)
            if host.metrics is not None:
                host.metrics.rejected(400)
            await HTTPCycle(wire, host).refuse(400, body_done=body_done)
            return
        for note in notes:
            host.warn_request("%s %s: %s", scope.get("method", "GET"), scope["path"], note)
        if scope["type"] == "http":
            await HTTPCycle(wire, host).run(scope, body_done=body_done, protocol=protocol)
            return
        from .websocket import WebSocketCycle  # noqa: PLC0415 - wsproto: an extra

        assert tunnel is not None
        session = WebSocketCycle(wire, tunnel, host)
        if host.metrics is None:
            await session.run(scope)
            return
        host.metrics.websocket_open += 1
        try:
            await session.run(scope)
        finally:
            host.metrics.websocket_done(session.status, session.close_code)
    finally:
        # The one place every request passes, whatever its wire: max_requests counts here.
        host.request_served()
