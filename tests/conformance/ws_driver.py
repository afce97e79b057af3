"""The WebSocket driver of the conformance suite: nginx's side of an SCGI or uwsgi tunnel.

A session is what nginx does for a browser: it sends the SCGI (or uwsgi) head of the
handshake (``HTTP_UPGRADE``, ``HTTP_SEC_WEBSOCKET_*``), reads the answer (CGI-style, or an
HTTP/1.1 status line for uwsgi), and after a 101 carries raw WebSocket frames both ways
on the same connection. The frames are wsproto's client side; the test decides how they
reach the server (whole, in pieces, after pauses) and how the client leaves (a close
handshake, a FIN without a close frame, a reset).

The server runs in-process (``trioscgi.serve`` through ``scgi_client.serving``) on
TCP loopback, with the app on trio or on the hosted asyncio loop: on AF_UNIX a reset
and a clean close look the same.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from scgi_client import ServerHandle, encode_request, environ, serving
from uwsgi_client import encode_packet, stock_vars
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, TextMessage

HOST = [("HTTP_HOST", "localhost")]
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example key
# Every wait of a scenario is bounded by this (the real clock: the asyncio loop's
# timers do not follow trio's autojump clock).
TIMEOUT = 10.0


@asynccontextmanager
async def ws_server(app: Any, app_loop: str, **config: Any) -> AsyncIterator[ServerHandle]:
    """Serve ``app`` over SCGI on 127.0.0.1 with the app on ``app_loop``.

    Yields the server's handle (``.address``, ``.stop()``). Leaving the block shuts the
    server down gracefully, which waits for every session's application call to return:
    after it, what the app recorded is complete.
    """
    config.setdefault("websocket_ping_interval", 0)  # no pings of ours in the recordings
    async with serving(app, "127.0.0.1:0", app_loop=app_loop, **config) as srv:
        yield srv


class Session:
    """One WebSocket session through the SCGI tunnel, seen from the front-end."""

    def __init__(self, stream: trio.SocketStream, head: bytes, rest: bytes) -> None:
        self.stream = stream
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].startswith("HTTP/1.1 "):  # uwsgi: an HTTP/1.1 status line
            value = lines[0][9:]
        else:  # SCGI: CGI's Status header
            name, _, value = lines[0].partition(":")
            assert name == "Status", lines[0]
        self.status = int(value.split()[0])
        self.headers = [
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in lines[1:])
        ]
        self.ws = Connection(ConnectionType.CLIENT)
        self._rest = rest
        self.pending: list[Event] = []
        self.control: list[Event] = []  # pings and pongs receive_message() went past
        if self.status == 101:
            self._feed(rest)
            self._rest = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def _feed(self, data: bytes | None) -> None:
        self.ws.receive_data(data)
        self.pending.extend(self.ws.events())

    # --- sending ------------------------------------------------------------------------

    def frames(self, *events: Event) -> bytes:
        """The bytes of ``events`` (masked frames), to be sent as the test chooses."""
        return b"".join(self.ws.send(e) for e in events)

    async def send(self, *events: Event) -> None:
        """Send ``events`` in one write."""
        await self.stream.send_all(self.frames(*events))

    async def send_pieces(
        self, data: bytes, sizes: Sequence[int], *, pause: float = 0.0, every: int = 1
    ) -> None:
        """Send ``data`` cut in pieces of ``sizes`` (cycled), pausing after every ``every``th."""
        at = i = 0
        while at < len(data):
            size = sizes[i % len(sizes)]
            await self.stream.send_all(data[at : at + size])
            at += size
            i += 1
            if pause and i % every == 0:
                await trio.sleep(pause)  # the network delivering late, not a wait for state

    # --- receiving ----------------------------------------------------------------------

    async def next_event(self) -> Event:
        """The next WebSocket event from the server (bounded)."""
        with trio.fail_after(TIMEOUT):
            while not self.pending:
                data = await self.stream.receive_some(65536)
                self._feed(data or None)
            return self.pending.pop(0)

    async def receive_message(self) -> str | bytes:
        """The next whole data message (its frames joined). Pings and pongs before it go
        to :attr:`control`; a close fails the call."""
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                raise AssertionError(f"closed while a message was expected: {event!r}")
            if isinstance(event, (TextMessage, BytesMessage)):
                parts.append(event.data)
                if event.message_finished:
                    whole: str | bytes = type(parts[0])().join(parts)
                    return whole
            else:
                self.control.append(event)

    async def events_until_close(self) -> list[Event]:
        """Events up to and including the server's close frame; the close is answered."""
        got = []
        while True:
            event = await self.next_event()
            got.append(event)
            if isinstance(event, CloseConnection):
                if self.ws.state.name == "REMOTE_CLOSING":
                    await self.send(event.response())
                return got

    async def read_to_eof(self) -> bytes:
        """What the server sends until it closes the connection (bounded)."""
        chunks = [self._rest]
        self._rest = b""
        with trio.fail_after(TIMEOUT):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)

    # --- leaving ------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> CloseConnection:
        """The client's close handshake: our close, the server's answer, then its EOF."""
        await self.send(CloseConnection(code=code, reason=reason))
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                break
        assert await self.read_to_eof() == b""
        await self.stream.aclose()
        return event

    async def vanish(self, *, reset: bool) -> None:
        """Leave without a close frame: a FIN (``reset=False``) or a TCP reset."""
        if reset:
            self.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        await self.stream.aclose()


async def open_session(
    address: str,
    target: str = "/",
    *,
    subprotocols: Iterable[str] = (),
    extra: Iterable[tuple[str, str]] = (),
    wire: str = "scgi",
) -> Session:
    """Connect to ``address`` (``HOST:PORT``), send the handshake's SCGI (or uwsgi) head
    as nginx does, and read the answer's head."""
    headers = [
        ("HTTP_UPGRADE", "websocket"),
        ("HTTP_CONNECTION", "Upgrade"),
        ("HTTP_SEC_WEBSOCKET_KEY", KEY),
        ("HTTP_SEC_WEBSOCKET_VERSION", "13"),
    ]
    offered = ", ".join(subprotocols)
    if offered:
        headers.append(("HTTP_SEC_WEBSOCKET_PROTOCOL", offered))
    headers.extend(extra)
    host, _, port = address.rpartition(":")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(host, int(port))
        if wire == "uwsgi":
            head = encode_packet(stock_vars("GET", target, headers=[*HOST, *headers]))
        else:
            head = encode_request(environ("GET", target, extra=headers))
        await stream.send_all(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"EOF before the end of the answer's head: {data!r}"
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return Session(stream, head, rest)
