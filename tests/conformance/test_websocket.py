"""WebSocket conformance: one set of scenarios over SCGI and uwsgi, the app on trio and asyncio.

Each scenario runs a session through nginx's SCGI or uwsgi tunnel (ws_driver.py)
against one plain ASGI app, :class:`Recorder`, which keeps the exact sequence of
messages its ``receive()`` returned (and what its ``send()`` raised). A scenario asserts
that sequence and what the client saw against one expected value, written from the
asgiref spec (www.rst, WebSocket; spec_version 2.4, and 2.5's ``reason`` on the
disconnect): so the sequence is the same on both loops, and the spec's. The test ids
name the path: ``test_echo_text[scgi-asyncio]``.

What the spec says, and the scenarios check:
- ``websocket.connect`` first; a ``websocket.close`` before ``websocket.accept`` denies
  the handshake with 403; ``websocket.accept`` may name a subprotocol and add headers.
- ``websocket.receive`` carries one whole message, ``text`` or ``bytes``, however its
  frames were cut and delivered (fragments, pieces, pauses), also to a ``receive()``
  that was waiting from before the accept; pings are the server's job, also while the
  app is busy.
- ``websocket.disconnect`` carries the close code (and reason) of the client's close
  frame, of the close the app asked for once the client answers, or 1006 when the
  connection is lost without a close frame, or the server's 1001 when it shuts down
  (also to an app that asks from its cleanup after ``graceful_timeout`` cut it);
  ``receive()`` after it returns it again.
- ``send()`` after the connection is gone raises an ``OSError`` subclass (2.4).
- An exception before accept is a 500 answer; after accept, close code 1011.

Every scenario runs its own in-process server on TCP loopback, on the real clock (the
asyncio loop's timers do not follow trio's autojump clock); the file runs in a few
seconds.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs

import anyio
import pytest
import trio
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from trioscgi._asgi.websocket import accept_token

from .ws_driver import KEY, TIMEOUT, Session, open_session, ws_server

PATHS = [(wire, loop) for wire in ("scgi", "uwsgi") for loop in ("trio", "asyncio")]

Record = dict[str, Any]


@pytest.fixture(params=[f"{wire}-{loop}" for wire, loop in PATHS])
def ws_path(request: pytest.FixtureRequest) -> str:
    """The path: the wire nginx tunnels (SCGI or uwsgi) and the loop the app runs on."""
    path: str = request.param
    return path


# --- the app ----------------------------------------------------------------------------


def summary(message: Record) -> Record:
    """``message`` as recorded: a long payload by its length and digest."""
    for key in ("text", "bytes"):
        value = message.get(key)
        if value is not None and len(value) > 64:
            data = value.encode() if isinstance(value, str) else value
            return {**message, key: f"{len(value)} long, sha256 {hashlib.sha256(data).hexdigest()}"}
    return message


def raised(exc: BaseException) -> Record:
    return {"raised": type(exc).__name__, "oserror": isinstance(exc, OSError)}


def received(text: str | None = None, data: bytes | None = None) -> Record:
    if text is not None:
        return summary({"type": "websocket.receive", "text": text})
    return summary({"type": "websocket.receive", "bytes": data})


CONNECT: Record = {"type": "websocket.connect"}


def disconnect(code: int, reason: str = "") -> Record:
    return {"type": "websocket.disconnect", "code": code, "reason": reason}


class Recorder:
    """A plain ASGI WebSocket app (anyio only for sleeping, so it runs on both loops).

    It records every message its ``receive()`` returns. The query string picks what it
    does before and after accepting; after accepting it echoes messages, except the
    commands ``raise``, ``busy SECONDS`` (sleep without reading, then send ``done``) and
    ``close CODE REASON`` (close from the server's side).
    """

    def __init__(self) -> None:
        self.sessions: list[list[Record]] = []
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        got: list[Record] = []
        self.sessions.append(got)
        self.scopes.append(scope)
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}

        async def recv() -> Record:
            message: Record = await receive()
            got.append(summary(message))
            return message

        await recv()
        if "raise_before" in query:
            raise RuntimeError("the app fails before accepting")
        if "deny" in query:
            await send({"type": "websocket.close"})
            return
        if "teapot" in query:
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 418,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"no socket for you\n"})
            return
        accept: Record = {"type": "websocket.accept"}
        if "subprotocol" in query:
            accept["subprotocol"] = query["subprotocol"]
        if "header" in query:
            accept["headers"] = [(b"x-conformance", b"yes")]
        if "early_reader" in query:
            # A task of the app waits in receive() before the accept goes out (a reader
            # started first, as task groups do): it gets the messages that follow it.
            async with anyio.create_task_group() as tg:

                async def reader() -> None:
                    while (await recv())["type"] != "websocket.disconnect":
                        await send({"type": "websocket.send", "text": "read early"})

                tg.start_soon(reader)
                await anyio.sleep(0.05)  # the reader is in receive() by now
                if query["early_reader"] == "deny":
                    await send({"type": "websocket.close"})
                else:
                    await send(accept)
            return
        await send(accept)
        if "ticker" in query:
            # Sends and never reads until a send fails: the client is gone.
            for i in range(2000):
                try:
                    await send({"type": "websocket.send", "text": f"tick {i}"})
                except Exception as exc:
                    got.append(raised(exc))
                    break
                await anyio.sleep(0.005)
            await recv()
            return

        async def ticks(n: int) -> None:
            for i in range(n):
                await anyio.sleep(0.01)
                await send({"type": "websocket.send", "text": f"tick {i}"})

        async with anyio.create_task_group() as tg:
            while True:
                message = await recv()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text == "raise":
                    raise RuntimeError("the app fails on an open WebSocket")
                if text is not None and text.startswith("busy "):
                    try:
                        await anyio.sleep(float(text.split()[1]))
                    except anyio.get_cancelled_exc_class():
                        # Cut by the server (graceful_timeout): what is there still to read?
                        with anyio.CancelScope(shield=True):
                            await recv()
                        raise
                    await send({"type": "websocket.send", "text": "done"})
                elif text is not None and text.startswith("ticks "):
                    # Sends from a task of its own while this one waits in receive().
                    tg.start_soon(ticks, int(text.split()[1]))
                elif text is not None and text.startswith("close "):
                    _, code, reason = text.split(" ", 2)
                    await send({"type": "websocket.close", "code": int(code), "reason": reason})
                else:
                    await send({**message, "type": "websocket.send"})
        for _ in range(int(query.get("after", "0"))):
            await recv()
        if "send_after" in query:
            try:
                await send({"type": "websocket.send", "text": "too late"})
            except Exception as exc:
                got.append(raised(exc))
            else:
                got.append({"raised": None})


async def run_session(
    ws_path: str, target: str, scenario: Any, *, config: Any = None, **open_kwargs: Any
) -> Recorder:
    """Serve a fresh :class:`Recorder`, run ``scenario(session)``, wait for the app to end.

    ``scenario`` may take a second argument: the server's handle (to stop it).
    """
    app = Recorder()
    with trio.fail_after(TIMEOUT):
        wire, _, app_loop = ws_path.partition("-")
        async with ws_server(app, app_loop, **(config or {})) as srv:
            session = await open_session(srv.address, target, wire=wire, **open_kwargs)
            try:
                if scenario.__code__.co_argcount == 2:
                    await scenario(session, srv)
                else:
                    await scenario(session)
            finally:
                await session.stream.aclose()
    assert len(app.sessions) == 1
    return app


# --- the handshake ----------------------------------------------------------------------


async def test_connect_accept(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        assert s.status == 101
        assert s.header("upgrade") == "websocket"
        assert s.header("sec-websocket-accept") == accept_token(KEY.encode()).decode()
        assert s.header("sec-websocket-protocol") is None
        reply = await s.close()
        assert reply.code == 1000

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, disconnect(1000)]
    assert app.scopes[0]["subprotocols"] == []


async def test_accept_with_subprotocol_and_headers(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        assert s.status == 101
        assert s.header("sec-websocket-protocol") == "chat"
        assert s.header("x-conformance") == "yes"
        await s.close()

    app = await run_session(
        ws_path, "/?subprotocol=chat&header=1", scenario, subprotocols=["other", "chat"]
    )
    assert app.sessions[0] == [CONNECT, disconnect(1000)]
    assert app.scopes[0]["subprotocols"] == ["other", "chat"]


async def test_close_before_accept_is_403(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        assert s.status == 403
        await s.read_to_eof()

    app = await run_session(ws_path, "/?deny=1", scenario)
    assert app.sessions[0] == [CONNECT]


async def test_denial_response_extension(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        assert s.status == 418
        assert s.header("content-type") == "text/plain"
        assert (await s.read_to_eof()).endswith(b"no socket for you\n")

    app = await run_session(ws_path, "/?teapot=1", scenario)
    assert app.sessions[0] == [CONNECT]


async def test_exception_before_accept_is_500(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        assert s.status == 500
        await s.read_to_eof()

    app = await run_session(ws_path, "/?raise_before=1", scenario)
    assert app.sessions[0] == [CONNECT]


# --- messages ---------------------------------------------------------------------------


async def test_echo_text(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(TextMessage(data="héllo"))
        assert await s.receive_message() == "héllo"
        await s.close()

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, received("héllo"), disconnect(1000)]


async def test_echo_binary(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(BytesMessage(data=b"\x00\xff\x80"), BytesMessage(data=b""))
        assert await s.receive_message() == b"\x00\xff\x80"
        assert await s.receive_message() == b""
        await s.close()

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [
        CONNECT,
        received(data=b"\x00\xff\x80"),
        received(data=b""),
        disconnect(1000),
    ]


async def test_one_mib_message(ws_path: str) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB

    async def scenario(s: Session) -> None:
        await s.send(BytesMessage(data=big))
        assert await s.receive_message() == big
        await s.close()

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, received(data=big), disconnect(1000)]


async def test_fragmented_messages(ws_path: str) -> None:
    # RFC 6455 5.4: a message in several frames, with control frames between them.
    async def scenario(s: Session) -> None:
        await s.send(
            TextMessage(data="frag", message_finished=False),
            TextMessage(data="mented ", message_finished=False),
            TextMessage(data="message"),
            BytesMessage(data=b"ab", message_finished=False),
            Ping(payload=b"between"),
            BytesMessage(data=b"cd"),
        )
        assert await s.receive_message() == "fragmented message"
        assert await s.receive_message() == b"abcd"
        assert s.control == [Pong(payload=b"between")]
        await s.close()

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [
        CONNECT,
        received("fragmented message"),
        received(data=b"abcd"),
        disconnect(1000),
    ]


async def test_frames_in_pieces_and_after_pauses(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        data = s.frames(TextMessage(data="in pieces, é"), BytesMessage(data=bytes(300)))
        await s.send_pieces(data, [1, 2, 3, 7], pause=0.005, every=8)
        assert await s.receive_message() == "in pieces, é"
        assert await s.receive_message() == bytes(300)
        # Half a frame, then a pause longer than the server's look-away (_AWAY), then the
        # rest: nothing is lost or doubled whoever reads meanwhile.
        data = s.frames(TextMessage(data="after a pause"))
        await s.send_pieces(data, [len(data) // 2], pause=0.4)
        assert await s.receive_message() == "after a pause"
        await s.close()

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [
        CONNECT,
        received("in pieces, é"),
        received(data=bytes(300)),
        received("after a pause"),
        disconnect(1000),
    ]


async def test_sends_from_another_task_while_receive_waits(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(TextMessage(data="ticks 6"))
        got = [await s.receive_message(), await s.receive_message()]
        await s.send(TextMessage(data="a"))
        while "a" not in got or "tick 5" not in got:
            got.append(await s.receive_message())
        await s.send(TextMessage(data="b"))
        assert await s.receive_message() == "b"
        await s.close()
        assert sorted(got) == ["a", *(f"tick {i}" for i in range(6))]

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [
        CONNECT,
        received("ticks 6"),
        received("a"),
        received("b"),
        disconnect(1000),
    ]


async def test_ping_answered_while_the_app_is_busy(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(TextMessage(data="busy 1.0"))
        # The ping comes later than the message, in a read of its own: the app sleeps a
        # second without calling receive(), and the server answers meanwhile.
        await trio.sleep(0.2)  # the network delivering late, not a wait for state
        await s.send(Ping(payload=b"are you there"))
        assert await s.next_event() == Pong(payload=b"are you there")
        assert await s.receive_message() == "done"
        await s.close()

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, received("busy 1.0"), disconnect(1000)]


# --- the end ----------------------------------------------------------------------------


async def test_client_close_with_code_and_reason(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        reply = await s.close(4002, "bye")
        assert reply.code == 4002  # RFC 6455 5.5.1: the answer echoes the code

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, disconnect(4002, "bye")]


async def test_server_close_with_code(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(TextMessage(data="close 4001 done here"))
        [close] = await s.events_until_close()
        assert close == CloseConnection(code=4001, reason="done here")
        assert await s.read_to_eof() == b""

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [
        CONNECT,
        received("close 4001 done here"),
        disconnect(4001, "done here"),
    ]


async def test_exception_after_accept_is_1011(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(TextMessage(data="raise"))
        [close] = await s.events_until_close()
        assert isinstance(close, CloseConnection) and close.code == 1011
        assert await s.read_to_eof() == b""

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, received("raise")]


async def test_receive_after_disconnect(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.close(1000)

    app = await run_session(ws_path, "/?after=2", scenario)
    assert app.sessions[0] == [CONNECT, disconnect(1000), disconnect(1000), disconnect(1000)]


async def test_client_vanishing_without_a_close_frame_is_1006(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(TextMessage(data="x"))
        assert await s.receive_message() == "x"
        await s.vanish(reset=False)

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, received("x"), disconnect(1006)]


async def test_send_after_disconnect_raises_oserror(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        await s.send(TextMessage(data="x"))
        assert await s.receive_message() == "x"
        await s.vanish(reset=True)

    app = await run_session(ws_path, "/?send_after=1", scenario)
    assert app.sessions[0] == [
        CONNECT,
        received("x"),
        disconnect(1006),
        {"raised": "ClientDisconnected", "oserror": True},
    ]


async def test_send_to_a_vanished_client_raises_oserror(ws_path: str) -> None:
    # The app only sends, never reads: it learns that the client is gone from send().
    async def scenario(s: Session) -> None:
        assert await s.receive_message() == "tick 0"
        await s.vanish(reset=True)

    app = await run_session(ws_path, "/?ticker=1", scenario)
    assert app.sessions[0] == [
        CONNECT,
        {"raised": "ClientDisconnected", "oserror": True},
        disconnect(1006),
    ]


async def test_receive_waiting_from_before_accept(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        assert s.status == 101
        await s.send(TextMessage(data="after accept"))
        assert await s.receive_message() == "read early"
        await s.close()

    app = await run_session(ws_path, "/?early_reader=1", scenario)
    assert app.sessions[0] == [CONNECT, received("after accept"), disconnect(1000)]


async def test_receive_waiting_from_before_a_denial(ws_path: str) -> None:
    async def scenario(s: Session) -> None:
        assert s.status == 403
        await s.read_to_eof()  # the app's waiting reader returned, the app ended

    app = await run_session(ws_path, "/?early_reader=deny", scenario)
    assert app.sessions[0] == [CONNECT, disconnect(1006)]


async def test_server_shutdown_closes_with_1001(ws_path: str) -> None:
    async def scenario(s: Session, srv: Any) -> None:
        await s.send(TextMessage(data="x"))
        assert await s.receive_message() == "x"
        srv.stop()
        [close] = await s.events_until_close()
        assert isinstance(close, CloseConnection) and close.code == 1001
        assert await s.read_to_eof() == b""

    app = await run_session(ws_path, "/", scenario)
    assert app.sessions[0] == [CONNECT, received("x"), disconnect(1001, "server shutting down")]


async def test_app_cut_at_graceful_timeout_reads_the_disconnect(ws_path: str) -> None:
    # The app ignores the 1001 (busy, not reading) until graceful_timeout cuts it; a
    # shielded receive() in its cleanup then gets the session's end, as a WebSocket
    # message.
    async def scenario(s: Session, srv: Any) -> None:
        await s.send(TextMessage(data="busy 30"))
        srv.stop()
        [close] = await s.events_until_close()
        assert isinstance(close, CloseConnection) and close.code == 1001
        assert await s.read_to_eof() == b""

    app = await run_session(ws_path, "/", scenario, config={"graceful_timeout": 1.0})
    assert app.sessions[0] == [
        CONNECT,
        received("busy 30"),
        disconnect(1001, "server shutting down"),
    ]
