"""A ceiling for bench/ws.py, not a product: a WebSocket echo on trio and wsproto with no ASGI.

Usage: python bench/probes/bare_ws.py SOCKET_PATH

What trioscgi's WebSocket path would cost were the ASGI layer free: SCGI head read with one
``split``, the 101 written, then per message one wait for the socket, one ``recv()``,
wsproto's ``Connection`` (the same API uvicorn ``--ws wsproto`` drives) and one ``send()``.
No limits, no timeouts, no pings, no graceful shutdown: it trusts nginx completely, which
is why it is only a measuring stick. The gap between it and ``uvicorn-wsproto`` is what
trio's run loop costs against uvloop's; the gap between it and ``trioscgi`` is the ASGI
session's own cost.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import sys

import trio
from trio.lowlevel import wait_readable
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _recv(sock: socket.socket) -> bytes:
    # Tried first: the caller yields after each echo (as the bare FastCGI loop of
    # ../shared/bench/probes does after each response), so other sessions run and a
    # frame nginx forwards in two writes is usually whole by the time this reads.
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await wait_readable(sock)


async def _send(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def _session(sock: socket.socket) -> None:
    try:
        buf = b""
        while b":" not in buf:
            data = await _recv(sock)
            if not data:
                return
            buf += data
        length, _, rest = buf.partition(b":")
        while len(rest) < int(length) + 1:
            data = await _recv(sock)
            if not data:
                return
            rest += data
        fields = rest[: int(length)].split(b"\0")
        env = dict(zip(fields[::2], fields[1::2], strict=False))  # a NUL ends the block
        key = env[b"HTTP_SEC_WEBSOCKET_KEY"].strip()
        token = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        await _send(
            sock,
            b"Status: 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + token + b"\r\n\r\n",
        )
        ws = Connection(ConnectionType.SERVER)
        while True:
            data = await _recv(sock)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    await _send(sock, ws.send(type(event)(data=event.data)))
                elif isinstance(event, Ping):
                    await _send(sock, ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if data:
                        await _send(sock, ws.send(event.response()))
                    return
            if not data:
                return
            await trio.lowlevel.checkpoint()
    except OSError:
        pass
    finally:
        sock.close()


def listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(path)
    listener.listen(4096)
    listener.setblocking(False)
    return listener


async def main(listener: socket.socket) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                await wait_readable(listener)
                continue
            sock.setblocking(False)
            nursery.start_soon(_session, sock)


if __name__ == "__main__":
    try:
        trio.run(main, listen(sys.argv[1]))
    except KeyboardInterrupt:
        pass
