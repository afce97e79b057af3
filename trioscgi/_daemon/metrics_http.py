"""The ``/metrics`` endpoint (``metrics_bind``): its socket, and its two servers.

:class:`MetricsHTTP` turns a request head into a response and leaves the I/O to its
caller: :func:`serve_http` in a single-process trio server, :class:`SelectServer` in the
supervisor's blocking select loop with workers. Both serve at most :data:`MAX_CLIENTS`
scrapers at once (the rest wait in the listen backlog), each for at most
:data:`CLIENT_TIMEOUT` seconds. The families it encodes come from ``metrics``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from .._addresses import parse_bind
from .._listeners import BindError, Listener, _check_existing
from .metrics import exposition

__all__ = ["MAX_CLIENTS", "MetricsHTTP", "SelectServer", "bind_metrics", "serve_http"]

log = logging.getLogger("trioscgi")

# --- the HTTP side: GET /metrics, one request per connection ------------------

MAX_HEAD = 8192
CLIENT_TIMEOUT = 10.0
# Scrapers served at once; more wait in the listen backlog until one is done.
# Prometheus scrapes with one connection at a time: a few are plenty, and a
# flood of connections can't take more than this many sockets and tasks.
MAX_CLIENTS = 8


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


def bind_metrics(address: str) -> Listener:
    """Bind and listen on ``metrics_bind``.

    A Unix socket file is checked as the main binds' are: a stale socket is
    replaced, anything else (a regular file, another server's live socket)
    is refused; :meth:`Listener.close` removes the file only while it is ours.

    Raises:
        BindError: the address can't be bound.
    """
    spec = parse_bind(address)
    desc = f"metrics_bind {address}"
    path: str | None = None
    inode: tuple[int, int] | None = None
    if spec.kind == "unix":
        assert spec.path is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if spec.path.startswith("@"):
            where = "\0" + spec.path[1:]
        else:
            where = path = spec.path
            try:
                _check_existing(path, desc)
                if os.path.lexists(path):
                    os.unlink(path)  # the stale socket _check_existing() found
            except BaseException:
                sock.close()
                raise
    else:
        assert spec.host is not None and spec.port is not None
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        where = (spec.host, spec.port)  # type: ignore[assignment]
    try:
        sock.bind(where)
        if path is not None:
            st = os.lstat(path)
            inode = (st.st_dev, st.st_ino)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise BindError(f"can't bind {desc}: {exc}") from None
    sock.set_inheritable(False)
    if spec.kind == "unix":
        log.info("metrics on unix:%s (GET /metrics)", spec.path)
    else:
        host, port = sock.getsockname()[:2]
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)
    return Listener(sock, desc, path, _inode=inode)


# --- in the supervisor's select loop ---------------------------------------------


@dataclasses.dataclass
class _Client:
    sock: socket.socket
    deadline: float
    head: bytes = b""
    done: bool = False


class SelectServer:
    """``GET /metrics`` served from a blocking ``select()`` loop, never blocking it.

    The loop selects on :meth:`readers` (the listener only while fewer than
    :data:`MAX_CLIENTS` are being served) and wakes by :meth:`deadline`, then
    calls :meth:`on_readable`.
    """

    def __init__(self, sock: socket.socket, http: MetricsHTTP) -> None:
        sock.setblocking(False)
        self.listener = sock
        self.http = http
        self.clients: dict[socket.socket, _Client] = {}

    def readers(self) -> list[socket.socket]:
        readers = list(self.clients)
        if len(self.clients) < MAX_CLIENTS:
            readers.append(self.listener)
        return readers

    def deadline(self) -> float | None:
        return min((c.deadline for c in self.clients.values()), default=None)

    def sockets(self) -> list[socket.socket]:
        """Every socket held: the listener and the clients'."""
        return [self.listener, *self.clients]

    def on_readable(self, readable: list[Any], now: float) -> None:
        if self.listener in readable and len(self.clients) < MAX_CLIENTS:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                pass
            else:
                sock.setblocking(False)
                self.clients[sock] = _Client(sock, now + CLIENT_TIMEOUT)
        for sock, client in list(self.clients.items()):
            if sock in readable:
                self._readable(client)
            if client.done or now >= client.deadline:
                del self.clients[sock]
                sock.close()

    def close_clients(self) -> None:
        for sock in self.clients:
            sock.close()
        self.clients.clear()

    def _readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            client.done = True
            return
        client.head += data
        if not data or len(client.head) > MAX_HEAD:
            client.done = True
            return
        if b"\r\n\r\n" not in client.head:
            return
        response = self.http.respond(client.head.partition(b"\r\n\r\n")[0])
        client.done = True
        # A few kilobytes to a fresh socket: they fit its send buffer, and a
        # scraper that reads nothing can't stall the supervisor.
        try:
            client.sock.send(response)
        except OSError:
            pass


# --- in a trio process ----------------------------------------------------------


async def serve_http(sock: socket.socket, http: MetricsHTTP) -> None:
    """Serve ``GET /metrics`` on ``sock`` (a single-process server), until cancelled."""
    import trio  # noqa: PLC0415

    listener = trio.socket.from_stdlib_socket(sock)
    slots = trio.Semaphore(MAX_CLIENTS)
    async with trio.open_nursery() as nursery:
        while True:
            await slots.acquire()  # at the limit, the next ones wait in the backlog
            try:
                client, _ = await listener.accept()
            except OSError:  # one connection's trouble, or out of descriptors for now
                slots.release()
                await trio.sleep(0.1)
                continue
            nursery.start_soon(_serve_one, client, http, slots)


async def _serve_one(client: Any, http: MetricsHTTP, slots: Any) -> None:
    try:
        await _answer(client, http)
    finally:
        slots.release()


async def _answer(client: Any, http: MetricsHTTP) -> None:
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
