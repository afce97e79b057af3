"""serve(): bound addresses, the scope via the server, graceful shutdown, max_connections."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from scgi_client import (
    connect,
    encode_request,
    environ,
    parse_response,
    read_all,
    request,
    serving,
)

import trioscgi
from trioscgi._listeners import BindError


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


# --- binds --------------------------------------------------------------------------


async def test_started_reports_unix_and_tcp_addresses(tmp_path: Path) -> None:
    path = f"{tmp_path}/s.sock"
    async with serving(hello, [f"unix:{path}", "127.0.0.1:0"]) as srv:
        unix, tcp = srv.addresses
        assert unix == f"unix:{path}"
        host, _, port = tcp.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0  # the port the kernel chose, not 0
        for address in srv.addresses:
            r = await request(address)
            assert (r.status, r.body) == (200, b"hello")


async def test_serve_as_plain_call_returns_when_cancelled(
    tmp_path: Path, autojump_clock: Any
) -> None:
    config = trioscgi.Config(bind=[f"unix:{tmp_path}/s.sock"], lifespan="off")
    with trio.move_on_after(5) as scope:
        await trioscgi.serve(hello, config)
    assert scope.cancelled_caught
    assert not os.path.exists(f"{tmp_path}/s.sock")


async def test_bind_error_is_raised_bare(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a socket")
    config = trioscgi.Config(bind=[f"unix:{tmp_path}/file"], lifespan="off")
    with pytest.raises(BindError, match="not a socket"):
        await trioscgi.serve(hello, config)
    assert (tmp_path / "file").read_text() == "not a socket"


# --- the scope through the server ------------------------------------------------------


async def test_scope_environ_state_copy_and_root_path(tmp_path: Path) -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["db"] = "conn"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        scopes.append({**scope, "state": dict(scope["state"])})
        scope["state"]["leak"] = True  # must not reach the next request
        await hello(scope, receive, send)

    pairs = environ("GET", "/app/hello?q=1", extra=[("HTTP_X_A", "1")])
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="on", root_path="/app") as srv:
        await request(srv.address, pairs)
        await request(srv.address, pairs)
    first, second = scopes
    assert first["type"] == "http"
    assert first["asgi"]["spec_version"] == "2.4"
    assert first["extensions"]["scgi"]["environ"][0] == (b"CONTENT_LENGTH", b"0")
    assert (b"HTTP_X_A", b"1") in first["extensions"]["scgi"]["environ"]
    assert first["root_path"] == "/app"
    assert first["path"] == "/app/hello"
    assert first["query_string"] == b"q=1"
    assert first["state"] == {"db": "conn"}
    assert second["state"] == {"db": "conn"}


# --- graceful shutdown ---------------------------------------------------------------


async def test_graceful_shutdown_completes_request_in_flight(
    tmp_path: Path, autojump_clock: Any
) -> None:
    path = f"{tmp_path}/s.sock"
    events: list[str] = []
    in_app = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            events.append("lifespan shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        in_app.set()
        await trio.sleep(20)  # under graceful_timeout
        events.append("request done")
        await hello(scope, receive, send)

    async with serving(app, f"unix:{path}", lifespan="on", graceful_timeout=30) as srv:
        async with await connect(srv.address) as s:
            await s.send_all(encode_request(environ()))
            await in_app.wait()
            t0 = trio.current_time()
            srv.stop()
            await trio.testing.wait_all_tasks_blocked()
            # Stopped accepting: our socket file is gone, new connections are refused.
            assert not os.path.exists(path)
            with pytest.raises(OSError):
                await connect(srv.address)
            r = parse_response(await read_all(s))
        await srv.stopped.wait()
    assert (r.status, r.body) == (200, b"hello")
    assert events == ["request done", "lifespan shutdown"]
    assert srv.stopped_at is not None
    assert srv.stopped_at - t0 == pytest.approx(20)


async def test_graceful_timeout_cancels_stuck_request(tmp_path: Path, autojump_clock: Any) -> None:
    cancelled: list[float] = []
    in_app = trio.Event()
    shutdown_at: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            shutdown_at.append(trio.current_time())
            await send({"type": "lifespan.shutdown.complete"})
            return
        in_app.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise

    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="on", graceful_timeout=12) as srv:
        async with await connect(srv.address) as s:
            await s.send_all(encode_request(environ()))
            await in_app.wait()
            t0 = trio.current_time()
            srv.stop()
            data = await read_all(s)
        await srv.stopped.wait()
    assert cancelled == [pytest.approx(t0 + 12)]
    assert shutdown_at == [pytest.approx(t0 + 12)]  # lifespan shutdown after the requests
    assert b"200" not in data  # no response was made up for it


async def test_requests_cut_at_graceful_timeout_are_logged(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Each cut request gets a line (method, path, how long it ran); past ten,
    # one count line instead of hundreds.
    n = 12
    in_app = trio.Semaphore(0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        in_app.release()
        await trio.sleep_forever()

    async def wait_for_the_cut(s: trio.SocketStream) -> None:
        async with s:
            await read_all(s)

    caplog.set_level(logging.INFO, "trioscgi")
    async with serving(app, f"unix:{tmp_path}/s.sock", graceful_timeout=12) as srv:
        async with trio.open_nursery() as clients:
            for i in range(n):
                s = await connect(srv.address)
                clients.start_soon(wait_for_the_cut, s)
                method = "POST" if i == 0 else "GET"
                await s.send_all(encode_request(environ(method, f"/slow/{i}")))
                await in_app.acquire()
                await trio.sleep(1)  # request i has run n - i s when the stop comes
            srv.stop()
        await srv.stopped.wait()
    cut = [r for r in caplog.records if " cut " in r.getMessage()]
    assert all(r.levelno == logging.WARNING for r in cut)
    lines = [r.getMessage() for r in cut]
    expected = {
        f"request cut at graceful_timeout (12 s): {'POST' if i == 0 else 'GET'} /slow/{i},"
        f" running for {24 - i:.1f} s"
        for i in range(n)
    }
    # trio cancels them in no set order: any ten of the twelve, then the count.
    assert len(set(lines[:10])) == 10
    assert set(lines[:10]) <= expected
    assert lines[10:] == ["12 requests cut in all (2 more than listed above)"]


async def test_requests_finishing_within_graceful_timeout_log_no_cut(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await trio.sleep(5)
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    caplog.set_level(logging.INFO, "trioscgi")
    async with serving(app, f"unix:{tmp_path}/s.sock", graceful_timeout=12) as srv:
        async with await connect(srv.address) as s:
            await s.send_all(encode_request(environ()))
            await trio.sleep(1)
            srv.stop()
            assert b"204" in await read_all(s)
        await srv.stopped.wait()
    assert not [r for r in caplog.records if " cut " in r.getMessage()]


async def test_graceful_timeout_cancels_a_response_streaming_to_a_fast_reader(
    tmp_path: Path,
) -> None:
    # Every send() goes straight out (small chunks, a reader that keeps up), so the
    # socket never makes the app wait: send() itself must be where graceful_timeout
    # reaches it. (Real time: with the autojump clock, time never moves while the
    # two tasks keep each other busy.)
    cancelled: list[bool] = []
    streaming = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
                streaming.set()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    async with (
        serving(app, f"unix:{tmp_path}/s.sock", graceful_timeout=0.2) as srv,
        await connect(srv.address) as s,
    ):
        await s.send_all(encode_request(environ()))
        await streaming.wait()
        srv.stop()
        with trio.fail_after(20):
            while await s.receive_some(65536):
                pass
            await srv.stopped.wait()
    assert cancelled == [True]


async def test_shutdown_with_nothing_in_flight_is_immediate(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with serving(hello, f"unix:{tmp_path}/s.sock", graceful_timeout=30) as srv:
        await request(srv.address)
        t0 = trio.current_time()
        srv.stop()
        await srv.stopped.wait()
    assert srv.stopped_at == t0


# --- max_connections -------------------------------------------------------------------


async def test_max_connections_holds_further_connections_in_backlog(
    tmp_path: Path, autojump_clock: Any
) -> None:
    release = trio.Event()
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        if scope["path"] == "/first":
            await release.wait()
        await hello(scope, receive, send)

    async with (
        serving(app, f"unix:{tmp_path}/s.sock", max_connections=1) as srv,
        await connect(srv.address) as s1,
        await connect(srv.address) as s2,
    ):
        await s1.send_all(encode_request(environ("GET", "/first")))
        await trio.testing.wait_all_tasks_blocked()
        await s2.send_all(encode_request(environ("GET", "/second")))
        await trio.sleep(100)
        assert calls == ["/first"]  # the second waits in the backlog
        release.set()
        r1 = parse_response(await read_all(s1))
        r2 = parse_response(await read_all(s2))
    assert calls == ["/first", "/second"]
    assert r1.status == r2.status == 200


async def test_max_connections_counts_across_listeners(tmp_path: Path, autojump_clock: Any) -> None:
    release = trio.Event()
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await release.wait()
        await hello(scope, receive, send)

    binds = [f"unix:{tmp_path}/s.sock", "127.0.0.1:0"]
    async with serving(app, binds, max_connections=1) as srv:
        unix, tcp = srv.addresses
        async with await connect(unix) as s1, await connect(tcp) as s2:
            await s1.send_all(encode_request(environ("GET", "/first")))
            await trio.testing.wait_all_tasks_blocked()
            await s2.send_all(encode_request(environ("GET", "/second")))
            await trio.sleep(100)
            assert calls == ["/first"]  # the TCP one waits: one connection in all
            release.set()
            r1 = parse_response(await read_all(s1))
            r2 = parse_response(await read_all(s2))
    # Once the first is done, the second is served, not dropped.
    assert calls == ["/first", "/second"]
    assert (r1.status, r1.body) == (r2.status, r2.body) == (200, b"hello")


async def test_every_listener_resumes_after_the_limit(tmp_path: Path, autojump_clock: Any) -> None:
    gates = {"/a": trio.Event(), "/b": trio.Event()}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] in gates:
            await gates[scope["path"]].wait()
        await hello(scope, receive, send)

    binds = [f"unix:{tmp_path}/s.sock", "127.0.0.1:0"]
    async with serving(app, binds, max_connections=1) as srv:
        unix, tcp = srv.addresses
        # Drive both accept loops into the at-limit wait, one after the other.
        async with await connect(tcp) as sa:
            await sa.send_all(encode_request(environ("GET", "/a")))
            await trio.testing.wait_all_tasks_blocked()
            async with await connect(unix) as sb:
                await sb.send_all(encode_request(environ("GET", "/b")))
                await trio.testing.wait_all_tasks_blocked()
                gates["/a"].set()
                await read_all(sa)
                gates["/b"].set()
                await read_all(sb)
        # Both listeners must serve again.
        with trio.move_on_after(60):
            for address in (unix, tcp):
                r = await request(address)
                assert r.status == 200
            return
        pytest.fail("a listener stopped accepting after max_connections was reached")


async def _from(source: str, address: str, data: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    sock = trio.socket.socket()
    with sock:
        await sock.bind((source, 0))
        await sock.connect((host, int(port)))
        await sock.send(data)
        out = b""
        while chunk := await sock.recv(65536):
            out += chunk
        return out


async def test_untrusted_peers_are_refused_with_bounded_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Loopback only: the listener on 127.0.0.2, a trusted peer from 127.0.0.1
    # and an untrusted one from 127.0.0.3 (the default trusted_peers is
    # exactly 127.0.0.1 and ::1).
    data = encode_request(environ("GET", "/"))
    async with serving(hello, "127.0.0.2:0") as srv:
        for _ in range(5):
            # Closed unread: an EOF or, with our bytes unread, a reset.
            try:
                assert await _from("127.0.0.3", srv.address, data) == b""
            except ConnectionResetError:
                pass
        assert parse_response(await _from("127.0.0.1", srv.address, data)).status == 200
    refused = [r for r in caplog.records if "not in trusted_peers" in r.getMessage()]
    # Whoever can connect must not decide how much we log.
    assert len(refused) == 1
    assert "127.0.0.3" in refused[0].getMessage()
