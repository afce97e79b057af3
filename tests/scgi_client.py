"""A small SCGI client for tests: build requests, talk to a server, parse CGI-style responses.

Addresses are the strings ``serve()`` reports: ``"unix:/path"`` or ``"HOST:PORT"`` /
``"[V6]:PORT"``. Async helpers use trio streams (for in-process servers under
``autojump_clock``); ``request_sync`` uses a blocking stdlib socket (for servers
running in a subprocess). ``serving()`` runs ``trioscgi.serve`` in-process.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

import trioscgi

Pairs = Iterable[tuple[str | bytes, str | bytes]] | Mapping[str, str]


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("latin-1")


def environ(
    method: str = "GET",
    uri: str = "/",
    *,
    body: bytes = b"",
    extra: Pairs = (),
) -> list[tuple[bytes, bytes]]:
    """Environ pairs like nginx's stock ``scgi_params`` for ``method uri`` (no CONTENT_LENGTH).

    ``extra`` pairs are appended (e.g. ``{"HTTP_X_A": "1"}``).
    """
    query = uri.partition("?")[2]
    pairs: list[tuple[str | bytes, str | bytes]] = [
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", uri),
        ("QUERY_STRING", query),
        ("CONTENT_TYPE", "application/octet-stream" if body else ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost"),
    ]
    pairs.extend(extra.items() if isinstance(extra, Mapping) else extra)
    return [(_b(k), _b(v)) for k, v in pairs]


def encode_head(pairs: Pairs, content_length: int) -> bytes:
    """The SCGI request netstring: CONTENT_LENGTH first, SCGI=1, then ``pairs``.

    Pairs named CONTENT_LENGTH or SCGI in ``pairs`` are dropped (use
    ``encode_raw`` to send a malformed head on purpose).
    """
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    block = [b"CONTENT_LENGTH\0%d\0" % content_length, b"SCGI\x001\0"]
    for k, v in items:
        if _b(k) not in (b"CONTENT_LENGTH", b"SCGI"):
            block.append(_b(k) + b"\0" + _b(v) + b"\0")
    return encode_raw(b"".join(block))


def encode_raw(header_block: bytes) -> bytes:
    """``<len>:<header_block>,`` with no checks at all."""
    return b"%d:%s," % (len(header_block), header_block)


def encode_request(pairs: Pairs, body: bytes = b"") -> bytes:
    """The whole request: head netstring with CONTENT_LENGTH = len(body), then body."""
    return encode_head(pairs, len(body)) + body


@dataclass
class Response:
    """A parsed CGI-style response (``Status: 200 OK`` + headers + blank line + body)."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def parse_response(data: bytes) -> Response:
    """Parse a complete response; raises ValueError when it is not one."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no end of the response head in {data[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].startswith("HTTP/1.1 "):
        # uwsgi's answer: an HTTP/1.1 status line, not CGI's Status header.
        status_value = lines[0][9:]
    else:
        status_name, _, status_value = lines[0].partition(":")
        if status_name.lower() != "status":
            raise ValueError(f"response does not start with a Status line: {lines[0]!r}")
    code, _, reason = status_value.strip().partition(" ")
    headers = []
    for line in lines[1:]:
        k, colon, v = line.partition(":")
        if not colon:
            raise ValueError(f"bad header line {line!r}")
        headers.append((k, v.strip()))
    return Response(int(code), reason, headers, body)


# --- trio (in-process servers) ------------------------------------------------


async def connect(address: str) -> trio.SocketStream:
    """Open a trio stream to ``"unix:/path"`` or ``"HOST:PORT"``."""
    if address.startswith("unix:"):
        return await trio.open_unix_socket(address[5:])
    host, _, port = address.rpartition(":")
    return await trio.open_tcp_stream(host.strip("[]"), int(port))


async def read_all(stream: trio.SocketStream, limit: int = 1 << 26) -> bytes:
    """Read until EOF (at most ``limit`` bytes). A reset counts as EOF."""
    chunks = []
    size = 0
    while size < limit:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def request(
    address: str, pairs: Pairs | None = None, body: bytes = b"", *, raw: bytes | None = None
) -> Response:
    """Send one request (``raw`` bytes instead, if given), read to EOF, parse."""
    data = raw if raw is not None else encode_request(environ() if pairs is None else pairs, body)
    async with await connect(address) as stream:
        await stream.send_all(data)
        return parse_response(await read_all(stream))


async def exchange(address: str, data: bytes) -> bytes:
    """Send ``data``, read everything until EOF, return it unparsed."""
    async with await connect(address) as stream:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        return await read_all(stream)


@asynccontextmanager
async def serving(app: Any, bind: str | list[str], **config: Any) -> AsyncIterator[ServerHandle]:
    """Run ``trioscgi.serve(app, Config(bind=..., **config))`` for the ``async with`` block.

    ``lifespan`` defaults to ``"off"`` here. Leaving the block cancels serve()
    (a graceful shutdown) and waits for it to return.
    """
    config.setdefault("lifespan", "off")
    cfg = trioscgi.Config(bind=[bind] if isinstance(bind, str) else bind, **config)
    handle = ServerHandle()
    async with trio.open_nursery() as nursery:
        handle.addresses = await nursery.start(handle.run, app, cfg)
        handle.address = handle.addresses[0]
        try:
            yield handle
        finally:
            handle.stop()


class ServerHandle:
    """An in-process server: its bound addresses, a way to stop it, and when it stopped."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.address = ""
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.stopped_at: float | None = None

    async def run(self, app: Any, config: trioscgi.Config, *, task_status: Any) -> None:
        try:
            with self.scope:
                await trioscgi.serve(app, config, task_status=task_status)
        finally:
            self.stopped_at = trio.current_time()
            self.stopped.set()

    def stop(self) -> None:
        """Cancel serve(): a graceful shutdown begins."""
        self.scope.cancel()


# --- blocking (subprocess servers) ----------------------------------------------


def open_sync(address: str, timeout: float = 30.0) -> socket.socket:
    """A connected blocking stdlib socket with ``timeout`` on every operation."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address[5:]
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        target = (host, int(port))
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def read_all_sync(sock: socket.socket) -> bytes:
    """Read until EOF; a reset counts as EOF."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def request_sync(
    address: str, pairs: Pairs | None = None, body: bytes = b"", *, timeout: float = 30.0
) -> Response:
    """Blocking one-shot request (for a server in another process)."""
    with open_sync(address, timeout) as sock:
        sock.sendall(encode_request(environ() if pairs is None else pairs, body))
        return parse_response(read_all_sync(sock))
