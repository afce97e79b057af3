"""One HTTP request's ASGI cycle: receive/send, response checks, 500s, access log, counters.

It knows no wire format. A wire layer (``_wire.scgi``, ``_wire.uwsgi``, ``_wire.fastcgi``)
parses the request head and hands the CGI variables to ``dispatch``, which builds the scope
and, for an HTTP request, runs :meth:`HTTPCycle.run`; the cycle moves bytes through the
small :class:`~.seam.Wire` interface, runs the application and decides what the front-end
gets.
So SCGI, uwsgi and FastCGI share every ASGI rule and none of the framing.

This is the hot path: no task, channel or lock per request, one object.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import checkpoint_if_cancelled

from .. import scgi as p
from .._errors import ClientDisconnected, WriteTimeout
from .._types import Message
from .seam import error_response

if TYPE_CHECKING:
    from .seam import CycleHost, Wire

__all__ = ["FILE_EXTENSIONS", "HTTPCycle"]

log = logging.getLogger("trioscgi")


# Advertised in every HTTP scope (ASGI extensions); the values carry no options.
FILE_EXTENSIONS: dict[str, dict[str, Any]] = {
    "http.response.pathsend": {},
    "http.response.zerocopysend": {},
}


class HTTPCycle:
    """Run the application for one request over a :class:`Wire`.

    Attributes:
        status: the response status once its head went out (0 before).
        response_bytes: body bytes written.
        disconnected: the front-end went away.
    """

    __slots__ = (
        "_app_has_body",
        "_head",
        "_host",
        "_request_done",
        "_response_done",
        "_waiting",
        "_wire",
        "disconnected",
        "response_bytes",
        "status",
    )

    def __init__(self, wire: Wire, host: CycleHost) -> None:
        self._wire = wire
        self._host = host
        self._head: p.Response | None = None
        self._request_done = False
        self._app_has_body = False
        self._response_done = False
        # A receive() waiting for the disconnect after the body: the response's
        # end cancels it (ASGI: http.disconnect once the response is sent).
        self._waiting: trio.CancelScope | None = None
        self.disconnected = False
        self.status = 0
        self.response_bytes = 0

    async def refuse(self, status: int, *, body_done: bool) -> None:
        """Answer ``status`` (an error of trioscgi's own) before any app ran."""
        self._request_done = body_done
        await self._send_error(status)

    async def run(self, scope: dict[str, Any], *, body_done: bool, protocol: str) -> None:
        """Run the application for the HTTP request ``scope`` describes.

        Args:
            scope: the request's scope (``dispatch`` built it).
            body_done: the whole body is already known (empty): ``receive()`` needs no I/O.
            protocol: the wire it came over, "scgi", "fastcgi" or "uwsgi" (for the metrics
                and the cut's log line).
        """
        host = self._host
        scope["extensions"].update(FILE_EXTENSIONS)
        self._request_done = body_done
        access_logger = host.access_logger
        metrics = host.metrics
        start = trio.current_time()
        try:
            if access_logger is None and metrics is None:
                await self._run_app(scope)
            else:
                if metrics is not None:
                    metrics.in_flight += 1
                try:
                    await self._run_app(scope)
                finally:
                    elapsed = trio.current_time() - start
                    if access_logger is not None:
                        access_logger.log(scope, self.status, self.response_bytes, elapsed)
                    if metrics is not None:
                        metrics.request_done(
                            protocol, self.status, scope, self.response_bytes, elapsed
                        )
        except trio.Cancelled:
            # Cut from outside: graceful_timeout, say (the host tells).
            host.request_cut(scope, start)
            raise
        finally:
            if self.status and not self._response_done and not self.disconnected:
                # Started and not finished, however we got here (the app raised
                # or returned early, a file ended short, a deadline cancelled
                # us): the front-end must not take it for a whole response.
                self._cut(scope, protocol)

    def _cut(self, scope: dict[str, Any], wire: str) -> None:
        # Only the wire can make the cut visible; what a client sees then depends
        # on the wire and the socket (docs/operations.md, "Reloads and faults").
        self._wire.abort()
        log.warning(
            "response cut short: %s %s, %d body bytes sent (%s, status %d)",
            scope["method"],
            scope["path"],
            self.response_bytes,
            wire,
            self.status,
        )
        if self._host.metrics is not None:
            self._host.metrics.responses_cut[wire] += 1

    async def _run_app(self, scope: dict[str, Any]) -> None:
        try:
            await self._host.app(scope, self.receive, self.send)
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
            if self._host.metrics is not None:
                self._host.metrics.app_exceptions += 1
            hint = _wrong_loop_hint(exc)
            if self.status == 0:
                log.error(
                    "exception in ASGI application before the response started%s",
                    hint,
                    exc_info=exc,
                )
                await self._send_error(500)
            else:
                log.error(
                    "exception in ASGI application after the response started%s",
                    hint,
                    exc_info=exc,
                )
            return
        if self.disconnected:
            return
        if not self._response_done:
            if self.status == 0:
                log.error("ASGI application returned without sending a response")
                await self._send_error(500)
            else:
                log.error("ASGI application returned before the response was complete")
            return
        if not self._request_done:
            await self._drain()

    def _write_failed(self, exc: ClientDisconnected) -> None:
        # The front-end is gone or stopped reading (WriteTimeout, counted).
        self.disconnected = True
        if isinstance(exc, WriteTimeout) and self._host.metrics is not None:
            self._host.metrics.timeouts["write"] += 1

    async def _send_error(self, status: int) -> None:
        if self.disconnected:
            return
        head, body = error_response(status)
        try:
            await self._wire.write(head, body, False)
        except ClientDisconnected:
            self.disconnected = True
            return
        self.status = status
        self._response_done = True
        if not self._request_done:
            await self._drain()

    async def _drain(self) -> None:
        await self._wire.drain()
        self._request_done = True

    # --- the ASGI callables --------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: the request body in chunks, then ``http.disconnect``.

        The cancellation point comes first: a caller cancelled at the call
        (Starlette's ``is_disconnected()`` does that) loses no body bytes.
        Once a chunk is taken from the wire, nothing can raise.
        """
        await checkpoint_if_cancelled()
        if self._app_has_body or self.disconnected:
            # ASGI: once the connection is gone, receive() says so, even if
            # the app never read the (empty) body.
            if not (self.disconnected or self._response_done):
                with trio.CancelScope() as self._waiting:
                    await self._wire.wait_disconnect()
                    self.disconnected = True
                self._waiting = None
            return {"type": "http.disconnect"}
        if self._request_done:
            # An empty body (known at the head), or one the server drained.
            self._app_has_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            body, more = await self._wire.read_body()
        except ClientDisconnected as exc:
            log.info("%s", exc)
            self.disconnected = True
            self._request_done = self._app_has_body = True
            return {"type": "http.disconnect"}
        if not more:
            self._request_done = self._app_has_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(self, message: Message) -> None:
        """ASGI ``send``: the response head is held until the first body message.

        Sending a body (or a file) is a cancellation point before anything
        changes: an app streaming to a fast reader (every send() going straight
        out) can still be cancelled at graceful_timeout. The wire writes that
        follow check no more. ``http.response.start`` only records the head
        (a second one raises), so it has no check of its own.
        """
        kind = message["type"]
        if kind == "http.response.body":
            await checkpoint_if_cancelled()
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
            first = self._head_to_send(head)
            if first is None and not body and more:
                return
            try:
                await self._wire.write(first, body, more)
            except ClientDisconnected as exc:
                self._write_failed(exc)
                raise
            self.response_bytes += len(body)
            if not more:
                self._response_done = True
                if self._waiting is not None:
                    self._waiting.cancel()
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
        if kind in FILE_EXTENSIONS:
            await checkpoint_if_cancelled()
            await self._send_file(message)
            return
        raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    # --- the file extensions (http.response.pathsend / zerocopysend) ----------

    def _head_to_send(self, head: p.Response) -> p.Response | None:
        """The head with the response's first bytes (and ``status`` set then), else None."""
        if self.status:
            return None
        self.status = head.status
        return head

    async def _send_file(self, message: Message) -> None:
        """Send a file: ``pathsend`` {path} or ``zerocopysend`` {file, offset, count, more_body}.

        The application sets the headers (Content-Length included); the wire
        layer sends the file from the kernel's page cache where it can.
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
        first = self._head_to_send(head)
        try:
            sent = await self._wire.write_file(first, fd, offset, count, more)
        except ClientDisconnected as exc:
            self._write_failed(exc)
            raise
        except OSError as exc:
            # The file could not be read: the application's error, not an
            # OSError that would tell it the client went away.
            raise RuntimeError(f"reading the file to send failed: {exc}") from exc
        self.response_bytes += sent
        if sent < count:
            # The Content-Length the app announced can't be met; the response
            # stays incomplete, so the front-end sees it cut (run()'s finally).
            raise RuntimeError(f"file ended after {sent} of {count} bytes")
        if not more:
            self._response_done = True
            if self._waiting is not None:
                self._waiting.cancel()
        return sent


def _wrong_loop_hint(exc: BaseException) -> str:
    """``": <hint>"`` when the app failed for running on the wrong event loop, else ``""``."""
    from .._apps.apploop import other_framework_hint  # noqa: PLC0415 - only on the error path

    hint = other_framework_hint(exc)
    return f": {hint}" if hint else ""


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
