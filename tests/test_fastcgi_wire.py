"""The FastCGI wire layer through a real in-process server: keep-conn, multiplexing, aborts.

Every test runs ``trioscgi.serve`` in-process and talks to it with the test-side
record encoder in ``fcgi_client``; timeouts run under ``autojump_clock``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fcgi_client as fc
import pytest
import trio
import trio.testing
from scgi_client import connect, encode_request, environ, parse_response, read_all, serving

import trioscgi
from trioscgi._server import Server
from trioscgi._wire.fastcgi import INLINE_LOOK


@pytest.fixture
def bind(tmp_path: Path) -> str:
    return f"unix:{tmp_path}/s.sock"


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


async def hello(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = f"{scope['method']} {scope['path']} {scope['root_path']!r}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def gated(gate: trio.Event) -> Any:
    """``hello``, once ``gate`` is set: requests that hold their slot until the test says."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await hello(scope, receive, send)

    return app


async def echo(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        msg = await receive()
        assert msg["type"] == "http.request"
        body += msg["body"]
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_get_without_keep_conn_answers_and_closes(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(hello, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(fc.request(1, "GET", "/a/b?x=1"))
        reader = fc.Reader(s)
        response = await reader.until_ended(1)
        await reader.until_eof()  # no keep-conn: the server closes
    assert response.status == 200
    assert response.body == b"GET /a/b ''"  # nginx's SCRIPT_NAME (the whole path) is no root
    assert response.protocol_status == fc.REQUEST_COMPLETE
    assert response.app_status == 0
    no_errors(caplog)


async def test_keep_conn_serves_requests_one_after_another(bind: str) -> None:
    async with serving(hello, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        reader = fc.Reader(s)
        for i in range(3):
            await s.send_all(fc.request(1, "GET", f"/n{i}", keep=True))
            response = await reader.until_ended(1)
            assert response.body == f"GET /n{i} ''".encode()
            del reader.responses[1]
        assert not reader.eof


async def test_post_body_streams_to_the_app(bind: str) -> None:
    body = bytes(range(256)) * 1000  # several STDIN records
    async with serving(echo, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(fc.request(1, "POST", "/up", body))
        response = await fc.Reader(s).until_ended(1)
    assert response.body == body


async def test_stdin_without_content_length_is_the_body(bind: str) -> None:
    """nginx `fastcgi_request_buffering off` with a chunked upload: no CONTENT_LENGTH."""
    chunks: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            chunks.append(msg["body"])
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % sum(map(len, chunks))})

    async with serving(app, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(
            fc.begin(1)
            + fc.params(1, fc.nginx_params("POST", "/", HTTP_TRANSFER_ENCODING="chunked"))
        )
        for part in (b"abc", b"defg", b"h" * 70000):
            await s.send_all(
                fc.record(fc.STDIN, 1, part[:65535])
                + (fc.record(fc.STDIN, 1, part[65535:]) if len(part) > 65535 else b"")
            )
            await trio.sleep(0.01)
        await s.send_all(fc.record(fc.STDIN, 1))
        response = await fc.Reader(s).until_ended(1)
    assert response.body == b"70007"
    assert len(chunks) >= 3  # streamed as it came, not buffered whole


async def test_multiplexed_requests_run_side_by_side(bind: str) -> None:
    gate = trio.Event()
    order: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/slow":
            await gate.wait()
        order.append(path)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await send(
                {"type": "http.response.body", "body": path.encode() * 20000, "more_body": True}
            )
        if path == "/fast":
            gate.set()
        await send({"type": "http.response.body", "body": b"end"})

    async with serving(app, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(
            fc.begin(1, keep=True)
            + fc.begin(2, keep=True)
            + fc.params(1, fc.nginx_params("GET", "/slow"))
            + fc.params(2, fc.nginx_params("GET", "/fast"))
            + fc.stdin(1, b"")
            + fc.stdin(2, b"")
        )
        reader = fc.Reader(s)
        first = await reader.until_ended(2)
        second = await reader.until_ended(1)
    assert order == ["/fast", "/slow"]
    assert first.body == b"/fast" * 60000 + b"end"
    assert second.body == b"/slow" * 60000 + b"end"


async def test_get_values_reports_the_configured_values(bind: str) -> None:
    async with (
        serving(hello, bind, protocol="fastcgi", max_connections=77, fastcgi_max_requests=5) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(
            fc.record(
                fc.GET_VALUES,
                0,
                fc.pairs([(b"FCGI_MAX_CONNS", b""), (b"FCGI_MPXS_CONNS", b""), (b"NOPE", b"")]),
            )
        )
        reader = fc.Reader(s)
        record = await reader.next_record()
    assert record is not None
    kind, _, content = record
    assert kind == fc.GET_VALUES_RESULT
    assert fc.parse_name_values(content) == {b"FCGI_MAX_CONNS": b"77", b"FCGI_MPXS_CONNS": b"1"}


async def test_unknown_management_record_gets_unknown_type(bind: str) -> None:
    async with serving(hello, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(fc.record(42, 0, b"x" * 3) + fc.request(1, keep=True))
        reader = fc.Reader(s)
        response = await reader.until_ended(1)
    assert reader.management[0][0] == fc.UNKNOWN_TYPE
    assert reader.management[0][1][0] == 42
    assert response.status == 200


async def test_abort_request_reaches_the_app_and_the_connection_goes_on(bind: str) -> None:
    seen: list[str] = []
    started = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/wait":
            await receive()  # the (empty) body
            started.set()
            msg = await receive()
            seen.append(msg["type"])
            return
        await hello(scope, receive, send)

    async with serving(app, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(fc.request(1, "GET", "/wait", keep=True))
        await started.wait()
        await s.send_all(fc.record(fc.ABORT_REQUEST, 1))
        reader = fc.Reader(s)
        aborted = await reader.until_ended(1)
        await s.send_all(fc.request(2, "GET", "/next", keep=True))
        following = await reader.until_ended(2)
    assert seen == ["http.disconnect"]
    assert aborted.stdout == b""
    assert following.body == b"GET /next ''"


async def busy(scope: Any, receive: Any, send: Any) -> None:
    # Busy for 60 s without touching receive() (a slow query, say), then answers.
    if scope["path"] == "/busy":
        try:
            await trio.sleep(60)
        finally:
            busy_ended.append(trio.current_time())
    await hello(scope, receive, send)


busy_ended: list[float] = []


async def test_a_busy_request_does_not_hold_up_a_multiplexed_neighbour(
    bind: str, autojump_clock: Any
) -> None:
    # The first request comes alone and runs in the connection's task; its app neither
    # answers nor reads for 60 s. The second, sent later on the same connection (HAProxy
    # multiplexing), is read by the reader the sweep puts beside it and answered at once.
    async with (
        serving(busy, bind, protocol="fastcgi", fastcgi_max_requests=4) as srv,
        await connect(srv.address) as s,
    ):
        reader = fc.Reader(s)
        await s.send_all(fc.request(1, "GET", "/busy", keep=True))
        await trio.sleep(0.1)
        start = trio.current_time()
        await s.send_all(fc.request(2, "GET", "/quick", keep=True))
        assert (await reader.until_ended(2)).body == b"GET /quick ''"
        assert trio.current_time() - start <= 2 * INLINE_LOOK
        assert (await reader.until_ended(1)).status == 200
        # Then served in the connection's task again.
        await s.send_all(fc.request(3, "GET", "/again", keep=True))
        assert (await reader.until_ended(3)).body == b"GET /again ''"


async def test_a_busy_request_is_aborted_promptly(bind: str, autojump_clock: Any) -> None:
    # ABORT_REQUEST for a request whose app is busy and not reading: END_REQUEST goes
    # out within a look or two of the sweep, not when the app is done; the connection
    # then serves the next request while the app still runs.
    busy_ended.clear()
    async with (
        serving(busy, bind, protocol="fastcgi") as srv,
        await connect(srv.address) as s,
    ):
        reader = fc.Reader(s)
        await s.send_all(fc.request(1, "GET", "/busy", keep=True))
        await trio.sleep(0.1)
        start = trio.current_time()
        await s.send_all(fc.record(fc.ABORT_REQUEST, 1))
        aborted = await reader.until_ended(1)
        assert aborted.stdout == b""
        assert trio.current_time() - start <= 2 * INLINE_LOOK
        assert not busy_ended


@pytest.mark.parametrize(
    ("config", "data", "status"),
    [
        pytest.param(
            {"max_header_size": 1024},
            fc.begin(1) + fc.params(1, fc.nginx_params(HTTP_X_BIG="x" * 5000)) + fc.stdin(1, b""),
            431,
            id="params-too-big",
        ),
        pytest.param(
            {"max_body_size": 10},
            fc.request(1, "POST", "/", b"y" * 100),
            413,
            id="body-too-big",
        ),
    ],
)
async def test_limits_answer_4xx(
    bind: str, config: dict[str, Any], data: bytes, status: int
) -> None:
    async with (
        serving(echo, bind, protocol="fastcgi", **config) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(data)
        response = await fc.Reader(s).until_ended(1)
    assert response.status == status


async def test_bad_version_closes_the_connection(bind: str) -> None:
    async with serving(hello, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(b"\x02" + fc.request(1)[1:])
        assert await read_all(s) == b""


async def test_idle_keep_conn_connection_closes_after_idle_timeout(
    bind: str, autojump_clock: Any
) -> None:
    async with (
        serving(hello, bind, protocol="fastcgi", idle_timeout=7) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(fc.request(1, keep=True))
        reader = fc.Reader(s)
        await reader.until_ended(1)
        start = trio.current_time()
        await reader.until_eof()
        assert trio.current_time() - start == pytest.approx(7)


async def test_a_later_head_on_its_way_is_not_taken_for_an_idle_connection(
    bind: str, autojump_clock: Any
) -> None:
    # After a response, the front-end begins its next request and sends its PARAMS
    # slowly (a loaded front-end, or HAProxy multiplexing): the connection is not idle
    # but receiving a head. idle_timeout (1 s) must not cut it; header_timeout does.
    head = fc.request(2, keep=True)
    async with (
        serving(hello, bind, protocol="fastcgi", idle_timeout=1, header_timeout=5) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(fc.request(1, keep=True))
        reader = fc.Reader(s)
        await reader.until_ended(1)
        await trio.sleep(0.5)
        await s.send_all(head[:16])  # BEGIN_REQUEST at 0.5 s
        await trio.sleep(2)  # idle_timeout after the response has long passed
        await s.send_all(head[16:])
        response = await reader.until_ended(2)
        assert response.status == 200


async def test_a_later_head_not_in_by_header_timeout_closes_the_connection(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A head begun on a kept connection and never finished is cut at header_timeout
    # from its start, and said so, as the first one is (not silently at idle_timeout).
    caplog.set_level(logging.INFO, logger="trioscgi")
    head = fc.request(2, keep=True)
    async with (
        serving(hello, bind, protocol="fastcgi", idle_timeout=100, header_timeout=5) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(fc.request(1, keep=True))
        reader = fc.Reader(s)
        await reader.until_ended(1)
        await trio.sleep(1)
        start = trio.current_time()
        await s.send_all(head[:40])  # BEGIN_REQUEST and a part of PARAMS
        await reader.until_eof()
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)
    assert "not received within 5 s (header_timeout)" in caplog.text


@pytest.mark.parametrize("trickle", [False, True])
async def test_a_head_not_in_by_header_timeout_closes_the_connection(
    bind: str, autojump_clock: Any, caplog: pytest.LogCaptureFixture, trickle: bool
) -> None:
    # header_timeout bounds the whole head, not each read: a BEGIN_REQUEST and then a
    # byte of PARAMS every 2 s (slowloris) is cut at 10 s as surely as silence is.
    caplog.set_level(logging.INFO, logger="trioscgi")
    head = fc.request(1, "GET", "/slow")
    async with (
        serving(hello, bind, protocol="fastcgi", header_timeout=10) as srv,
        await connect(srv.address) as s,
    ):
        start = trio.current_time()
        await s.send_all(head[:16])  # BEGIN_REQUEST
        closed_at = None
        for byte in head[16:40] if trickle else b"":
            await trio.sleep(2)
            try:
                await s.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                closed_at = trio.current_time()
                break
        if closed_at is None:
            assert await read_all(s) == b""
            closed_at = trio.current_time()
        assert closed_at - start == pytest.approx(10, abs=2.1)
    assert any("(header_timeout)" in r.getMessage() for r in caplog.records)
    no_errors(caplog)


async def test_header_timeout_does_not_cut_what_follows_the_head(
    bind: str, autojump_clock: Any
) -> None:
    # The deadline is the first head's only: a keep-conn connection then waits for its
    # next request (up to idle_timeout), and an app may take longer than header_timeout.
    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await trio.sleep(30)
        await hello(scope, receive, send)

    async with (
        serving(slow, bind, protocol="fastcgi", header_timeout=10, idle_timeout=100) as srv,
        await connect(srv.address) as s,
    ):
        reader = fc.Reader(s)
        await s.send_all(fc.request(1, "GET", "/a", keep=True))
        assert (await reader.until_ended(1)).status == 200
        del reader.responses[1]
        await trio.sleep(50)
        await s.send_all(fc.request(1, "GET", "/b", keep=True))
        assert (await reader.until_ended(1)).body == b"GET /b ''"


@contextlib.asynccontextmanager
async def bare_server(app: Any, bind: str, **config: Any) -> AsyncIterator[tuple[Server, str]]:
    """A Server run directly: for shutdown(retire=True), which serve() does not offer."""
    server = Server(app, trioscgi.Config(bind=[bind], lifespan="off", **config))
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.run)
        yield server, addresses[0]


async def test_retiring_closes_kept_connections_only_after_an_end_request(
    bind: str, autojump_clock: Any
) -> None:
    """A reload (retire): a kept connection idle at shutdown may already carry nginx's
    next request: it stays open, serves that request and closes right after its
    END_REQUEST (an empty GET_VALUES_RESULT behind it tells nginx not to cache it); one
    never used again closes at graceful_timeout; a busy one finishes its request, then
    closes the same way."""
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/busy":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await release.wait()
            await send({"type": "http.response.body", "body": b"done"})
            return
        await hello(scope, receive, send)

    async with bare_server(app, bind, protocol="fastcgi", graceful_timeout=100) as (srv, addr):
        idle = await connect(addr)
        unused = await connect(addr)
        busy = await connect(addr)
        async with idle, unused, busy:
            idle_reader, unused_reader = fc.Reader(idle), fc.Reader(unused)
            for s, reader in ((idle, idle_reader), (unused, unused_reader)):
                await s.send_all(fc.request(1, keep=True))
                await reader.until_ended(1)
            await busy.send_all(fc.request(1, "GET", "/busy", keep=True))
            await trio.sleep(1)
            start = trio.current_time()
            srv.shutdown(retire=True)
            await trio.sleep(5)
            # The request nginx sent on its cached connection meanwhile is served.
            del idle_reader.responses[1]
            await idle.send_all(fc.request(1, keep=True))
            late = await idle_reader.until_ended(1)
            assert late.protocol_status == 0
            assert b"200" in late.stdout
            await idle_reader.until_eof()
            assert idle_reader.management == [(fc.GET_VALUES_RESULT, b"")]
            assert trio.current_time() - start < 10
            release.set()
            busy_reader = fc.Reader(busy)
            response = await busy_reader.until_ended(1)
            await busy_reader.until_eof()
            assert response.body == b"done"
            assert busy_reader.management == [(fc.GET_VALUES_RESULT, b"")]
            # Never used again: closed at graceful_timeout, not before.
            await unused_reader.until_eof()
            assert 99 < trio.current_time() - start < 101
            assert unused_reader.management == []


async def test_full_stop_closes_idle_kept_connections_at_once_but_answers_what_came(
    bind: str, autojump_clock: Any
) -> None:
    """A full stop (nothing serves after us): idle kept connections close at once; a
    request that reached one just before the stop is answered first (it used to run in
    the app with its answer refused, or be dropped unread); a busy one finishes."""
    ran = []
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])
        if scope["path"] == "/busy":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await release.wait()
            await send({"type": "http.response.body", "body": b"done"})
            return
        await hello(scope, receive, send)

    async with bare_server(app, bind, protocol="fastcgi", graceful_timeout=100) as (srv, addr):
        idle, late, busy = await connect(addr), await connect(addr), await connect(addr)
        async with idle, late, busy:
            readers = [fc.Reader(s) for s in (idle, late)]
            for s, reader in zip((idle, late), readers, strict=True):
                await s.send_all(fc.request(1, keep=True))
                await reader.until_ended(1)
                del reader.responses[1]
            await busy.send_all(fc.request(1, "GET", "/busy", keep=True))
            await trio.sleep(1)
            start = trio.current_time()
            await late.send_all(fc.request(1, "GET", "/late", keep=True))
            srv.shutdown()  # in the same scheduler pass as the request's arrival
            await readers[0].until_eof()
            answer = await readers[1].until_ended(1)
            await readers[1].until_eof()
            assert trio.current_time() - start < 1
            assert b"200" in answer.stdout
            assert ran.count("/late") == 1
            release.set()
            busy_reader = fc.Reader(busy)
            assert (await busy_reader.until_ended(1)).body == b"done"
            await busy_reader.until_eof()


async def test_graceful_shutdown_of_a_multiplexed_connection_marks_only_its_last_end(
    bind: str, autojump_clock: Any
) -> None:
    """HAProxy ``mpxs-conns``: while another request runs on the connection, an
    END_REQUEST goes out alone; the last one is followed by GET_VALUES_RESULT, then EOF."""
    gates = {"/a": trio.Event(), "/b": trio.Event()}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gates[scope["path"]].wait()
        await hello(scope, receive, send)

    async with (
        bare_server(app, bind, protocol="fastcgi", fastcgi_max_requests=2) as (srv, addr),
        await connect(addr) as s,
    ):
        reader = fc.Reader(s)
        await s.send_all(
            fc.request(1, "GET", "/a", keep=True) + fc.request(2, "GET", "/b", keep=True)
        )
        await trio.sleep(1)
        srv.shutdown(retire=True)
        gates["/a"].set()
        await reader.until_ended(1)
        await trio.sleep(1)
        assert reader.management == []
        gates["/b"].set()
        await reader.until_ended(2)
        await reader.until_eof()
        assert reader.management == [(fc.GET_VALUES_RESULT, b"")]


async def test_a_stalled_request_cannot_make_the_server_buffer_without_bound(
    bind: str, autojump_clock: Any
) -> None:
    """The app never reads its body; the front-end keeps sending: the server stops reading."""
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = 0
    async with (
        serving(app, bind, protocol="fastcgi", read_timeout=1000) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(
            fc.begin(1) + fc.params(1, fc.nginx_params("POST", "/", b"x" * (64 << 20)))
        )
        piece = fc.record(fc.STDIN, 1, b"x" * 65535)
        with trio.move_on_after(30):
            while sent < 64 << 20:
                await s.send_all(piece)
                sent += 65535
        # What the server took: its buffer limit plus the socket buffers, not 64 MiB.
        assert sent < 8 << 20
        release.set()
        response = await fc.Reader(s).until_ended(1)
    assert response.body == b"ok"


async def test_auto_protocol_answers_scgi_and_fastcgi_on_one_socket(bind: str) -> None:
    async with serving(hello, bind) as srv:
        async with await connect(srv.address) as s:
            await s.send_all(fc.request(1, "GET", "/f"))
            response = await fc.Reader(s).until_ended(1)
        assert response.body == b"GET /f ''"
        async with await connect(srv.address) as s:
            await s.send_all(encode_request(environ("GET", "/s")))
            scgi = parse_response(await read_all(s))
        assert scgi.body == b"GET /s ''"


def refusal_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]


async def test_unknown_role_is_refused(bind: str, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(hello, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(
            fc.begin(1, role=fc.AUTHORIZER, keep=True) + fc.params(1, []) + fc.request(2, keep=True)
        )
        reader = fc.Reader(s)
        refused = await reader.until_ended(1)
        served = await reader.until_ended(2)
    assert refused.protocol_status == fc.UNKNOWN_ROLE
    assert served.status == 200
    assert refusal_warnings(caplog) == [
        "FastCGI front-end sent a role other than RESPONDER (AUTHORIZER and FILTER are not"
        " served); refused 1 request(s)"
    ]


async def test_too_many_requests_on_one_connection_are_overloaded(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate = trio.Event()
    app = gated(gate)

    async with (
        serving(app, bind, protocol="fastcgi", fastcgi_max_requests=2) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(b"".join(fc.request(i, keep=True) for i in (1, 2, 3)))
        reader = fc.Reader(s)
        third = await reader.until_ended(3)
        gate.set()
        assert (await reader.until_ended(1)).status == 200
        assert (await reader.until_ended(2)).status == 200
    assert third.protocol_status == fc.OVERLOADED
    assert refusal_warnings(caplog) == [
        "FastCGI front-end sent over 2 requests at once on one connection"
        " (fastcgi_max_requests); refused 1 request(s)"
    ]


async def test_without_multiplexing_a_second_request_gets_cant_mpx_conn(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate = trio.Event()
    app = gated(gate)

    async with (
        serving(app, bind, protocol="fastcgi", fastcgi_max_requests=1) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(fc.request(1, keep=True) + fc.request(2, keep=True))
        reader = fc.Reader(s)
        second = await reader.until_ended(2)
        gate.set()
        assert (await reader.until_ended(1)).status == 200
    assert second.protocol_status == fc.CANT_MPX_CONN
    [warning] = refusal_warnings(caplog)
    assert "while fastcgi_max_requests is 1" in warning


async def test_a_refusal_storm_is_warned_about_once_a_while(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Two requests hold the two slots (the connection's task reads for them); 300 more
    # BEGIN_REQUESTs, each in a batch of its own, are refused: one warning line (the
    # next would wait _WARNING_INTERVAL, 10 s; this takes well under that).
    gate = trio.Event()
    app = gated(gate)

    async with (
        serving(app, bind, protocol="fastcgi", fastcgi_max_requests=2) as srv,
        await connect(srv.address) as s,
    ):
        reader = fc.Reader(s)
        await s.send_all(fc.request(1, keep=True) + fc.request(2, keep=True))
        for rid in range(3, 303):
            await s.send_all(fc.begin(rid, keep=True))
            assert (await reader.until_ended(rid)).protocol_status == fc.OVERLOADED
        gate.set()
        assert (await reader.until_ended(1)).status == 200
        assert (await reader.until_ended(2)).status == 200
    assert len(refusal_warnings(caplog)) == 1


@pytest.mark.parametrize("where", ["tcp", "unix"])
async def test_response_cut_short_ends_with_a_bad_record_then_a_reset(
    where: str, tmp_path: Path
) -> None:
    """No END_REQUEST, and a record of version 0 before the close: nginx without keep-conn
    would take a bare EOF for the end of the response. Over TCP, a reset follows."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")

    address = "127.0.0.1:0" if where == "tcp" else f"unix:{tmp_path}/c.sock"
    async with (
        serving(app, address, protocol="fastcgi") as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(fc.request(1))
        data = b""
        reset = False
        try:
            while chunk := await s.receive_some():
                data += chunk
        except trio.BrokenResourceError:
            reset = True
    assert reset == (where == "tcp")
    assert data.endswith(bytes(8))
    assert b"partial" in data
    assert fc.record(fc.END_REQUEST, 1, bytes(8))[:2] not in data[-24:-8]


async def test_file_response_goes_out_in_records(bind: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 2000 + b"tail"
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    async with serving(app, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(fc.request(1))
        response = await fc.Reader(s).until_ended(1)
    assert response.body == data


def test_record_layout_helpers_match_the_spec() -> None:
    assert fc.record(fc.STDIN, 258, b"ab", 6) == b"\x01\x05\x01\x02\x00\x02\x06\x00ab" + b"\0" * 6
    assert struct.unpack(">HB5x", fc.begin(1, keep=True)[8:]) == (fc.RESPONDER, fc.KEEP_CONN)


@pytest.mark.parametrize("protocol", ["fastcgi", "auto"])
async def test_without_keep_conn_the_server_closes_right_after_the_response(
    bind: str, protocol: str, autojump_clock: Any
) -> None:
    """nginx without keep-conn waits for our close: it must not wait for a timeout."""
    async with serving(hello, bind, protocol=protocol) as srv, await connect(srv.address) as s:
        start = trio.current_time()
        await s.send_all(fc.request(1))
        reader = fc.Reader(s)
        await reader.until_ended(1)
        await reader.until_eof()
        assert trio.current_time() - start < 0.1


async def test_a_request_multiplexed_behind_a_waiting_one_is_served(
    bind: str, autojump_clock: Any
) -> None:
    """The first request runs alone (in the connection's task) and waits on receive();
    a second request id arriving then still gets served at once."""
    second_done = trio.Event()
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/first":
            await receive()  # the empty body
            msg = await receive()  # waits: reads the connection for everyone meanwhile
            seen.append(msg["type"])
            return
        await hello(scope, receive, send)
        second_done.set()

    async with serving(app, bind, protocol="fastcgi") as srv, await connect(srv.address) as s:
        await s.send_all(fc.request(1, "GET", "/first", keep=True))
        await trio.sleep(1)  # virtual: every task settles, the first one into its wait
        await s.send_all(fc.request(2, "GET", "/second", keep=True))
        reader = fc.Reader(s)
        second = await reader.until_ended(2)
        assert second.body == b"GET /second ''"
        await second_done.wait()
        await s.send_all(fc.record(fc.ABORT_REQUEST, 1))
        await reader.until_ended(1)
    assert seen == ["http.disconnect"]


async def test_body_over_the_limit_without_content_length_answers_413_to_the_running_app(
    bind: str, autojump_clock: Any
) -> None:
    """A streamed body (no CONTENT_LENGTH) passes max_body_size while its app reads it."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if scope["method"] == "POST":
                seen.append(msg["type"])
            if msg["type"] == "http.disconnect" or not msg.get("more_body"):
                break
        if msg["type"] == "http.disconnect":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})

    async with (
        serving(app, bind, protocol="fastcgi", max_body_size=100) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(
            fc.begin(1, keep=True)
            + fc.params(1, fc.nginx_params("POST", "/", HTTP_TRANSFER_ENCODING="chunked"))
            + fc.record(fc.STDIN, 1, b"a" * 80)
        )
        await trio.sleep(1)
        await s.send_all(fc.record(fc.STDIN, 1, b"b" * 80) + fc.record(fc.STDIN, 1))
        reader = fc.Reader(s)
        response = await reader.until_ended(1)
        assert response.status == 413
        # The connection goes on, and the app's task is not left waiting.
        await s.send_all(fc.request(2, keep=True))
        assert (await reader.until_ended(2)).status == 200
        start = trio.current_time()
    assert trio.current_time() - start < 1  # the shutdown waited for no orphaned request
    assert seen == ["http.request", "http.disconnect"], seen


async def test_a_silent_connection_cancelled_at_shutdown_leaves_no_socket_open(
    bind: str, autojump_clock: Any
) -> None:
    """protocol auto: a connection that sent nothing yet when the grace period ends."""
    async with (
        serving(hello, bind, graceful_timeout=1, header_timeout=100) as srv,
        await connect(srv.address),
    ):
        await trio.sleep(1)
        srv.stop()
        await srv.stopped.wait()
    # filterwarnings = error: a server socket left open fails the test (ResourceWarning).
    gc.collect()


async def test_a_reader_timing_out_in_a_blocked_write_cuts_no_neighbour(
    bind: str, autojump_clock: Any
) -> None:
    """Issue 21, bug 4: the request that happens to read for the connection also writes
    what the core answers to what it read (GET_VALUES_RESULT here), once under its own
    ``read_timeout``. If that timeout fires while the write waits for a front-end that is
    not reading, the connection must not be cut: its neighbour is answered whole."""
    gate = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/body":
            await receive()  # its body never comes: read_timeout ends its wait
        else:
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    # A name we don't know: the answer (an empty GET_VALUES_RESULT, 8 bytes) is half the
    # question, so no one read's answers pass the core's bound on what may wait unsent.
    query = fc.record(fc.GET_VALUES, 0, fc.pairs([(b"NOPE", b"")]))
    count = 60000  # 480 KB of answers: more than the socket buffers hold
    async with (
        serving(
            app,
            bind,
            protocol="fastcgi",
            fastcgi_max_requests=4,
            read_timeout=10,
            write_timeout=1000,
        ) as srv,
        await connect(srv.address) as s,
    ):
        # Request 1 runs in the connection's task and reads for all while it waits.
        await s.send_all(
            fc.begin(1, keep=True) + fc.params(1, fc.nginx_params("POST", "/body", b"x" * 5))
        )
        await trio.sleep(1)
        await s.send_all(fc.request(2, "GET", "/gated", keep=True))
        async with trio.open_nursery() as nursery:
            # The questions go in while the test reads nothing: request 1's write of
            # the answers blocks, and its read_timeout (10 s) passes meanwhile.
            nursery.start_soon(s.send_all, query * count)
            await trio.sleep(30)
            gate.set()
            reader = fc.Reader(s)
            second = await reader.until_ended(2)
            while len(reader.management) < count:
                assert await reader.next_record() is not None, "EOF"
    assert (second.status, second.body, second.protocol_status) == (200, b"ok", 0)
    assert reader.management[0][0] == fc.GET_VALUES_RESULT


async def test_a_file_read_that_blocks_holds_up_no_other_request(bind: str) -> None:
    """Issue 21, bug 8: a file response's bytes are read off the trio thread, so a read
    that blocks (here a pipe's, until the test writes into it; a cold disk's in real life)
    holds up its own response only: another request on the worker is served meanwhile."""
    r, w = os.pipe()
    reading = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/file":
            await hello(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with open(r, "rb", buffering=0, closefd=False) as file:
            reading.set()
            message = {"type": "http.response.zerocopysend", "file": file, "offset": 0, "count": 5}
            await send(message)

    try:
        with trio.fail_after(20):
            async with (
                serving(app, bind, protocol="fastcgi") as srv,
                await connect(srv.address) as s1,
                await connect(srv.address) as s2,
            ):
                await s1.send_all(fc.request(1, "GET", "/file"))
                await reading.wait()
                await trio.testing.wait_all_tasks_blocked()  # the read waits for the pipe
                await s2.send_all(fc.request(1, "GET", "/other"))
                other = await fc.Reader(s2).until_ended(1)
                assert other.body == b"GET /other ''"
                os.write(w, b"hello")
                response = await fc.Reader(s1).until_ended(1)
    finally:
        os.close(w)
        os.close(r)
    assert (response.status, response.body, response.protocol_status) == (200, b"hello", 0)
