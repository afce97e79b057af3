"""The ``/metrics`` endpoint (``metrics_bind``): its socket, and a request head answered.

:class:`MetricsHTTP` turns a request head into a response and leaves the I/O to its
caller: :func:`serve_http` in a single-process trio server, the supervisor's select loop
with workers. The families it encodes come from ``_metrics``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from .._addresses import parse_bind
from .metrics import exposition

__all__ = ["MetricsHTTP", "bind_metrics", "close_metrics", "serve_http"]

log = logging.getLogger("trioscgi")

# --- the HTTP side: GET /metrics, one request per connection ------------------

MAX_HEAD = 8192
CLIENT_TIMEOUT = 10.0


class MetricsHTTP:
    """Turns a request head into a response; the I/O is the caller's (trio or select)."""

    def __init__(self, source: Callable[[], Iterable[Any]]) -> None:
        self.source = source

    def respond(self, head: bytes) -> bytes:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _plain(400, b"bad request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?")[0] != b"/metrics":
            return _plain(404, b"try /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _plain(405, b"GET /metrics\n", b"Allow: GET, HEAD\r\n")
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"accept":
                accept = value.strip().decode("latin-1")
        body, content_type = exposition(self.source, accept)
        extra = f"Content-Type: {content_type}\r\n".encode()
        return _plain(200, b"" if method == b"HEAD" else body, extra, length=len(body))


def _plain(status: int, body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    from http import HTTPStatus  # noqa: PLC0415

    if not extra.startswith(b"Content-Type"):
        extra = b"Content-Type: text/plain; charset=utf-8\r\n" + extra
    n = len(body) if length is None else length
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        + extra
        + f"Content-Length: {n}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def bind_metrics(address: str) -> socket.socket:
    """Bind and listen on ``metrics_bind``; a stale unix socket file is replaced.

    Raises:
        OSError: the address can't be bound.
    """
    spec = parse_bind(address)
    if spec.kind == "unix":
        assert spec.path is not None
        path = spec.path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not path.startswith("@"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        sock.bind("\0" + path[1:] if path.startswith("@") else path)
    else:
        assert spec.host is not None and spec.port is not None
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.port))
    sock.listen(64)
    sock.set_inheritable(False)
    if spec.kind == "unix":
        log.info("metrics on unix:%s (GET /metrics)", spec.path)
    else:
        host, port = sock.getsockname()[:2]
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)
    return sock


def close_metrics(sock: socket.socket) -> None:
    """Close the metrics listener and remove its unix socket file (not an abstract one)."""
    path = sock.getsockname() if sock.family == socket.AF_UNIX else None
    sock.close()
    if isinstance(path, str) and path and not path.startswith("\0"):
        try:
            os.unlink(path)
        except OSError:
            pass


# --- in a trio process ----------------------------------------------------------


async def serve_http(sock: socket.socket, http: MetricsHTTP) -> None:
    """Serve ``GET /metrics`` on ``sock`` (a single-process server), until cancelled."""
    import trio  # noqa: PLC0415

    listener = trio.socket.from_stdlib_socket(sock)
    async with trio.open_nursery() as nursery:
        while True:
            client, _ = await listener.accept()
            nursery.start_soon(_serve_one, client, http)


async def _serve_one(client: Any, http: MetricsHTTP) -> None:
    import trio  # noqa: PLC0415

    with client:
        head = b""
        with trio.move_on_after(CLIENT_TIMEOUT):
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                try:
                    data = await client.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                head += data
            response = http.respond(head.partition(b"\r\n\r\n")[0])
            try:
                while response:
                    response = response[await client.send(response) :]
            except OSError:
                return
