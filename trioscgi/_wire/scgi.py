"""The SCGI wire layer: one request per connection, socket ⇄ SCGI core ⇄ ASGI cycle.

It reads the netstring head with :mod:`trioscgi.scgi`, answers what is wrong with it
(400, 408, 413, 431) itself, and hands the request to
:func:`~trioscgi._asgi.dispatch.serve_request`, for which it moves the body and the CGI-style
response. The response ends when the connection closes: cleanly when it is complete, with a
reset when it was cut short.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import socket

import trio

from .. import scgi as p
from .._asgi.dispatch import serve_request
from .._asgi.seam import CycleHost, error_bytes
from .sendfile import sendfile
from .sockio import (
    COALESCE_LIMIT,
    RECV_SIZE,
    Bytes,
    ClientDisconnected,
    SocketIO,
    Timeout,
    WriteTimeout,
    body_stalled,
)

__all__ = ["SCGIConnection"]

log = logging.getLogger("trioscgi")

# Reading what is left after an early answer (_reject): at most this much.
_REJECT_READ_LIMIT = 1 << 20
# WebSocket needs the extra trioscgi[websocket] (wsproto); without it a handshake is
# served as plain HTTP, with a warning that says so (docs/websocket.md).
_WEBSOCKET = importlib.util.find_spec("wsproto") is not None


class SCGIConnection(SocketIO):
    """Serve one SCGI request on an accepted socket; the task that runs it owns the socket.

    It is also the :class:`~trioscgi._asgi.seam.Wire` of that request.
    """

    __slots__ = ("_aborted", "_conn", "_host")

    def __init__(self, sock: socket.socket, host: CycleHost) -> None:
        config = host.config
        super().__init__(sock, config.write_timeout)
        self._host = host
        self._conn = p.Connection(
            max_header_size=config.max_header_size,
            max_body_size=config.max_body_size,
        )
        self._aborted = False

    async def run(self, initial: bytes = b"", deadline: float | None = None) -> None:
        """Read the request head, run the ASGI cycle, close the connection.

        Args:
            initial: bytes already read from the socket (``protocol = "auto"``).
            deadline: when the head must be in (trio time), if the caller's wait for
                ``initial`` already counted against ``header_timeout``.
        """
        conn = self._conn
        config = self._host.config
        try:
            try:
                # The front-end writes the request as soon as it connects:
                # read first rather than ask the parser about an empty buffer.
                # header_timeout bounds the whole head, not each read: a
                # byte every few seconds (slowloris) must not hold us.
                if deadline is None:
                    deadline = trio.current_time() + config.header_timeout
                conn.receive_data(initial or await self.recv(0.0, deadline))
                event = conn.next_event()
                while event is p.NEED_DATA:
                    conn.receive_data(await self.recv(0.0, deadline))
                    event = conn.next_event()
            except p.RemoteProtocolError as exc:
                await self._reject(exc.error_status_hint, f"bad request: {exc}")
                return
            except Timeout:
                await self._reject(
                    408, f"request head not received within {config.header_timeout:g} s"
                )
                return
            except OSError as exc:
                log.info("connection lost before the request: %s", exc)
                return
            if type(event) is not p.Request:
                return  # ConnectionClosed: connected and closed without a byte.
            body_done = conn.body_remaining == 0
            if body_done:
                conn.next_event()  # EndOfMessage, already known
            # After a 101 the socket is the WebSocket's tunnel (nginx's SCGI module
            # copies bytes both ways): a handshake has no body.
            await serve_request(
                self,
                self._host,
                event.environ,
                body_done=body_done,
                tunnel=self if body_done and _WEBSOCKET else None,
            )
        finally:
            self.close(reset=self._aborted)

    async def _reject(self, status: int, reason: str) -> None:
        log.info("%s; answered %d", reason, status)
        if self._host.metrics is not None:
            self._host.metrics.rejected(status)
        try:
            self.sock.send(error_bytes(status))
        except OSError:
            return
        # Read what already arrived (bounded, fair), so the close does not
        # send an RST that makes the front-end report 502 instead of our answer.
        left = _REJECT_READ_LIMIT
        try:
            while left > 0 and (data := self.sock.recv(RECV_SIZE)):
                left -= len(data)
                await self._fair()
        except OSError:
            pass
        await trio.lowlevel.checkpoint_if_cancelled()

    # --- the Wire of the request's cycle ----------------------------------------

    async def read_body(self) -> tuple[bytes, bool]:
        conn = self._conn
        try:
            while True:
                event = conn.next_event()
                if event is p.NEED_DATA:
                    conn.receive_data(await self.recv(self._host.config.read_timeout))
                    continue
                break
        except (p.RemoteProtocolError, OSError) as exc:
            # EOF or reset in the middle of the body: the front-end's client
            # went away mid-upload.
            raise ClientDisconnected(f"client went away during the request body: {exc}") from None
        except Timeout:
            raise body_stalled(self._host.metrics, self._host.config.read_timeout) from None
        if type(event) is p.Data:
            if conn.body_remaining == 0:
                conn.next_event()  # EndOfMessage: no I/O needed to know it
                return event.data, False
            return event.data, True
        # EndOfMessage (only reached for an empty final read)
        return b"", False

    async def write(self, head: p.Response | None, body: Bytes, more: bool) -> None:
        # The cycle's send() checked for cancellation just before (or the cycle
        # answers an error itself): no check of our own.
        if head is None:
            if body:
                await self.sendall(body, checked=True)
            return
        data = self._conn.send(head)
        if len(body) > COALESCE_LIMIT:
            # A large first body goes out with the head in one sendmsg()
            # rather than being copied behind it.
            await self.send_two(data, body, checked=True)
        else:
            await self.sendall(data + body if body else data, checked=True)

    async def write_file(
        self, head: p.Response | None, fd: int, offset: int, count: int, more: bool
    ) -> int:
        if head is not None:
            await self.sendall(self._conn.send(head))
        try:
            return await sendfile(self.sock, fd, offset, count, patience=self.write_timeout)
        except TimeoutError as exc:
            raise WriteTimeout(f"{exc} (write_timeout)") from None
        except OSError as exc:
            if exc.errno in _PEER_GONE:
                raise ClientDisconnected(f"the client went away: {exc}") from None
            raise

    async def wait_disconnect(self) -> None:
        sock = self.sock
        while True:
            await self.wait_readable()
            try:
                if not sock.recv(RECV_SIZE):
                    return
            except BlockingIOError:
                continue
            except OSError:
                return
            # Bytes after the body: front-ends send none; ignore them.

    async def drain(self) -> None:
        """Read the rest of an unread request body, bounded by drain_timeout.

        Closing with unread body bytes makes nginx answer 502 at random
        ("writev() failed (104)").
        """
        conn = self._conn
        patience = self._host.config.drain_timeout
        timed_out = False
        with trio.move_on_after(patience) as scope:
            try:
                while True:
                    event = conn.next_event()
                    if event is p.NEED_DATA:
                        conn.receive_data(await self.recv(patience))
                    elif type(event) is not p.Data:
                        break
            except Timeout:
                timed_out = True
            except (p.RemoteProtocolError, OSError):
                pass
        if (timed_out or scope.cancelled_caught) and self._host.metrics is not None:
            self._host.metrics.timeouts["drain"] += 1

    def abort(self) -> None:
        self._aborted = True


# sendfile errors that mean the front-end closed the connection.
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
