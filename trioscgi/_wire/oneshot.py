"""The wire of the one-request-per-connection protocols (SCGI, uwsgi): socket ⇄ core ⇄ ASGI.

A connection carries one request: a head the protocol's sans-I/O core parses, a body
framed by ``CONTENT_LENGTH``, and a response that ends when the connection closes:
cleanly when it is complete, with a reset when it was cut short. SCGI and uwsgi differ
only in the head's bytes and in the response head's first line, so each is a subclass
that names its core (``_wire.scgi``, ``_wire.uwsgi``); everything else is here, once.
The head's errors (400, 408, 413, 431, and uwsgi's 501) are answered here; the request
goes to :func:`~trioscgi._asgi.dispatch.serve_request`, for which this moves the body and
the response.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

import trio

from .. import scgi as p
from .._asgi.dispatch import serve_request
from .._asgi.seam import CycleHost, error_response
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

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["OneShotConnection", "error_responses"]

log = logging.getLogger("trioscgi")

# Reading what is left after an early answer (_reject): at most this much.
_REJECT_READ_LIMIT = 1 << 20
# WebSocket needs the extra trioscgi[websocket] (wsproto); without it a handshake is
# served as plain HTTP, with a warning that says so (docs/websocket.md).
_WEBSOCKET = importlib.util.find_spec("wsproto") is not None


class Core(Protocol):
    """What the wire needs of a protocol core (``scgi.Connection``, ``uwsgi.Connection``)."""

    @property
    def body_remaining(self) -> int: ...
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> object: ...


def error_responses(
    head_bytes: Callable[[p.Response], bytes], statuses: tuple[int, ...]
) -> dict[int, bytes]:
    """The whole answers (head and body) to the head errors, as one protocol writes them."""
    out = {}
    for status in statuses:
        head, body = error_response(status)
        out[status] = head_bytes(head) + body
    return out


class OneShotConnection(SocketIO):
    """Serve one request on an accepted socket; the task that runs it owns the socket.

    It is also the :class:`~trioscgi._asgi.seam.Wire` of that request. A subclass names the
    protocol: its core (:meth:`_new_core`), that core's event types and error, and how
    a response head is written.
    """

    __slots__ = ("_aborted", "_conn", "_host")

    # --- what a protocol's subclass sets ------------------------------------------
    #: The wire's name in the metrics and the log ("scgi", "uwsgi").
    wire: ClassVar[str]
    _NEED_DATA: ClassVar[object]
    _REQUEST: ClassVar[type]
    _DATA: ClassVar[type]
    _REMOTE_ERROR: ClassVar[type[Exception]]
    #: The head errors' whole answers (400 stands in for any status not listed).
    _ERROR_RESPONSES: ClassVar[dict[int, bytes]]

    @staticmethod
    def _new_core(config: Config) -> Core:
        raise NotImplementedError

    #: A response head's bytes (a staticmethod: the core's ``response_head``).
    _head_bytes: ClassVar[staticmethod[[p.Response], bytes]]

    # ---------------------------------------------------------------------------

    def __init__(self, sock: socket.socket, host: CycleHost) -> None:
        config = host.config
        super().__init__(sock, config.write_timeout)
        self._host = host
        self._conn = self._new_core(config)
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
        need_data = self._NEED_DATA
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
                while event is need_data:
                    conn.receive_data(await self.recv(0.0, deadline))
                    event = conn.next_event()
            except self._REMOTE_ERROR as exc:
                await self._reject(_hint(exc), f"bad request: {exc}")
                return
            except Timeout:
                await self._reject(
                    408, f"request head not received within {config.header_timeout:g} s"
                )
                return
            except OSError as exc:
                log.info("connection lost before the request: %s", exc)
                return
            if type(event) is not self._REQUEST:
                return  # ConnectionClosed: connected and closed without a byte.
            body_done = conn.body_remaining == 0
            if body_done:
                conn.next_event()  # EndOfMessage, already known
            # After a 101 the socket is the WebSocket's tunnel (nginx's SCGI and uwsgi
            # modules copy bytes both ways): a handshake has no body.
            await serve_request(
                self,
                self._host,
                event.environ,  # type: ignore[attr-defined]
                body_done=body_done,
                protocol=self.wire,
                tunnel=self if body_done and _WEBSOCKET else None,
            )
        finally:
            self.close(reset=self._aborted)

    async def _reject(self, status: int, reason: str) -> None:
        log.info("%s; answered %d", reason, status)
        if self._host.metrics is not None:
            self._host.metrics.rejected(status)
        responses = self._ERROR_RESPONSES
        try:
            self.sock.send(responses.get(status) or responses[400])
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
        need_data = self._NEED_DATA
        try:
            while True:
                event = conn.next_event()
                if event is need_data:
                    conn.receive_data(await self.recv(self._host.config.read_timeout))
                    continue
                break
        except (self._REMOTE_ERROR, OSError) as exc:
            # EOF or reset in the middle of the body: the front-end's client
            # went away mid-upload.
            raise ClientDisconnected(f"client went away during the request body: {exc}") from None
        except Timeout:
            raise body_stalled(self._host.metrics, self._host.config.read_timeout) from None
        if type(event) is self._DATA:
            data: bytes = event.data  # type: ignore[attr-defined]
            if conn.body_remaining == 0:
                conn.next_event()  # EndOfMessage: no I/O needed to know it
                return data, False
            return data, True
        # EndOfMessage (only reached for an empty final read)
        return b"", False

    async def write(self, head: p.Response | None, body: Bytes, more: bool) -> None:
        # The cycle's send() checked for cancellation just before (or the cycle
        # answers an error itself): no check of our own.
        if head is None:
            if body:
                await self.sendall(body, checked=True)
            return
        data = self._head_bytes(head)
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
            await self.sendall(self._head_bytes(head))
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
        need_data = self._NEED_DATA
        data_type = self._DATA
        patience = self._host.config.drain_timeout
        timed_out = False
        with trio.move_on_after(patience) as scope:
            try:
                while True:
                    event = conn.next_event()
                    if event is need_data:
                        conn.receive_data(await self.recv(patience))
                    elif type(event) is not data_type:
                        break
            except Timeout:
                timed_out = True
            except (self._REMOTE_ERROR, OSError):
                pass
        if (timed_out or scope.cancelled_caught) and self._host.metrics is not None:
            self._host.metrics.timeouts["drain"] += 1

    def abort(self) -> None:
        self._aborted = True


def _hint(exc: Exception) -> int:
    hint = getattr(exc, "error_status_hint", 400)
    return hint if isinstance(hint, int) else 400


# sendfile errors that mean the front-end closed the connection.
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
