"""The WebSocket cycle in-process: an SCGI handshake, then wsproto's client framing.

A fake front-end: it sends the SCGI head nginx would send for a handshake, reads the
CGI-style answer, then speaks WebSocket on the same stream (what nginx's tunnel does).
Timeouts run under ``autojump_clock``.
"""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import scgi_client
import trio
import trio.testing
from scgi_client import encode_request, environ, read_all, serving
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate

from trioscgi._asgi.scope import http_scope
from trioscgi._asgi.websocket import _BoundedDeflate, accept_token

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example


_opened: list[trio.SocketStream] = []


async def connect(address: str) -> trio.SocketStream:
    stream = await scgi_client.connect(address)
    _opened.append(stream)
    return stream


@pytest.fixture
async def bind(tmp_path: Path) -> AsyncIterator[str]:
    """The server's address; the streams the test opened are closed after it."""
    yield f"unix:{tmp_path / 'ws.sock'}"
    for stream in _opened:
        await stream.aclose()
    _opened.clear()


def handshake(uri: str = "/ws", **extra: str) -> bytes:
    headers = {
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        **extra,
    }
    return encode_request(environ("GET", uri, extra=headers))


class Client:
    """The far end of the tunnel: wsproto's client side on the SCGI stream."""

    def __init__(self, stream: trio.SocketStream, head: bytes, rest: bytes) -> None:
        self.stream = stream
        self.head = head
        self.ws = Connection(ConnectionType.CLIENT, trailing_data=rest)
        self.pending: list[Event] = list(self.ws.events())

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)


async def open_ws(address: str, **extra: str) -> Client:
    stream = await connect(address)
    await stream.send_all(handshake(**extra))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return Client(stream, head, rest)


async def echo(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    assert await receive() == {"type": "websocket.connect"}
    await send({"type": "websocket.accept", "subprotocol": "chat", "headers": [(b"x-a", b"1")]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({**message, "type": "websocket.send"})


def scope_of(**extra: str) -> dict[str, Any]:
    pairs = environ("GET", "/ws?x=1", extra={"HTTP_UPGRADE": "WebSocket", **extra})
    return http_scope(pairs, root_path="", state=None, websocket=True)


# --- the scope --------------------------------------------------------------------------


def test_websocket_scope() -> None:
    scope = scope_of(HTTP_SEC_WEBSOCKET_PROTOCOL="chat, superchat", REQUEST_SCHEME="https")
    assert scope["type"] == "websocket"
    assert "method" not in scope
    assert (scope["path"], scope["query_string"], scope["scheme"]) == ("/ws", b"x=1", "wss")
    assert scope["subprotocols"] == ["chat", "superchat"]
    assert "websocket.http.response" in scope["extensions"]
    assert (b"upgrade", b"WebSocket") in scope["headers"]


@pytest.mark.parametrize(
    ("method", "kwargs", "extra", "why"),
    [
        ("GET", {"wire": "fastcgi", "websocket": False}, {}, "FastCGI front-ends can't tunnel"),
        ("GET", {}, {}, "pip install 'trioscgi[websocket]'"),
        ("POST", {"websocket": True}, {}, "a POST can't open a WebSocket"),
        (
            "GET",
            {"websocket": True},
            {"SERVER_SOFTWARE": "Apache/2.4.62 (Debian)"},
            "Apache's mod_proxy_scgi",
        ),
        (
            "GET",
            {"websocket": True, "wire": "uwsgi"},
            {"SERVER_SOFTWARE": "Apache/2.4.62 (Debian)"},
            "Apache's mod_proxy_uwsgi",
        ),
        (
            "GET",
            {"websocket": True},
            {"SERVER_SOFTWARE": "lighttpd/1.4.69"},
            "only from 1.4.74",
        ),
    ],
)
def test_handshake_served_as_http_where_no_tunnel(
    method: str, kwargs: dict[str, Any], extra: dict[str, str], why: str
) -> None:
    notes: list[str] = []
    pairs = environ(method, "/ws", extra={"HTTP_UPGRADE": "websocket", **extra})
    scope = http_scope(pairs, root_path="", state=None, notes=notes, **kwargs)
    assert scope["type"] == "http"
    [note] = notes
    assert why in note


def test_lighttpd_with_upgrade_support_tunnels() -> None:
    assert scope_of(SERVER_SOFTWARE="lighttpd/1.4.76")["type"] == "websocket"


# --- the session --------------------------------------------------------------------------


async def test_accept_echo_and_client_close(bind: str) -> None:
    async with serving(echo, bind) as srv:
        client = await open_ws(srv.address, HTTP_SEC_WEBSOCKET_PROTOCOL="chat")
        head = client.head.decode()
        assert head.startswith("Status: 101 Switching Protocols\r\n")
        assert f"sec-websocket-accept: {accept_token(KEY.encode()).decode()}" in head
        # RFC 6455 1.3's worked example.
        assert accept_token(KEY.encode()) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert "sec-websocket-protocol: chat" in head and "x-a: 1" in head
        await client.send(TextMessage(data="hi"))
        assert await client.next_event() == TextMessage(data="hi")
        await client.send(BytesMessage(data=b"\x00"))
        event = await client.next_event()
        assert isinstance(event, BytesMessage) and event.data == b"\x00"
        await client.send(CloseConnection(code=4000))
        event = await client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 4000
        assert await read_all(client.stream) == b""  # then the server closes


async def test_pings_keep_an_idle_session_alive(bind: str, autojump_clock: Any) -> None:
    async with serving(echo, bind, websocket_ping_interval=20.0) as srv:
        client = await open_ws(srv.address)
        start = trio.current_time()
        for _ in range(3):
            event = await client.next_event()
            assert isinstance(event, Ping)
            await client.send(event.response())
        assert trio.current_time() - start == pytest.approx(60.0)
        await client.send(TextMessage(data="still here"))
        assert await client.next_event() == TextMessage(data="still here")


async def test_no_pong_cuts_the_session_and_app_gets_1006(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trioscgi")
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async with serving(app, bind, websocket_ping_interval=5.0, websocket_ping_timeout=3.0) as srv:
        client = await open_ws(srv.address)
        start = trio.current_time()
        assert isinstance(await client.next_event(), Ping)  # never answered
        assert await read_all(client.stream) == b""
        assert trio.current_time() - start == pytest.approx(8.0)
    assert got == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    assert "no pong within 3 s" in caplog.text


async def test_client_pings_are_answered_while_app_is_busy(bind: str) -> None:
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()

    async with serving(app, bind, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        await client.send(Ping(payload=b"p"))
        assert await client.next_event() == Pong(payload=b"p")
        release.set()
        # The app returned without a close: the server closes with 1000.
        event = await client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1000
        await client.send(event.response())
        assert await read_all(client.stream) == b""


async def test_messages_read_while_app_is_busy_come_in_order(
    bind: str, autojump_clock: Any
) -> None:
    # The app is away from receive() long enough for the keeper to read for it: what
    # it read ahead, and what the app reads for itself afterwards, come in order.
    got: list[Any] = []
    busy = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        busy.set()
        await trio.sleep(10)
        while (message := await receive())["type"] != "websocket.disconnect":
            got.append(message)
        got.append(message)

    async with serving(app, bind, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        await client.send(TextMessage(data="0"))
        await busy.wait()
        for n in range(1, 4):
            await client.send(TextMessage(data=str(n)))
        await client.send(Ping(payload=b"p"))
        assert await client.next_event() == Pong(payload=b"p")  # the app is still busy
        assert trio.current_time() < 10
        await trio.sleep(20)
        await client.send(TextMessage(data="4"))
        await client.send(CloseConnection(code=1000))
        event = await client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1000
    texts = [m.get("text") for m in got[:-1]]
    assert texts == ["0", "1", "2", "3", "4"]
    assert got[-1] == {"type": "websocket.disconnect", "code": 1000, "reason": ""}


async def test_receive_cancelled_while_reading_loses_nothing(
    bind: str, autojump_clock: Any
) -> None:
    # receive() reads the socket in the app's task; a cancelled receive() leaves the
    # socket to the next one with nothing lost.
    got: list[Any] = []
    timeouts = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal timeouts
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            with trio.move_on_after(1) as waited:
                message = await receive()
            if waited.cancelled_caught:
                timeouts += 1
                continue
            got.append(message)
            if message["type"] == "websocket.disconnect":
                return
            await send({**message, "type": "websocket.send"})

    async with serving(app, bind, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        for n in range(3):
            await trio.sleep(2.5)
            await client.send(TextMessage(data=str(n)))
            assert await client.next_event() == TextMessage(data=str(n))
        await client.send(CloseConnection(code=4001))
        event = await client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 4001
    assert timeouts >= 6
    assert [m.get("text") for m in got[:-1]] == ["0", "1", "2"]
    assert got[-1]["code"] == 4001


async def test_concurrent_sends_go_out_whole(bind: str) -> None:
    # Several tasks send big messages at once: each waits for the socket in turn, and
    # no frame is interleaved with another's.
    big = 1 << 20

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(send, {"type": "websocket.send", "bytes": bytes([n]) * big})
        await send({"type": "websocket.close", "code": 4000})

    async with serving(app, bind, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        seen = []
        while not isinstance(event := await client.next_event(), CloseConnection):
            assert isinstance(event, BytesMessage)
            data = bytes(event.data)
            while not event.message_finished:
                event = await client.next_event()
                assert isinstance(event, BytesMessage)
                data += event.data
            assert len(data) == big and data == data[:1] * big
            seen.append(data[0])
        assert sorted(seen) == [0, 1, 2, 3, 4]
        assert event.code == 4000
        await client.send(event.response())
        assert await read_all(client.stream) == b""


async def test_send_cancelled_mid_frame_cuts_the_session(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The client reads nothing; the app gives up on a big send. Part of the frame is out
    # and wsproto counts it sent: the session can't go on, so it is cut (1006).
    caplog.set_level(logging.INFO, "trioscgi")
    after: list[BaseException] = []
    gave_up = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        with trio.move_on_after(5) as waited:
            await send({"type": "websocket.send", "bytes": b"x" * (16 << 20)})
        assert waited.cancelled_caught
        gave_up.set()
        start = trio.current_time()
        try:
            await send({"type": "websocket.send", "text": "more"})
        except OSError as exc:
            after.append(exc)
        # At once, not after write_timeout behind a half-sent frame.
        assert trio.current_time() == start
        assert (await receive())["code"] == 1006

    async with serving(app, bind, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        await gave_up.wait()
        # The connection ends after part of the frame (a reset, over TCP; this is a Unix
        # socket, where it reads as an EOF).
        received = await read_all(client.stream)
        assert 0 < len(received) < 16 << 20
    assert len(after) == 1
    assert "a write was cancelled mid-frame" in caplog.text


async def test_app_returning_before_accept_is_403(bind: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    async with serving(app, bind) as srv:
        stream = await connect(srv.address)
        await stream.send_all(handshake())
        assert (await read_all(stream)).startswith(b"Status: 403 Forbidden\r\n")


async def test_exception_before_accept_is_500(bind: str, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("nope")

    async with serving(app, bind) as srv:
        stream = await connect(srv.address)
        await stream.send_all(handshake())
        assert (await read_all(stream)).startswith(b"Status: 500 ")
    assert "exception in ASGI application before the WebSocket handshake" in caplog.text


async def test_send_after_disconnect_raises_oserror(bind: str) -> None:
    raised: list[BaseException] = []
    gone = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["code"] == 1006
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            raised.append(exc)
        gone.set()

    async with serving(app, bind, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        await client.stream.aclose()
        await gone.wait()
    assert len(raised) == 1


async def test_sessions_count_in_max_connections(bind: str, autojump_clock: Any) -> None:
    async with serving(echo, bind, max_connections=1, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        # The session holds the only connection: a second one is not accepted meanwhile.
        stream = await connect(srv.address)
        await stream.send_all(encode_request(environ("GET", "/")))
        with trio.move_on_after(5) as waited:
            await stream.receive_some(1)
        assert waited.cancelled_caught
        await client.send(CloseConnection(code=1000))
        await client.next_event()
        # Once the session ends the waiting request is served (the echo app is WebSocket-
        # only: an HTTP scope makes it fail its assert, so a 500).
        assert (await read_all(stream)).startswith(b"Status: 500 ")


async def test_graceful_shutdown_sends_1001(bind: str, autojump_clock: Any) -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async with serving(app, bind, websocket_ping_interval=0) as srv:
        client = await open_ws(srv.address)
        srv.stop()
        event = await client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1001
        await client.send(event.response())
        await srv.stopped.wait()
    # The client's answer echoes our code and reason.
    assert got == [{"type": "websocket.disconnect", "code": 1001, "reason": "server shutting down"}]


async def test_access_log_line_per_session(
    bind: str, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    caplog.set_level(logging.INFO, "trioscgi.access")
    async with serving(
        echo,
        bind,
        access_log="-",
        access_log_format='"%(r)s" %(s)s %(c)s %(L)s',
        websocket_ping_interval=0,
    ) as srv:
        client = await open_ws(srv.address)
        await trio.sleep(2)
        await client.send(CloseConnection(code=4321))
        await client.next_event()
        await read_all(client.stream)
    [line] = [r.getMessage() for r in caplog.records if r.name == "trioscgi.access"]
    assert line == '"GET /ws HTTP/1.1" 101 4321 2.000000'


@pytest.mark.parametrize(
    ("extra", "answer"),
    [
        ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, b"Status: 426 Upgrade Required\r\n"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "c2hvcnQ="}, b"Status: 400 Bad Request\r\n"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "not base64!"}, b"Status: 400 Bad Request\r\n"),
    ],
)
async def test_bad_handshake_is_refused_before_the_app(
    bind: str, extra: dict[str, str], answer: bytes
) -> None:
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    async with serving(app, bind) as srv:
        stream = await connect(srv.address)
        await stream.send_all(handshake(**extra))
        got = await read_all(stream)
    assert got.startswith(answer)
    if b"426" in answer:
        assert b"\r\nsec-websocket-version: 13\r\n" in got
    assert called == []


# --- permessage-deflate: inflation bounded ------------------------------------------------


def deflate_client() -> Connection:
    """wsproto's client side, with permessage-deflate agreed (default parameters)."""
    deflate = PerMessageDeflate()
    deflate.finalize("permessage-deflate")
    return Connection(ConnectionType.CLIENT, extensions=[deflate])


def bounded_server(max_size: int) -> Connection:
    deflate = _BoundedDeflate(max_size)
    deflate.accept("permessage-deflate")
    return Connection(ConnectionType.SERVER, extensions=[deflate])


def compressed_message(data: bytes) -> bytes:
    """``data`` as one compressed binary message, framed by wsproto's client side."""
    wire = deflate_client().send(BytesMessage(data=data))
    assert len(wire) < len(data) // 100 + 100  # compressed indeed
    return wire


@pytest.mark.parametrize("size", [1 << 20, (1 << 20) + 1, 32 << 20])
def test_a_compressed_message_is_inflated_only_up_to_the_limit(size: int) -> None:
    # 32 MiB of zeros travel as ~32 KiB. wsproto alone would inflate all of it at
    # once; the bounded extension stops one byte past websocket_max_message_size.
    wire = compressed_message(bytes(size))
    server = bounded_server(1 << 20)
    tracemalloc.start()
    try:
        server.receive_data(wire)
        events = list(server.events())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if size <= 1 << 20:
        assert [type(e) for e in events] == [BytesMessage]
        assert isinstance(events[0], BytesMessage)  # (for mypy: the line above says it)
        assert events[0].data == bytes(size)
    else:
        assert [type(e) for e in events] == [CloseConnection]
        assert isinstance(events[0], CloseConnection)  # (for mypy: the line above says it)
        assert events[0].code == 1009
        assert peak < 4 << 20, peak


def test_a_compressed_text_message_is_bounded_in_characters() -> None:
    # The limit counts a text message's characters: 1,000 three-byte characters are
    # within a 1,000 limit though they inflate to 3,000 bytes; 1,001 are not.
    server = bounded_server(1000)
    server.receive_data(deflate_client().send(TextMessage(data="€" * 1000)))
    events = list(server.events())
    assert [type(e) for e in events] == [TextMessage]
    assert isinstance(events[0], TextMessage)  # (for mypy: the line above says it)
    assert events[0].data == "€" * 1000
    server = bounded_server(1000)
    server.receive_data(deflate_client().send(TextMessage(data="x" * 5000)))
    assert [getattr(e, "code", None) for e in server.events()] == [1009]


def test_the_inflation_bound_is_per_message() -> None:
    # Three messages of 700,000 bytes each under a 1 MiB bound: the count restarts at
    # each message (one client, so the deflate context carries over as in a session).
    client = deflate_client()
    wire = b"".join(client.send(BytesMessage(data=bytes(700_000))) for _ in range(3))
    server = bounded_server(1 << 20)
    server.receive_data(wire)
    events = list(server.events())
    assert [type(e) for e in events] == [BytesMessage] * 3


async def test_compressed_message_over_the_limit_is_1009(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioscgi")
    async with serving(echo, bind, websocket_max_message_size=1000) as srv:
        client = await open_ws(srv.address, HTTP_SEC_WEBSOCKET_EXTENSIONS="permessage-deflate")
        assert b"sec-websocket-extensions: permessage-deflate" in client.head
        client.ws = deflate_client()
        await client.send(BytesMessage(data=bytes(1000)))  # at the limit: echoed
        event = await client.next_event()
        assert isinstance(event, BytesMessage) and event.data == bytes(1000)
        await client.send(BytesMessage(data=bytes(10 << 20)))  # ~10 KiB on the wire
        event = await client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1009
    assert any("inflated (websocket_max_message_size)" in r.getMessage() for r in caplog.records)
