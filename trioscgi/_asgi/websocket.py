"""One WebSocket session's ASGI cycle: handshake answer, frames via wsproto, close codes.

The wire layer that parsed the request (SCGI) hands over two things: its :class:`Wire`,
through which the HTTP answer to the handshake goes (the ``101``, or a denial: ``403`` or
the app's own ``websocket.http.response``), and a :class:`Tunnel`, the raw byte stream
the front-end opens after a ``101`` (nginx's SCGI module does, docs/websocket.md). Frames
are wsproto's; this module only moves its bytes and maps its events to ASGI messages.

Whoever waits for input reads it: the application's ``receive()`` reads the socket itself
when nothing is read ahead, so an echo costs one task wake-up per message, as a protocol
callback does in asyncio. A keeper task takes over the reading once the application has
stayed away from ``receive()`` for ``_AWAY`` to twice that, so pings and closes are
answered while it is busy; a pinger task keeps the tunnel alive through the front-end's read
timeout. One reads at a time (``_read_turn``). Writes from the app, the readers and the
pinger take turns (``_write_turn``), in wsproto's order.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import trio
from trio.lowlevel import ParkingLot, checkpoint_if_cancelled
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import LocalProtocolError

from .. import scgi as p
from .._errors import ClientDisconnected
from .._turns import ReadTurn, WriteTurn
from .._types import RECV_SIZE
from .._types import Message as ASGIMessage
from .seam import error_response

if TYPE_CHECKING:
    from .seam import CycleHost, Tunnel, Wire

__all__ = ["WebSocketCycle"]

log = logging.getLogger("trioscgi")

# RFC 6455 4.2.2: the GUID appended to the client's key for Sec-WebSocket-Accept.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Messages read ahead of the application: the keeper stops reading the socket beyond
# these (TCP then pushes back on the client), so memory stays bounded by about this
# many times websocket_max_message_size.
_INBOX = 8
# How long the application may stay away from receive() before the keeper task reads
# for it (answering pings and closes). Reading in the app's own task saves a task
# wake-up per message; a keeper that woke on every message would cost it back, so it
# looks every _AWAY seconds instead, and not at all while a session is idle.
_AWAY = 0.25

# Close codes (RFC 6455 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
ABNORMAL = 1006
TOO_BIG = 1009
INTERNAL_ERROR = 1011


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID, usedforsecurity=False).digest())


def _bad_handshake(
    headers: list[tuple[bytes, bytes]],
) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """What is wrong with a handshake's headers: ``(status, why, extra headers)``, or None."""
    key = version = None
    for name, value in headers:
        if name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value
    if version is None or version.strip() != b"13":
        # RFC 6455 4.4: 426 with the version we speak.
        return 426, f"Sec-WebSocket-Version {version!r}", [(b"sec-websocket-version", b"13")]
    try:
        valid = key is not None and len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        return 400, f"Sec-WebSocket-Key {key!r} is not 16 bytes in base64", []
    return None


class WebSocketCycle:
    """Run the application for one WebSocket session.

    Attributes:
        close_code: the code the session ended with (``None`` before it ends).
        status: the HTTP status the handshake got (101, 403, 500, or the app's own).
    """

    def __init__(self, wire: Wire, tunnel: Tunnel, host: CycleHost) -> None:
        self._wire = wire
        self._tunnel = tunnel
        self._host = host
        config = host.config
        self._max_size = config.websocket_max_message_size
        self._ping_interval = config.websocket_ping_interval
        self._ping_timeout = config.websocket_ping_timeout
        self._ws: Connection | None = None
        self._nursery: trio.Nursery | None = None
        self._write_turn = WriteTurn()  # held from ws.send to the end of its sendall
        self._queue: deque[dict[str, Any]] = deque()  # messages read ahead
        self._read_turn = ReadTurn()  # a task reads the socket and feeds wsproto
        self._drained = True  # the last read took all there was
        self._parts: list[Any] = []  # the fragments of the message being received
        self._size = 0
        self._receivers = 0  # tasks in receive()
        self._received = 0  # messages receive() returned
        self._keeper_lot = ParkingLot()  # the keeper waits for the app to take a message
        self._keeper_parked = False
        self._connect_delivered = False
        self._response_started = False  # websocket.http.response.start seen
        self._handshake_done = False  # 101 sent, or the denial complete
        self._early_waits: list[trio.CancelScope] = []  # receive() calls from before it
        self._gone = False  # the tunnel can carry nothing more
        self._broken = False  # the peer broke the protocol: our close is the last frame
        self._end_delivered = False
        self._pong = trio.Event()
        self._reader_done = trio.Event()
        self._disconnect: dict[str, Any] = {
            "type": "websocket.disconnect",
            "code": ABNORMAL,
            "reason": "",
        }
        self.status = 0
        self.close_code: int | None = None
        self.sent_bytes = 0

    # --- the session ---------------------------------------------------------

    async def run(self, scope: dict[str, Any]) -> None:
        """Serve the session whose handshake request ``scope`` describes."""
        host = self._host
        self._scope_headers = headers = scope["headers"]
        sessions = host.websocket_sessions
        start = trio.current_time()
        try:
            problem = _bad_handshake(headers)
            if problem is not None:
                # RFC 6455 4.2.1-4.2.2: not a handshake we can complete; the app never
                # sees it.
                log.info("bad WebSocket handshake: %s; answered %d", problem[1], problem[0])
                await self._deny(problem[0], problem[2])
                return
            sessions.add(self)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._run_app(scope)
                    await self._finish()
                finally:
                    # Closed to new tasks from here on: a graceful shutdown now finds
                    # nothing left to close (going_away).
                    self._nursery = None
                nursery.cancel_scope.cancel()
        finally:
            sessions.discard(self)
            if self.status == 101 and (self.close_code is None or not self._reader_done.is_set()):
                # Cut rather than closed (a deadline, a lost peer): a reset, not an EOF.
                self._tunnel.abort()
            access_logger = host.access_logger
            if access_logger is not None:
                logged = dict(scope, method="GET", websocket_close=self.close_code)
                access_logger.log(logged, self.status, self.sent_bytes, trio.current_time() - start)

    async def _run_app(self, scope: dict[str, Any]) -> None:
        try:
            await self._host.app(scope, self.receive, self.send)
        except Exception as exc:
            metrics = self._host.metrics
            if metrics is not None and not (self.status == 101 and self._gone):
                metrics.app_exceptions += 1  # the app's fault, as for HTTP
            if self.status == 0:
                log.error(
                    "exception in ASGI application before the WebSocket handshake", exc_info=exc
                )
                await self._deny(500)
            elif self.status == 101 and not self._gone:
                log.error("exception in ASGI application on an open WebSocket", exc_info=exc)
                await self._close(INTERNAL_ERROR, "")
            elif self.status == 101:
                log.info("WebSocket client went away: %s (%s)", scope["path"], type(exc).__name__)
            else:
                log.error("exception in ASGI application during its handshake answer", exc_info=exc)
                self._wire.abort()
            return
        if self.status == 0:
            # ASGI: closing (or returning) before accept denies the handshake with 403.
            await self._deny(403)
        elif self.status != 101 and not self._handshake_done:
            log.error("ASGI application returned before its handshake answer was complete")
            self._wire.abort()

    async def _finish(self) -> None:
        """The app is done: close the WebSocket if it is open, wait for the peer's close."""
        if self.status != 101:
            return
        ws = self._ws
        assert ws is not None
        if ws.state is ConnectionState.OPEN and not self._gone:
            await self._close(NORMAL, "")
        # RFC 6455 7.1.1: the server closes the TCP connection once the close
        # handshake is done; a peer that never answers gets websocket_ping_timeout.
        done = self._reader_done
        with trio.move_on_after(self._ping_timeout):
            while not done.is_set():
                await self._read_or_wait()

    def going_away(self) -> None:
        """Graceful shutdown: close an open session with 1001; the peer's answer tells the app."""
        if self.status == 101 and self._nursery is not None and not self._gone:
            self._nursery.start_soon(self._close, GOING_AWAY, "server shutting down")

    # --- the wire side ---------------------------------------------------------

    async def _write(self, event: Event) -> bool:
        """Send ``event`` in wsproto's order; ``False`` when it can't go (closed, or peer gone)."""
        ws = self._ws
        assert ws is not None
        # Free (the usual case), taking the turn is no schedule point: the check below
        # and sendall's fair yields do that job (_turns says what trio.Lock would cost).
        turn = self._write_turn
        if not turn.take_now():
            await turn.wait()  # cancelled while waiting: nothing was framed, nothing lost
        try:
            # Cancelled, go now: once wsproto has framed the event, its state (the
            # compression context, the close) says it went out. (send() leaves this
            # check to us: one per message.)
            await checkpoint_if_cancelled()
            if self._gone:
                return False
            try:
                data = ws.send(event)
            except LocalProtocolError:  # the state forbids it: closing or closed
                return False
            try:
                await self._tunnel.sendall(data, checked=True)  # checked above
            except ClientDisconnected as exc:
                self._lost(f"{exc}")
                return False
            except trio.ClosedResourceError:  # the session was lost meanwhile (_lost)
                return False
            except BaseException:
                # Cancelled while the socket was full: part of the frame may be out, and
                # wsproto counts all of it sent. Nothing can follow it: cut the session.
                self._lost("a write was cancelled mid-frame")
                raise
        finally:
            turn.release()
        return True

    async def _close(self, code: int, reason: str) -> None:
        ws = self._ws
        assert ws is not None
        if ws.state is ConnectionState.OPEN or ws.state is ConnectionState.REMOTE_CLOSING:
            if self.close_code is None:
                self.close_code = int(code)
            await self._write(CloseConnection(code=code, reason=reason))

    def _lost(self, why: str) -> None:
        """The peer is gone (EOF, reset, no pong): the app gets disconnect 1006."""
        if not self._gone:
            log.info("WebSocket connection lost: %s", why)
            self._gone = True
            if self.close_code is None:
                self.close_code = ABNORMAL
            self._end(ABNORMAL, "")
            # Whoever waits on the socket (a receive() reading for itself, a stalled
            # write) learns it now rather than never: nothing uses the socket after this
            # but its close.
            trio.lowlevel.notify_closing(self._tunnel.sock)

    def _end(self, code: int, reason: str) -> None:
        self._deliver_end(code, reason)
        self._reader_done.set()
        self._pong.set()
        if self._keeper_parked:
            self._keeper_lot.unpark_all()

    async def _read_once(self) -> None:
        """Read once from the socket and feed wsproto (the caller checked that nobody else
        reads); messages go to the queue, pings and closes are answered here."""
        turn = self._read_turn
        turn.take()
        try:
            tunnel = self._tunnel
            try:
                # When the last read took all there was (less than a full buffer), wait
                # before reading rather than try a recv that would fail (an echo-like
                # session saves a syscall per message).
                if self._drained:
                    data = await tunnel.recv_when_readable()
                else:
                    data = await tunnel.recv_unbounded()
            except OSError as exc:
                self._lost(f"{exc}")
                return
            except trio.ClosedResourceError:  # _lost() in another task woke us
                return
            if self._gone:
                return
            self._drained = len(data) < RECV_SIZE
            replies = self._feed(data)
            if replies:
                # What was read must be answered whatever happens to the task that read
                # it (sendall is bounded by write_timeout).
                with trio.CancelScope(shield=True):
                    for reply in replies:
                        if isinstance(reply, tuple):
                            await self._close(*reply)
                        else:
                            await self._write(reply)
                if self._broken:
                    self._gone = True  # nothing after our close can go out
        finally:
            turn.done()  # read, failed or cancelled: the waiters look, one may read next

    def _feed(self, data: bytes) -> list[Event | tuple[int, str]]:
        """Hand ``data`` to wsproto; queue its messages for the app and return what to
        answer: events to send, and ``(code, reason)`` for a close of ours."""
        ws = self._ws
        assert ws is not None
        replies: list[Event | tuple[int, str]] = []
        ws.receive_data(data or None)
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                # cast, not assert isinstance: wsproto's events are ABCs, and their
                # isinstance check is measurable per message.
                event = cast("Message[Any]", event)
                if ws.state is not ConnectionState.OPEN or self._end_delivered:
                    continue  # we are closing: what still arrives is dropped
                self._size += len(event.data)
                if self._size > self._max_size:
                    log.info(
                        "WebSocket message over %d bytes (websocket_max_message_size);"
                        " closing with 1009",
                        self._max_size,
                    )
                    self._parts.clear()
                    replies.append((TOO_BIG, "message too big"))
                    self._deliver_end(TOO_BIG, "")
                    continue
                parts = self._parts
                if not event.message_finished:
                    parts.append(event.data)
                    continue
                if parts:
                    parts.append(event.data)
                    payload = type(parts[0])().join(parts)
                    parts.clear()
                else:
                    payload = event.data
                self._size = 0
                self._queue.append(
                    {"type": "websocket.receive", "text": payload}
                    if kind is TextMessage
                    else {"type": "websocket.receive", "bytes": bytes(payload)}
                )
            elif kind is Ping:
                assert isinstance(event, Ping)
                replies.append(event.response())
            elif kind is Pong:
                self._pong.set()
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                if not data:
                    self._lost("the client closed the connection without a close frame")
                    break
                if ws.state is ConnectionState.OPEN:
                    # A frame wsproto could not parse (unmasked, bad UTF-8, a control
                    # frame over 125 bytes...): it reports the close code to answer
                    # with; nothing after it can be trusted.
                    if event.code == TOO_BIG:  # a compressed message (_BoundedDeflate)
                        log.info(
                            "WebSocket message over %d bytes inflated"
                            " (websocket_max_message_size); closing with 1009",
                            self._max_size,
                        )
                    else:
                        log.info(
                            "WebSocket protocol error: %s; closing with %d",
                            event.reason,
                            event.code,
                        )
                    replies.append((event.code, ""))
                    self._broken = True
                    self._end(event.code, "")
                    break
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    # The client closes: answer with its code (RFC 6455 5.5.1).
                    if self.close_code is None:
                        self.close_code = int(event.code)
                    replies.append(event.response())
                self._end(event.code, event.reason or "")
                break
        return replies

    async def _read_or_wait(self) -> None:
        """Read once if nobody else reads; else wait until the one who does has news."""
        if self._read_turn.reading:
            await self._read_turn.wait()
        else:
            await self._read_once()

    async def _keeper(self) -> None:
        """Read for the application while it stays away from ``receive()`` (busy, or
        sending only), so pings and closes are answered and the end is noticed."""
        done = self._reader_done
        queue = self._queue
        while not done.is_set():
            seen = self._received
            await trio.sleep(_AWAY)
            if self._received != seen:
                continue  # the app takes messages: it reads for itself
            if self._receivers or len(queue) >= _INBOX:
                # Idle in receive() (it reads), or busy with a full read-ahead (TCP
                # pushes back): nothing to do until the app takes a message.
                self._keeper_parked = True
                try:
                    await self._keeper_lot.park()
                finally:
                    self._keeper_parked = False
                continue
            while not (done.is_set() or self._receivers or len(queue) >= _INBOX):
                await self._read_or_wait()

    def _deliver_end(self, code: int, reason: str) -> None:
        # The app hears of the end once, with the first code: ours when we closed for a
        # reason of ours (1009), the peer's otherwise; after what was read ahead.
        if not self._end_delivered:
            self._end_delivered = True
            # int(): wsproto reports some codes as its CloseReason enum.
            self._disconnect = {"type": "websocket.disconnect", "code": int(code), "reason": reason}
            self._read_turn.news()

    async def _pinger(self) -> None:
        ws = self._ws
        assert ws is not None
        count = 0
        while True:
            await trio.sleep(self._ping_interval)
            if ws.state is not ConnectionState.OPEN or self._gone:
                return
            count += 1
            self._pong = trio.Event()
            if not await self._write(Ping(payload=count.to_bytes(4, "big"))):
                return
            with trio.move_on_after(self._ping_timeout):
                await self._pong.wait()
                continue
            self._lost(f"no pong within {self._ping_timeout:g} s (websocket_ping_timeout)")
            return

    # --- the handshake answer ---------------------------------------------------

    async def _deny(self, status: int, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        if self._handshake_done:
            return
        head, body = error_response(status)
        if extra:
            head = p.Response(status=status, headers=[*head.headers, *extra])
        self.status = status
        self._answered()
        try:
            await self._wire.write(head, body, False)
        except ClientDisconnected:
            self._gone = True

    async def _accept(self, message: ASGIMessage, scope_headers: Any) -> None:
        subprotocol = message.get("subprotocol")
        headers: list[tuple[bytes, bytes]] = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
        ]
        key = b""
        offers: list[str] = []
        for name, value in scope_headers:
            if name == b"sec-websocket-key":
                key = value
            elif name == b"sec-websocket-extensions":
                offers.extend(x.strip() for x in value.decode("latin-1").split(","))
        headers.append((b"sec-websocket-accept", accept_token(key)))
        if subprotocol is not None:
            headers.append((b"sec-websocket-protocol", str(subprotocol).encode("latin-1")))
        extensions: list[Extension] = []
        if offers and self._host.config.websocket_per_message_deflate:
            deflate = _BoundedDeflate(self._max_size)
            agreed = server_extensions_handshake(offers, [deflate])
            if agreed is not None:
                headers.append((b"sec-websocket-extensions", agreed))
                extensions.append(deflate)
        for name, value in message.get("headers", ()):
            headers.append((bytes(name).lower(), bytes(value)))
        try:
            head = p.Response(status=101, headers=headers)
        except p.LocalProtocolError as exc:
            raise RuntimeError(f"invalid 'websocket.accept': {exc}") from None
        self._ws = Connection(ConnectionType.SERVER, extensions=extensions)
        self.status = 101
        self._answered()
        try:
            await self._wire.write(head, b"", True)
        except ClientDisconnected as exc:
            self._lost(f"{exc}")
            return
        nursery = self._nursery
        assert nursery is not None
        nursery.start_soon(self._keeper)
        if self._ping_interval > 0:
            nursery.start_soon(self._pinger)

    def _answered(self) -> None:
        """The handshake has its answer: a ``receive()`` waiting from before it stops
        watching the socket (after a ``101`` the frames come there) and looks again."""
        self._handshake_done = True
        for scope in self._early_waits:
            scope.cancel()

    # --- the ASGI callables ---------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: ``websocket.connect``, then messages, then ``websocket.disconnect``."""
        if not self._connect_delivered:
            await checkpoint_if_cancelled()
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        if self.status != 101:
            # Not accepted (yet): nothing arrives before our answer; wait for the client
            # to give up, or for our answer (another task of the app may send it
            # meanwhile: after a 101, the frames that follow are this call's).
            if not self._handshake_done and not self._gone:
                with trio.CancelScope() as waiting:
                    self._early_waits.append(waiting)
                    try:
                        await self._wire.wait_disconnect()
                    finally:
                        self._early_waits.remove(waiting)
                if not waiting.cancelled_caught:
                    self._gone = True
            if self.status != 101:
                return self._disconnect
        # A message already read comes without a schedule point; the app yields when it
        # sends, or here once it has to wait for the socket.
        queue = self._queue
        if queue:
            await checkpoint_if_cancelled()
        else:
            self._receivers += 1
            try:
                while not queue:
                    if self._end_delivered:
                        await checkpoint_if_cancelled()
                        return self._disconnect
                    if self._read_turn.reading:
                        await self._read_turn.wait()
                    else:
                        await self._read_once()  # checks for cancellation, then reads
            finally:
                self._receivers -= 1
        self._received += 1
        if self._keeper_parked:
            self._keeper_lot.unpark_all()
        return queue.popleft()

    async def send(self, message: ASGIMessage) -> None:
        """ASGI ``send``: accept, deny (close before accept, or ``websocket.http.response``),
        text and bytes, close."""
        kind = message["type"]
        if kind == "websocket.send":
            if self.status != 101:
                raise RuntimeError("'websocket.send' before 'websocket.accept'")
            ws = self._ws
            assert ws is not None
            if self._gone or ws.state is not ConnectionState.OPEN:
                raise ClientDisconnected("the WebSocket is closed")
            text = message.get("text")
            if text is not None:
                event: Event = TextMessage(data=text)
                length = len(text)
            else:
                data = message.get("bytes")
                if data is None:
                    raise RuntimeError("'websocket.send' with neither 'bytes' nor 'text'")
                event = BytesMessage(data=data)
                length = len(data)
            if not await self._write(event):  # checks for cancellation first
                raise ClientDisconnected("the WebSocket is closed")
            self.sent_bytes += length
            return
        await checkpoint_if_cancelled()
        if kind == "websocket.accept":
            if self.status != 0 or self._response_started:
                raise RuntimeError("'websocket.accept' after the handshake was answered")
            if self._gone:
                raise ClientDisconnected("the client went away")
            await self._accept(message, self._scope_headers)
            return
        if kind == "websocket.close":
            if self.status == 101:
                ws = self._ws
                assert ws is not None
                if self._gone or ws.state is not ConnectionState.OPEN:
                    return  # closing twice, or after the peer: nothing to do
                await self._close(int(message.get("code") or NORMAL), message.get("reason") or "")
                return
            if self._response_started:
                raise RuntimeError("'websocket.close' during 'websocket.http.response'")
            await self._deny(403)
            return
        if kind == "websocket.http.response.start":
            if self.status != 0 or self._response_started:
                raise RuntimeError(f"{kind!r} after the handshake was answered")
            try:
                self._response_head = p.Response(
                    status=message["status"], headers=message.get("headers", ())
                )
            except (KeyError, p.LocalProtocolError) as exc:
                raise RuntimeError(f"invalid {kind!r}: {exc}") from None
            self._response_started = True
            return
        if kind == "websocket.http.response.body":
            if not self._response_started or self._handshake_done:
                raise RuntimeError(f"{kind!r} outside a 'websocket.http.response'")
            head = self._response_head if self.status == 0 else None
            more = bool(message.get("more_body", False))
            if head is not None:
                self.status = head.status
            if not more:
                self._answered()
            try:
                await self._wire.write(head, message.get("body", b""), more)
            except ClientDisconnected:
                self._gone = True
                raise
            return
        raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    _scope_headers: Any = ()
    _response_head: p.Response


class _BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that inflates no message far past websocket_max_message_size.

    wsproto inflates each piece of a compressed frame whole, as it arrives: deflate
    packs a run of one byte about 1,000 to 1, so one read of 64 KiB could become 64 MiB
    (and copies of it) before the size check on the message could see it. Here the
    inflating stops one byte past the limit (four bytes a character for a text message,
    whose size is counted in characters), and the session closes with 1009.
    """

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self._max_size = max_size
        self._limit = max_size  # of the message being received, in bytes
        self._inflated = 0

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if self._inbound_compressed is None:  # the first frame of a message
            self._inflated = 0
            # The size check on messages counts a text message's characters, up to 4
            # bytes each in UTF-8: what is within it must inflate.
            self._limit = self._max_size * 4 if opcode is Opcode.TEXT else self._max_size
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        decompressor = self._decompressor
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert decompressor is not None
        try:
            # Output short of the bound means all the input was taken; at the bound,
            # the message is too big whatever is left.
            inflated = decompressor.decompress(data, self._limit - self._inflated + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(inflated)
        if self._inflated > self._limit:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        # The end of a compressed message inflates only what zlib still holds (the
        # input is the 4-byte tail of the flush): small, but counted too.
        tail = super().frame_inbound_complete(proto, fin)
        if isinstance(tail, bytes):
            self._inflated += len(tail)
            if self._inflated > self._limit:
                return CloseReason.MESSAGE_TOO_BIG
        return tail
