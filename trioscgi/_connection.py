"""One SCGI connection: socket ⇄ protocol ⇄ ASGI application.

This is the hot path. It works on a non-blocking stdlib socket and tries
each syscall first, waiting with ``trio.lowlevel.wait_readable`` /
``wait_writable`` only when the kernel says it would block: measured here,
that runs at 3x the speed of going through ``trio.SocketStream`` (see
docs/benchmarks.md). No task, channel or lock is added per request.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from http import HTTPStatus
from typing import Any

import trio
from trio.lowlevel import checkpoint_if_cancelled, wait_readable, wait_writable

from . import protocol as p
from ._config import Config
from ._scope import ScopeError, http_scope
from ._sendfile import sendfile
from ._types import ASGIApp, Message

log = logging.getLogger("trioscgi")

_RECV_SIZE = 65536
# A first body chunk up to this size is copied behind the head and both go
# out in one send(); a larger one is sent with the head by sendmsg().
_COALESCE_LIMIT = 16384
# Responses larger than the default socket send buffer (212992 bytes on
# Linux) get a bigger one, up to _MAX_SNDBUF.
_BIG_RESPONSE = 262144
_MAX_SNDBUF = 4 << 20
# SO_LINGER on with a zero timeout: close() sends a reset.
_LINGER_RESET = struct.pack("ii", 1, 0)


_Bytes = bytes | bytearray | memoryview


class ClientDisconnected(OSError):
    """The front-end closed the connection (its client went away).

    ASGI spec 2.4: ``send()`` after the connection is gone raises an
    ``OSError`` subclass.
    """


class _Timeout(Exception):
    pass


def error_response(status: int) -> bytes:
    """A complete SCGI response for an error trioscgi answers itself."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n".encode()
    head = (
        f"Status: {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


_ERROR_RESPONSES = {status: error_response(status) for status in (400, 408, 413, 431, 500, 503)}


class Connection:
    """Serve one request on an accepted socket; the task that runs it owns the socket."""

    __slots__ = (
        "_abort",
        "_app_has_body",
        "_conn",
        "_head",
        "_request_done",
        "_response_done",
        "_sock",
        "app",
        "config",
        "disconnected",
        "response_bytes",
        "scope",
        "server",
        "status",
    )

    def __init__(self, sock: socket.socket, server: Any) -> None:
        self._sock = sock
        self.server = server
        self.config: Config = server.config
        self.app: ASGIApp = server.app
        self._conn = p.Connection(
            max_header_size=self.config.max_header_size,
            max_body_size=self.config.max_body_size,
        )
        self._head: p.Response | None = None
        self._request_done = False
        self._app_has_body = False
        self._abort = False
        self._response_done = False
        self.disconnected = False
        self.status = 0
        self.response_bytes = 0
        self.scope: dict[str, Any] | None = None

    # --- socket primitives --------------------------------------------------

    async def _recv(self, patience: float, deadline: float | None = None) -> bytes:
        """Read what is there; wait at most ``patience`` s (or until ``deadline``)."""
        sock = self._sock
        try:
            return sock.recv(_RECV_SIZE)
        except BlockingIOError:
            pass
        if deadline is None:
            deadline = trio.current_time() + patience
        with trio.move_on_at(deadline) as scope:
            while True:
                await wait_readable(sock)
                try:
                    return sock.recv(_RECV_SIZE)
                except BlockingIOError:
                    continue
        assert scope.cancelled_caught
        raise _Timeout

    async def _send_two(self, first: bytes, second: _Bytes) -> None:
        total = len(first) + len(second)
        if total > _BIG_RESPONSE:
            # A send buffer that holds the whole response lets one sendmsg()
            # hand it to the kernel: fewer wake-ups here and bigger reads for
            # the front-end (measured: 1 MiB responses behind nginx at 1.35x
            # aioscgi instead of 1.06x, docs/benchmarks.md). The kernel caps
            # it at net.core.wmem_max.
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(total, _MAX_SNDBUF))
        try:
            sent = self._sock.sendmsg([first, second])
        except BlockingIOError:
            sent = 0
        if sent < len(first):
            await self._sendall(memoryview(first)[sent:])
            await self._sendall(second)
        elif sent - len(first) < len(second):
            await self._sendall(memoryview(second)[sent - len(first) :])

    async def _sendall(self, data: _Bytes) -> None:
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        with trio.move_on_after(self.config.write_timeout) as scope:
            while view:
                await wait_writable(sock)
                try:
                    sent = sock.send(view)
                except BlockingIOError:
                    continue
                view = view[sent:]
        if scope.cancelled_caught:
            raise ClientDisconnected(
                f"front-end did not read the response for {self.config.write_timeout:g} s"
                " (write_timeout)"
            )

    # --- the request ----------------------------------------------------------

    async def run(self) -> None:
        """Read the request head, run the application, finish the connection."""
        sock = self._sock
        conn = self._conn
        try:
            try:
                # The front-end writes the request as soon as it connects:
                # read first rather than ask the parser about an empty buffer.
                # header_timeout bounds the whole head, not each read: a
                # byte every few seconds (slowloris) must not hold us.
                deadline = trio.current_time() + self.config.header_timeout
                conn.receive_data(await self._recv(0.0, deadline))
                event = conn.next_event()
                while event is p.NEED_DATA:
                    conn.receive_data(await self._recv(0.0, deadline))
                    event = conn.next_event()
            except p.RemoteProtocolError as exc:
                await self._reject(exc.error_status_hint, f"bad request: {exc}")
                return
            except _Timeout:
                await self._reject(
                    408, f"request head not received within {self.config.header_timeout:g} s"
                )
                return
            except OSError as exc:
                log.info("connection lost before the request: %s", exc)
                return
            if type(event) is not p.Request:
                return  # ConnectionClosed: connected and closed without a byte.
            notes: list[str] = []
            try:
                scope = http_scope(
                    event.environ,
                    root_path=self.config.root_path,
                    state=self.server.state,
                    notes=notes,
                )
            except ScopeError as exc:
                await self._reject(400, f"bad request: {exc}")
                return
            for note in notes:
                self.server.warn_request("%s %s: %s", scope["method"], scope["path"], note)
            if conn.body_remaining == 0:
                conn.next_event()  # EndOfMessage, already known
                self._request_done = True
            scope["extensions"].update(_FILE_EXTENSIONS)
            self.scope = scope
            access_logger = self.server.access_logger
            if access_logger is None:
                await self._run_app(scope)
            else:
                start = trio.current_time()
                try:
                    await self._run_app(scope)
                finally:
                    access_logger.log(
                        scope, self.status, self.response_bytes, trio.current_time() - start
                    )
        finally:
            if self._abort:
                # A response cut short must not look complete: a normal close
                # is a clean EOF, which nginx (reading to EOF when there is no
                # Content-Length) passes on as the end of the response. A
                # reset makes the front-end abort its client's response.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()

    async def _run_app(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self.receive, self.send)
        except Exception as exc:
            if self.disconnected:
                # Our ClientDisconnected, or the app's own exception made of
                # it (Starlette raises ClientDisconnect): a client fault.
                log.info(
                    "client went away: %s %s (%s)",
                    scope["method"],
                    scope["path"],
                    type(exc).__name__,
                )
                return
            if self.status == 0:
                log.error("exception in ASGI application before the response started", exc_info=exc)
                await self._send_error(500)
            else:
                log.error("exception in ASGI application after the response started", exc_info=exc)
                # Cut short: reset. Complete already: nothing to undo.
                self._abort = not self._response_done
            return
        if self.disconnected:
            return
        if not self._response_done:
            if self.status == 0:
                log.error("ASGI application returned without sending a response")
                await self._send_error(500)
                return
            log.error("ASGI application returned before the response was complete")
            self._abort = True
            return
        if not self._request_done:
            await self._drain()

    async def _send_error(self, status: int) -> None:
        if self.disconnected:
            return
        try:
            await self._sendall(_ERROR_RESPONSES[status])
        except OSError:
            return
        self.status = status
        self._response_done = True
        if not self._request_done:
            await self._drain()

    async def _reject(self, status: int, reason: str) -> None:
        log.info("%s; answered %d", reason, status)
        try:
            self._sock.send(_ERROR_RESPONSES.get(status) or _ERROR_RESPONSES[400])
        except OSError:
            return
        # Read what already arrived, so the close does not send an RST that
        # makes the front-end report 502 instead of our answer.
        try:
            while self._sock.recv(_RECV_SIZE):
                pass
        except OSError:
            pass
        await checkpoint_if_cancelled()

    async def _drain(self) -> None:
        """Read the rest of an unread request body, bounded by drain_timeout.

        Closing with unread body bytes makes nginx answer 502 at random
        ("writev() failed (104)").
        """
        conn = self._conn
        with trio.move_on_after(self.config.drain_timeout):
            try:
                while True:
                    event = conn.next_event()
                    if event is p.NEED_DATA:
                        conn.receive_data(await self._recv(self.config.drain_timeout))
                    elif type(event) is p.Data:
                        continue
                    else:
                        break
            except (p.RemoteProtocolError, OSError, _Timeout):
                pass
        self._request_done = True

    # --- the ASGI callables --------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: the request body in chunks, then ``http.disconnect``.

        The cancellation point comes first: a caller cancelled at the call
        (Starlette's ``is_disconnected()`` does that) loses no body bytes.
        Once a chunk is taken from the parser, nothing can raise.
        """
        await checkpoint_if_cancelled()
        if self._app_has_body or self.disconnected:
            # ASGI: once the connection is gone, receive() says so, even if
            # the app never read the (empty) body.
            await self._wait_disconnect()
            return {"type": "http.disconnect"}
        if self._request_done:
            # An empty body (known at the head), or one the server drained.
            self._app_has_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        conn = self._conn
        try:
            while True:
                event = conn.next_event()
                if event is p.NEED_DATA:
                    conn.receive_data(await self._recv(self.config.read_timeout))
                    continue
                break
        except (p.RemoteProtocolError, OSError) as exc:
            # EOF or reset in the middle of the body: the front-end's client
            # went away mid-upload.
            log.info("client went away during the request body: %s", exc)
            self.disconnected = True
            self._request_done = self._app_has_body = True
            return {"type": "http.disconnect"}
        except _Timeout:
            log.info("request body stalled for %g s (read_timeout)", self.config.read_timeout)
            self.disconnected = True
            self._request_done = self._app_has_body = True
            return {"type": "http.disconnect"}
        if type(event) is p.Data:
            if conn.body_remaining == 0:
                conn.next_event()  # EndOfMessage: no I/O needed to know it
                self._request_done = self._app_has_body = True
                return {"type": "http.request", "body": event.data, "more_body": False}
            return {"type": "http.request", "body": event.data, "more_body": True}
        # EndOfMessage (only reached for an empty final read)
        self._request_done = self._app_has_body = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def _wait_disconnect(self) -> None:
        if self.disconnected or self._response_done:
            await checkpoint_if_cancelled()
            return
        sock = self._sock
        while True:
            await wait_readable(sock)
            try:
                if not sock.recv(_RECV_SIZE):
                    break
            except BlockingIOError:
                continue
            except OSError:
                break
            # Bytes after the body: front-ends send none; ignore them.
        self.disconnected = True

    async def send(self, message: Message) -> None:
        """ASGI ``send``: the response head is held until the first body message.

        A cancellation point before anything changes: an app streaming to a
        fast reader (every send() going straight out) can still be cancelled
        at graceful_timeout.
        """
        await checkpoint_if_cancelled()
        kind = message["type"]
        if kind == "http.response.body":
            head = self._head
            if head is None:
                raise RuntimeError("'http.response.body' sent before 'http.response.start'")
            if self._response_done:
                raise RuntimeError("'http.response.body' sent after the response was complete")
            if self.disconnected:
                raise ClientDisconnected("the client went away")
            body = message.get("body", b"")
            if type(body) is not bytes and not isinstance(body, (bytearray, memoryview)):
                raise RuntimeError(
                    f"'http.response.body' body must be bytes, got {type(body).__name__}"
                )
            more = message.get("more_body", False)
            conn = self._conn
            data: _Bytes
            if self.status == 0:
                self.status = head.status
                data = conn.send(head)
                if len(body) > _COALESCE_LIMIT:
                    # A large first body goes out with the head in one
                    # sendmsg() rather than being copied behind it.
                    if not more:
                        self._response_done = True
                    try:
                        await self._send_two(data, body)
                    except OSError as exc:
                        self.disconnected = True
                        raise ClientDisconnected(f"the client went away: {exc}") from None
                    self.response_bytes += len(body)
                    return
                if body:
                    data = data + body
            else:
                data = body
            if not more:
                self._response_done = True
            if data:
                try:
                    await self._sendall(data)
                except OSError as exc:
                    self.disconnected = True
                    raise ClientDisconnected(f"the client went away: {exc}") from None
                self.response_bytes += len(body)
            return
        if kind == "http.response.start":
            if self._head is not None:
                raise RuntimeError("'http.response.start' sent twice")
            try:
                status = message["status"]
                headers = message.get("headers", ())
            except KeyError:
                raise RuntimeError("'http.response.start' without 'status'") from None
            try:
                head = p.Response(status=status, headers=headers)
            except p.LocalProtocolError as exc:
                raise RuntimeError(f"invalid 'http.response.start': {exc}") from None
            self._head = _strip_framing(head)
            if self.disconnected:
                raise ClientDisconnected("the client went away")
            return
        if kind in _FILE_EXTENSIONS:
            await self._send_file(message)
            return
        raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    # --- the file extensions (http.response.pathsend / zerocopysend) ----------

    async def _send_file(self, message: Message) -> None:
        """Send a file with os.sendfile: ``pathsend`` {path} or ``zerocopysend``.

        The application sets the headers (Content-Length included); the file
        goes out from the kernel's page cache without passing through Python.
        """
        head = self._head
        kind = message["type"]
        if head is None:
            raise RuntimeError(f"{kind!r} sent before 'http.response.start'")
        if self._response_done:
            raise RuntimeError(f"{kind!r} sent after the response was complete")
        if self.disconnected:
            raise ClientDisconnected("the client went away")
        if kind == "http.response.pathsend":
            path = message["path"]
            if not os.path.isabs(path):
                raise RuntimeError(f"'http.response.pathsend' needs an absolute path, not {path!r}")
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                # Not an OSError: to the app (ASGI 2.4) that would mean the
                # client went away, hiding its own mistake.
                raise RuntimeError(f"'http.response.pathsend' can't open {path!r}: {exc}") from exc
            try:
                await self._send_fd(head, fd, 0, os.fstat(fd).st_size, more=False)
            finally:
                os.close(fd)
            return
        fd = message["file"].fileno()
        offset = message.get("offset")
        count = message.get("count")
        more = bool(message.get("more_body", False))
        # zerocopysend: without an offset, send from the file's position and move it.
        start = os.lseek(fd, 0, os.SEEK_CUR) if offset is None else offset
        if count is None:
            count = max(os.fstat(fd).st_size - start, 0)
        sent = await self._send_fd(head, fd, start, count, more=more)
        if offset is None:
            os.lseek(fd, start + sent, os.SEEK_SET)

    async def _send_fd(
        self, head: p.Response, fd: int, offset: int, count: int, *, more: bool
    ) -> int:
        if self.status == 0:
            self.status = head.status
            try:
                await self._sendall(self._conn.send(head))
            except OSError as exc:
                self.disconnected = True
                raise ClientDisconnected(f"the client went away: {exc}") from None
        if not more:
            self._response_done = True
        try:
            sent = await sendfile(self._sock, fd, offset, count, patience=self.config.write_timeout)
        except OSError as exc:
            if not (isinstance(exc, TimeoutError) or exc.errno in _PEER_GONE):
                # The file could not be read: the application's error, not
                # an OSError that would tell it the client went away.
                raise RuntimeError(f"reading the file to send failed: {exc}") from exc
            self.disconnected = True
            raise ClientDisconnected(f"the client went away: {exc}") from None
        self.response_bytes += sent
        if sent < count:
            # The Content-Length the app announced can't be met: the front-end
            # must see a truncated response, not a complete-looking one.
            raise RuntimeError(f"file ended after {sent} of {count} bytes")
        return sent


# Advertised in every HTTP scope (ASGI extensions); the values carry no options.
_FILE_EXTENSIONS: dict[str, dict[str, Any]] = {
    "http.response.pathsend": {},
    "http.response.zerocopysend": {},
}

# sendfile errors that mean the front-end closed the connection.
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


def _strip_framing(head: p.Response) -> p.Response:
    # The front-end frames the response to its client itself; an app's
    # Transfer-Encoding would describe a framing we do not apply (ASGI spec:
    # servers ignore it). Done on the validated headers: bytes, and a list
    # even when the app gave an iterator.
    for name, _ in head.headers:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            kept = [h for h in head.headers if h[0].lower() != b"transfer-encoding"]
            return p.Response._make(status=head.status, headers=kept)
    return head
