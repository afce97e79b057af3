"""The SCGI wire (``trioscgi._wire.scgi``) through a real in-process server.

One request per connection: the head read under header_timeout (408), protocol errors
(400/413/431), the body in pieces, read_timeout, drain, write_timeout, the cut, and the
HTTP cycle's rules as an SCGI front-end sees them on the socket. The cycle's rules alone,
against a fake wire and with no socket, are in test_asgi_http.py.

Every test runs ``trioscgi.serve`` in-process on a Unix socket and talks to it
with trio streams; every timeout runs under ``autojump_clock``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from scgi_client import (
    connect,
    encode_head,
    encode_raw,
    encode_request,
    environ,
    exchange,
    parse_response,
    read_all,
    request,
    serving,
)

BIG = 16 * 1024 * 1024  # far more than any socket buffer: a send of it must block


@pytest.fixture
def bind(tmp_path: Path) -> str:
    return f"unix:{tmp_path}/s.sock"


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Answers the body it read and the sizes of the chunks it got."""
    body = b""
    chunks = []
    while True:
        msg = await receive()
        assert msg["type"] == "http.request"
        chunks.append(len(msg["body"]))
        body += msg["body"]
        if not msg.get("more_body"):
            break
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-chunks", ",".join(map(str, chunks)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- round trips ------------------------------------------------------------------


async def test_get(bind: str, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(hello, bind) as srv:
        r = await request(srv.address, environ("GET", "/x?a=1"))
    assert r.status == 200
    assert r.reason == "OK"
    assert r.header("x-a") == "1"
    assert r.body == b"hello"
    no_errors(caplog)


async def test_post_body_round_trip(bind: str) -> None:
    body = bytes(range(256)) * 1000
    async with serving(echo, bind) as srv:
        r = await request(srv.address, environ("POST", "/up", body=body), body)
    assert r.status == 200
    assert r.body == body
    chunks = r.header("x-chunks")
    assert chunks is not None
    # A 256 kB body arrives in several chunks, the last one with more_body False.
    assert len(chunks.split(",")) > 1


async def test_empty_body_is_one_final_message(bind: str) -> None:
    async with serving(echo, bind) as srv:
        r = await request(srv.address, environ("POST", "/"), b"")
    assert r.status == 200
    assert r.header("x-chunks") == "0"


async def test_slow_client_body_arrives_in_pieces(bind: str, autojump_clock: Any) -> None:
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            seen.append(msg["body"])
            if not msg["more_body"]:
                break
        await hello(scope, receive, send)

    pieces = [b"aaa", b"bbbb", b"cc"]
    body = b"".join(pieces)
    async with serving(app, bind) as srv, await connect(srv.address) as s:
        await s.send_all(encode_head(environ("POST", "/", body=body), len(body)))
        for piece in pieces:
            await trio.sleep(1)
            await s.send_all(piece)
        r = parse_response(await read_all(s))
    assert r.status == 200
    assert seen[-1] != b"" or len(seen) > 1
    assert b"".join(seen) == body
    # Each piece was a separate arrival: the app saw them as separate chunks.
    assert [c for c in seen if c] == pieces


async def test_app_that_never_reads_does_not_make_server_buffer(
    bind: str, autojump_clock: Any
) -> None:
    """Bounded read-ahead: a large unread body pushes back on the client."""
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    body = b"x" * BIG
    async with serving(app, bind) as srv, await connect(srv.address) as s:
        sent_all = False
        with trio.move_on_after(30):
            await s.send_all(encode_request(environ("POST", "/", body=body), body))
            sent_all = True
        assert not sent_all, "the server read a 16 MiB body the app never asked for"


async def test_unread_body_is_drained_before_close(bind: str, autojump_clock: Any) -> None:
    """The app answers without reading: the client can still send it all and gets the response."""
    body = b"y" * (4 * 1024 * 1024)
    async with serving(hello, bind) as srv, await connect(srv.address) as s:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.send_all, encode_request(environ("POST", "/", body=body), body))
            data = await read_all(s)
        r = parse_response(data)
    assert r.status == 200
    assert r.body == b"hello"


async def test_drain_is_bounded_by_drain_timeout(bind: str, autojump_clock: Any) -> None:
    async with serving(hello, bind, drain_timeout=3) as srv, await connect(srv.address) as s:
        await s.send_all(encode_head(environ("POST", "/", body=b"z"), 1000) + b"z" * 10)
        start = trio.current_time()
        # The client stalls mid-body: the server answers, drains for at most
        # drain_timeout, then closes.
        r = parse_response(await read_all(s))
        waited = trio.current_time() - start
    assert r.status == 200
    assert 3 <= waited < 4


# --- the response head is held until the first body message -------------------


async def test_exception_after_start_before_body_is_500(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("boom")

    async with serving(app, bind) as srv:
        r = await request(srv.address)
    assert r.status == 500
    assert r.body
    assert r.header("content-length") == str(len(r.body))
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_exception_before_start_is_500(bind: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    async with serving(app, bind) as srv:
        r = await request(srv.address)
    assert r.status == 500
    assert r.header("content-length") == str(len(r.body)) != "0"


async def test_return_without_response_is_500(bind: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return

    async with serving(app, bind) as srv:
        r = await request(srv.address)
    assert r.status == 500
    assert r.header("content-length") == str(len(r.body)) != "0"


async def test_exception_after_body_started_truncates_and_server_goes_on(bind: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/ok":
            await hello(scope, receive, send)
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        raise ValueError("boom")

    async with serving(app, bind) as srv:
        data = await exchange(srv.address, encode_request(environ("GET", "/bad")))
        r = parse_response(data)
        assert r.status == 200
        assert r.body == b"12345"  # truncated, no 500 appended
        ok = await request(srv.address, environ("GET", "/ok"))
    assert ok.status == 200
    assert ok.body == b"hello"


async def test_app_transfer_encoding_is_dropped(bind: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"Transfer-Encoding", b"chunked"), (b"x-b", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"hi"})

    async with serving(app, bind) as srv:
        r = await request(srv.address)
    assert r.header("transfer-encoding") is None
    assert r.header("x-b") == "2"
    assert r.body == b"hi"


START = {"type": "http.response.start", "status": 200, "headers": []}


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        pytest.param([{"type": "http.response.body", "body": b"x"}], "before", id="body-first"),
        pytest.param([START, START], "twice", id="start-twice"),
        pytest.param(
            [{"type": "http.response.start", "status": 42, "headers": []}],
            "status",
            id="bad-status",
        ),
        pytest.param(
            [{"type": "http.response.start", "status": "200", "headers": []}],
            "status",
            id="str-status",
        ),
        pytest.param(
            [{"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb: c")]}],
            "CR",
            id="crlf-value",
        ),
        pytest.param(
            [{"type": "http.response.start", "status": 200, "headers": [(b"x\nb", b"1")]}],
            "name",
            id="lf-name",
        ),
        pytest.param(
            [{"type": "http.response.start", "status": 200, "headers": [(b"x", 5)]}],
            "bytes",
            id="int-value",
        ),
        pytest.param([{"type": "http.response.tralala"}], "tralala", id="unknown-type"),
        pytest.param([{"type": "http.response.start", "headers": []}], "status", id="no-status"),
    ],
)
async def test_invalid_message_raises_in_app_and_client_gets_500(
    bind: str, messages: list[dict[str, Any]], words: str
) -> None:
    caught: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            for m in messages:
                await send(m)
        except Exception as exc:
            caught.append(exc)
            raise

    async with serving(app, bind) as srv:
        r = await request(srv.address)
    assert len(caught) == 1
    assert words in str(caught[0])
    assert r.status == 500


async def test_str_body_raises_clear_error(bind: str) -> None:
    caught: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        try:
            await send({"type": "http.response.body", "body": "text"})
        except Exception as exc:
            caught.append(exc)
            raise

    async with serving(app, bind) as srv:
        r = await request(srv.address)
    assert r.status == 500
    assert "body" in str(caught[0])


async def test_body_after_complete_response_raises(bind: str) -> None:
    caught: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await hello(scope, receive, send)
        try:
            await send({"type": "http.response.body", "body": b"more"})
        except Exception as exc:
            caught.append(exc)

    async with serving(app, bind) as srv:
        r = await request(srv.address)
    assert r.body == b"hello"
    assert "after the response was complete" in str(caught[0])


# --- http.disconnect ----------------------------------------------------------------


async def test_receive_after_body_waits_for_client_close(bind: str, autojump_clock: Any) -> None:
    got: list[tuple[float, dict[str, Any]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        first = await receive()
        assert first == {"type": "http.request", "body": b"ab", "more_body": False}
        msg = await receive()
        got.append((trio.current_time(), msg))

    async with serving(app, bind) as srv:
        s = await connect(srv.address)
        await s.send_all(encode_request(environ("POST", "/", body=b"ab"), b"ab"))
        await trio.sleep(100)
        assert got == []  # still waiting: the client is still there
        closed_at = trio.current_time()
        await s.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert len(got) == 1
    assert got[0][1] == {"type": "http.disconnect"}
    assert got[0][0] == closed_at


async def test_streaming_to_departed_client_raises_oserror_logged_at_info(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioscgi")
    raised: list[BaseException] = []
    after: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["more_body"] is False
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(100):
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await trio.sleep(1)
        except BaseException as exc:
            raised.append(exc)
            after.append(await receive())
            raise

    async with serving(app, bind) as srv:
        async with await connect(srv.address) as s:
            await s.send_all(encode_request(environ()))
            assert b"tick" in await s.receive_some(65536)
        await trio.sleep(5)
    assert len(raised) == 1
    assert isinstance(raised[0], OSError)
    assert after == [{"type": "http.disconnect"}]
    no_errors(caplog)
    assert any("went away" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_client_abort_mid_upload_gives_disconnect(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    msgs: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            m = await receive()
            msgs.append(m)
            if m["type"] == "http.disconnect" or not m["more_body"]:
                break

    async with serving(app, bind) as srv:
        async with await connect(srv.address) as s:
            await s.send_all(encode_head(environ("POST", "/", body=b"x"), 100) + b"x" * 10)
            await trio.sleep(1)
        await trio.sleep(1)
    assert msgs[0]["type"] == "http.request"
    assert msgs[0]["more_body"] is True
    assert msgs[-1] == {"type": "http.disconnect"}
    no_errors(caplog)


# --- timeouts -----------------------------------------------------------------------


async def test_header_timeout_answers_408(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(hello, bind, header_timeout=7) as srv, await connect(srv.address) as s:
        await s.send_all(b"70:CONTENT_LENGTH\x00")
        start = trio.current_time()
        data = await read_all(s)
        waited = trio.current_time() - start
    assert parse_response(data).status == 408
    assert waited == pytest.approx(7)
    no_errors(caplog)


async def test_header_timeout_idle_connection(bind: str, autojump_clock: Any) -> None:
    """Connected, nothing sent: cut at header_timeout."""
    async with serving(hello, bind, header_timeout=7) as srv, await connect(srv.address) as s:
        start = trio.current_time()
        data = await read_all(s)
        waited = trio.current_time() - start
    assert data == b"" or parse_response(data).status == 408
    assert waited == pytest.approx(7)


async def test_header_timeout_bounds_the_whole_head(bind: str, autojump_clock: Any) -> None:
    head = encode_head(environ(), 0)
    async with serving(hello, bind, header_timeout=7) as srv, await connect(srv.address) as s:
        start = trio.current_time()
        with trio.move_on_after(60):
            for i in range(len(head)):
                try:
                    await s.send_all(head[i : i + 1])
                except trio.BrokenResourceError:
                    break  # the server answered and closed: what we want
                await trio.sleep(2)
        data = await read_all(s)
        waited = trio.current_time() - start
    assert parse_response(data).status == 408
    assert waited < 10


async def test_read_timeout_mid_body_gives_disconnect(bind: str, autojump_clock: Any) -> None:
    msgs: list[tuple[float, dict[str, Any]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            m = await receive()
            msgs.append((trio.current_time(), m))
            if m["type"] == "http.disconnect" or not m["more_body"]:
                break

    async with serving(app, bind, read_timeout=9) as srv, await connect(srv.address) as s:
        await s.send_all(encode_head(environ("POST", "/", body=b"x"), 100) + b"x" * 10)
        start = trio.current_time()
        await read_all(s)
    assert msgs[0][1]["body"] == b"x" * 10
    assert msgs[-1][1] == {"type": "http.disconnect"}
    assert msgs[-1][0] - start == pytest.approx(9)


async def test_write_timeout_when_client_never_reads(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    raised: list[tuple[float, BaseException]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"x" * BIG})
        except BaseException as exc:
            raised.append((trio.current_time(), exc))
            raise

    async with serving(app, bind, write_timeout=11) as srv, await connect(srv.address) as s:
        start = trio.current_time()
        await s.send_all(encode_request(environ()))
        await trio.sleep(100)
    assert len(raised) == 1
    assert isinstance(raised[0][1], OSError)
    assert raised[0][0] - start == pytest.approx(11)
    no_errors(caplog)  # a front-end that stops reading is a client fault: INFO, not ERROR


# --- protocol errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="http-not-scgi"),
        pytest.param(b"12:CONTENT_LENGTH,", 400, id="bad-netstring"),
        pytest.param(encode_raw(b"CONTENT_LENGTH\0abc\0SCGI\x001\0"), 400, id="bad-length"),
        pytest.param(
            encode_request([(b"REQUEST_URI", b"/"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]),
            400,
            id="no-method",
        ),
        pytest.param(b"99999999:" + b"A" * 100, 431, id="oversize-head"),
        pytest.param(encode_head(environ("POST", "/"), 10_000_000), 413, id="body-too-big"),
    ],
)
async def test_protocol_errors(
    bind: str,
    autojump_clock: Any,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    status: int,
) -> None:
    caplog.set_level(logging.INFO, logger="trioscgi")
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)
        await hello(scope, receive, send)

    async with serving(app, bind, max_header_size=4096, max_body_size=1_000_000) as srv:
        r = parse_response(await exchange(srv.address, data))
        assert r.status == status
        assert r.header("content-length") == str(len(r.body))
        assert called == []
        # The server goes on serving.
        ok = await request(srv.address)
    assert ok.status == 200
    no_errors(caplog)
    assert any(str(status) in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_eof_without_bytes_is_a_silent_close(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioscgi")
    async with serving(hello, bind) as srv:
        s = await connect(srv.address)
        await s.aclose()
        await trio.testing.wait_all_tasks_blocked()
        ok = await request(srv.address)
    assert ok.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_truncated_head_then_eof_closes(bind: str, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(hello, bind) as srv:
        async with await connect(srv.address) as s:
            await s.send_all(b"70:CONTENT_LENGTH\x00")
            await s.send_eof()
            data = await read_all(s)
        assert data == b"" or parse_response(data).status == 400
        ok = await request(srv.address)
    assert ok.status == 200
    no_errors(caplog)


# --- more app faults and concurrency -------------------------------------------------


async def test_exception_without_reading_body_still_drains_and_answers_500(
    bind: str, autojump_clock: Any
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    body = b"q" * (4 * 1024 * 1024)
    async with (
        serving(app, bind) as srv,
        await connect(srv.address) as s,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(s.send_all, encode_request(environ("POST", "/", body=body), body))
        data = await read_all(s)
    assert parse_response(data).status == 500


async def test_streaming_app_learns_disconnect_through_receive(
    bind: str, autojump_clock: Any
) -> None:
    """SSE style: a task waits on receive() while the app streams; a client close ends it."""
    seen: list[tuple[float, dict[str, Any]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["more_body"] is False
        await send({"type": "http.response.start", "status": 200, "headers": []})
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                msg = await receive()
                seen.append((trio.current_time(), msg))
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            for _ in range(1000):
                await trio.sleep(60)  # a quiet stream: nothing to send for a while
                await send({"type": "http.response.body", "body": b"ping\n", "more_body": True})

    async with serving(app, bind) as srv:
        s = await connect(srv.address)
        await s.send_all(encode_request(environ()))
        await trio.sleep(10)
        closed_at = trio.current_time()
        await s.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert seen == [(closed_at, {"type": "http.disconnect"})]


async def test_slow_request_does_not_block_others(bind: str, autojump_clock: Any) -> None:
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        await hello(scope, receive, send)

    async with serving(app, bind) as srv, await connect(srv.address) as slow:
        await slow.send_all(encode_request(environ("GET", "/slow")))
        for _ in range(5):
            assert (await request(srv.address, environ("GET", "/fast"))).status == 200
        release.set()
        assert parse_response(await read_all(slow)).status == 200


# --- found in review --------------------------------------------------------------


async def test_cancelled_receive_loses_no_body_bytes(bind: str) -> None:
    # Starlette's request.is_disconnected() calls receive() in a scope that is
    # already cancelled; the chunk waiting in the parser must not be lost.
    got = bytearray()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with trio.CancelScope() as cs:
            cs.cancel()
            await receive()
        while True:
            msg = await receive()
            got.extend(msg["body"])
            if not msg["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % len(got)})

    body = bytes(range(256)) * 400
    async with serving(app, bind) as srv:
        r = await request(srv.address, environ("POST", "/", body=body), body)
    assert r.body == b"%d" % len(body)
    assert bytes(got) == body


async def test_headers_as_an_iterator_and_str_transfer_encoding(bind: str) -> None:
    # ASGI headers are "an iterable"; a generator must not be walked twice,
    # and a str Transfer-Encoding is dropped like a bytes one.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = (
            (n, v) for n, v in [("X-A", "1"), ("Transfer-Encoding", "chunked"), (b"x-b", b"2")]
        )
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app, bind) as srv:
        r = await request(srv.address, environ("GET", "/"))
    assert (r.status, r.body) == (200, b"ok")
    assert r.header("x-a") == "1"
    assert r.header("x-b") == "2"
    assert r.header("transfer-encoding") is None


async def test_pathsend_of_a_missing_file_is_not_an_oserror(bind: str, tmp_path: Path) -> None:
    # An OSError from send() tells an ASGI 2.4 app that the client went away:
    # the app's own mistake must not look like that.
    seen: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "nope")})
        except BaseException as exc:
            seen.append(exc)
            raise

    async with serving(app, bind) as srv:
        r = await request(srv.address, environ("GET", "/"))
    assert r.status == 500
    assert len(seen) == 1
    assert not isinstance(seen[0], OSError)
    assert "nope" in str(seen[0])


async def test_start_after_disconnect_raises_oserror(bind: str) -> None:
    seen: list[BaseException] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the empty body
        assert (await receive())["type"] == "http.disconnect"
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except OSError as exc:
            seen.append(exc)
        done.set()

    async with serving(app, bind) as srv:
        stream = await connect(srv.address)
        await stream.send_all(encode_head(environ("GET", "/"), 0))
        await stream.aclose()
        await done.wait()
    assert len(seen) == 1


# --- warnings about what the front-end sent --------------------------------------------------


async def test_truncated_body_is_served_and_warned_about_at_most_once_per_interval(
    bind: str, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    # What nginx < 1.29.6 sends with scgi_request_buffering off: CONTENT_LENGTH counts only
    # what it had received, the client's Content-Length says more.
    pairs = environ("POST", "/up", extra={"HTTP_CONTENT_LENGTH": "10"})

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "Content-Length" in r.getMessage()
        ]

    async with serving(echo, bind) as srv:
        for _ in range(3):
            r = await request(srv.address, pairs, b"12345")
            assert (r.status, r.body) == (200, b"12345")
        [first] = warnings()
        assert first.startswith("POST /up: the front-end sent CONTENT_LENGTH 5")
        await trio.sleep(11)  # past the interval: the next one is logged, with the count
        r = await request(srv.address, pairs, b"12345")
        assert r.status == 200
    assert len(warnings()) == 2
    assert "(2 more like it since the last such line)" in warnings()[1]
    no_errors(caplog)


async def test_write_timeout_bounds_each_wait_not_the_whole_write(
    bind: str, autojump_clock: Any
) -> None:
    """A front-end that reads slowly but steadily gets the whole body (issue: cut at 8 MiB)."""
    body = b"y" * BIG

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async with serving(app, bind, write_timeout=2) as srv, await connect(srv.address) as s:
        await s.send_all(encode_request(environ()))
        received = 0
        start = trio.current_time()
        while True:
            chunk = await s.receive_some(1 << 20)
            if not chunk:
                break
            received += len(chunk)
            await trio.sleep(1)  # virtual: about 1 MB/s, far slower than the body's size
        elapsed = trio.current_time() - start
    assert elapsed > 2 * 3  # the write took many times write_timeout...
    assert received > BIG  # ...and nothing was cut (head + body)


async def test_websocket_upgrade_without_wsproto_is_served_as_http_and_logged_once(
    bind: str,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # trioscgi installed without the [websocket] extra: the handshake is a plain GET.
    monkeypatch.setattr("trioscgi._wire.oneshot._WEBSOCKET", False)
    pairs = environ(
        "GET",
        "/ws",
        extra={"HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade"},
    )

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "WebSocket" in r.getMessage()]

    async with serving(hello, bind) as srv:
        for _ in range(3):
            assert (await request(srv.address, pairs)).status == 200
        plain = environ("GET", "/", extra={"HTTP_UPGRADE": "h2c"})
        assert (await request(srv.address, plain)).status == 200
    [line] = warnings()  # once, not per request (and not for other upgrades)
    assert line.startswith("GET /ws: a WebSocket upgrade request, served as plain HTTP")
    assert "pip install 'trioscgi[websocket]'" in line


# --- what the wire does on the socket ---------------------------------------------------------


async def test_a_refused_request_ends_with_a_close_not_a_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A 413 goes out before the body is read. Closing with body bytes unread sends an
    # RST (TCP), and a front-end still writing the body sees a reset (nginx: 502)
    # rather than our answer: the wire reads what already arrived first. Over TCP: on
    # AF_UNIX the two look alike. The body is more than the wire's first read takes,
    # and all of it has arrived when the answer goes out.
    caplog.set_level(logging.INFO, logger="trioscgi")
    body = b"x" * 100_000
    async with serving(hello, "127.0.0.1:0", max_body_size=1000) as srv:
        stream = await connect(srv.address)
        async with stream:
            await stream.send_all(encode_head(environ("POST", "/"), len(body)) + body)
            await trio.testing.wait_all_tasks_blocked()  # the server answered and closed
            data = b""
            while chunk := await stream.receive_some(65536):  # a reset raises here
                data += chunk
    assert parse_response(data).status == 413
    no_errors(caplog)


async def test_bytes_after_the_body_are_no_disconnect(bind: str) -> None:
    # Front-ends send nothing after the body; if one did, the app waiting for the
    # disconnect must not take those bytes for it.
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())  # until the client goes
        await hello(scope, receive, send)

    async with serving(app, bind) as srv:
        stream = await connect(srv.address)
        async with stream:
            await stream.send_all(encode_head(environ("POST", "/"), 2) + b"ab")
            await trio.testing.wait_all_tasks_blocked()
            assert got == [{"type": "http.request", "body": b"ab", "more_body": False}]
            await stream.send_all(b"stray")  # to the socket, while the app waits
            await trio.testing.wait_all_tasks_blocked()
            assert len(got) == 1
            await stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
    assert got[1:] == [{"type": "http.disconnect"}]
