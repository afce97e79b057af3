"""Asyncio applications hosted by the trio server (``trioscgi._apps.asynciohost``).

Each test serves an app with ``app_loop = "asyncio"`` in-process and talks SCGI (or
FastCGI) to it: the running loop, executor and timers, the body both ways, files,
errors, disconnects, contextvars, lifespan, cancellation at graceful_timeout, signals.
Which apps go to asyncio, and the hint for an app on the wrong loop: test_apploop.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import sniffio
import trio
from asgiref.sync import sync_to_async
from scgi_client import connect, encode_request, environ, exchange, parse_response, request, serving

from trioscgi._errors import RequestCancelled

# --- what asyncio apps get ----------------------------------------------------------------


def _json_response(body: bytes, status: int = 200) -> list[dict[str, Any]]:
    return [
        {"type": "http.response.start", "status": status, "headers": [(b"x-t", b"1")]},
        {"type": "http.response.body", "body": body},
    ]


async def test_running_loop_executor_timers_and_sniffio(tmp_path: Path) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        loops.append(loop)
        assert asyncio.current_task() is not None
        assert sniffio.current_async_library() == "asyncio"
        in_thread = await loop.run_in_executor(None, threading.get_ident)
        assert in_thread != threading.get_ident()
        await asyncio.sleep(0.001)
        await asyncio.wait_for(asyncio.sleep(0), 1)
        for message in _json_response(b"ok"):
            await send(message)

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        for _ in range(3):
            r = await request(srv.address)
            assert (r.status, r.body) == (200, b"ok")
        # The trio side is untouched by the loop's passes.
        assert sniffio.current_async_library() == "trio"
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
    assert len(set(map(id, loops))) == 1
    assert loops[0].is_closed()


async def test_request_body_in_chunks_and_streamed_response(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            digest.update(message["body"])
            size += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200})
        for i in range(50):
            await send({"type": "http.response.body", "body": b"%d\n" % i, "more_body": True})
        answer = f"{size} {digest.hexdigest()}".encode()
        await send({"type": "http.response.body", "body": answer})

    body = os.urandom(3 << 20)
    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        r = await request(srv.address, environ("POST", "/"), body)
    expected = "".join(f"{i}\n" for i in range(50)).encode()
    assert r.status == 200
    assert r.body == expected + f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


async def test_pathsend_and_zerocopysend(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "f.bin").write_bytes(data)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200})
        if scope["path"] == "/path":
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "f.bin")})
        else:
            with open(tmp_path / "f.bin", "rb") as f:
                await send({"type": "http.response.zerocopysend", "file": f})

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        for uri in ("/path", "/zero"):
            r = await request(srv.address, environ("GET", uri))
            assert (r.status, r.body) == (200, data)


async def test_errors_become_500s_and_serving_goes_on(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/raise":
            raise ValueError("from the app")
        if scope["path"] == "/cancel-self":
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(0)
        if scope["path"] == "/bad-head":
            # Taken without waiting; the error comes from the next send().
            await send({"type": "http.response.start", "status": 200, "headers": [(b"a\n", b"")]})
            await send({"type": "http.response.body", "body": b"never"})
        if scope["path"] == "/bad-head-only":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"a\n", b"")]})
            return
        for message in _json_response(b"fine"):
            await send(message)

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        for uri in ("/raise", "/cancel-self", "/bad-head", "/bad-head-only"):
            assert (await request(srv.address, environ("GET", uri))).status == 500, uri
        assert (await request(srv.address)).body == b"fine"


async def test_client_disconnect_reaches_the_app(tmp_path: Path) -> None:
    got: list[str] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (empty) body
        try:
            got.append((await receive())["type"])  # blocks until the client goes away
        finally:
            done.set()

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        stream = await connect(srv.address)
        await stream.send_all(encode_request(environ()))
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
        with trio.fail_after(5):
            await done.wait()
    assert got == ["http.disconnect"]


async def test_send_after_the_client_left_raises_oserror_in_the_app(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # ASGI 2.4: send() on a closed connection raises an OSError; across the bridge too,
    # and the server takes the app's exception made of it for a client fault (info).
    raised: list[str] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await receive()  # http.disconnect
        try:
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"late"})
        except OSError as exc:
            raised.append(type(exc).__name__)
            raise
        finally:
            done.set()

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        stream = await connect(srv.address)
        await stream.send_all(encode_request(environ()))
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
        with trio.fail_after(5):
            await done.wait()
    assert raised == ["ClientDisconnected"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_contextvars_flow_within_a_request_only(tmp_path: Path) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        before = var.get()
        var.set(scope["path"])

        async def child() -> str:
            return var.get()

        seen = [
            before,
            await asyncio.create_task(child()),
            await asyncio.to_thread(var.get),
            await sync_to_async(var.get)(),
        ]
        for message in _json_response(" ".join(seen).encode()):
            await send(message)

    results: dict[str, bytes] = {}

    async def one(address: str, uri: str) -> None:
        results[uri] = (await request(address, environ("GET", uri))).body

    async with (
        serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv,
        trio.open_nursery() as nursery,
    ):
        for uri in ("/a", "/b", "/c"):
            nursery.start_soon(one, srv.address, uri)
    assert results == {u: f"unset {u} {u} {u}".encode() for u in ("/a", "/b", "/c")}


async def test_sync_to_async_thread_sensitive(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        loop_thread = threading.get_ident()
        first = await sync_to_async(threading.get_ident)()
        second = await sync_to_async(threading.get_ident)()
        other = await sync_to_async(threading.get_ident, thread_sensitive=False)()
        answer = [first == second, first != loop_thread, other != loop_thread]
        for message in _json_response(repr(answer).encode()):
            await send(message)

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        r = await request(srv.address)
    assert r.body == b"[True, True, True]"


class LifespanApp:
    """Starts a background task at startup; records how it and the loop ended."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.background: asyncio.Task[None] | None = None
        self.ticks = 0

    async def _tick(self) -> None:
        try:
            while True:
                self.ticks += 1
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            self.events.append("background cancelled")
            raise

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            self.background = asyncio.create_task(self._tick())
            scope["state"]["loop"] = asyncio.get_running_loop()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            self.events.append(f"shutdown, background done: {self.background.done()}")
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert scope["state"]["loop"] is asyncio.get_running_loop()
        assert self.background is not None
        body = b"alive" if not self.background.done() else b"dead"
        for message in _json_response(body):
            await send(message)


async def test_lifespan_background_task_lives_between_requests(tmp_path: Path) -> None:
    app = LifespanApp()
    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio", lifespan="on") as srv:
        assert (await request(srv.address)).body == b"alive"
        ticks = app.ticks
        while app.ticks == ticks:  # bounded by the test's timeout; no sleep for timing
            await trio.sleep(0.001)
        assert (await request(srv.address)).body == b"alive"
    # Cancelled after the lifespan shutdown, inside asyncio; the loop closed.
    assert app.events == ["shutdown, background done: False", "background cancelled"]
    assert app.background is not None and app.background.cancelled()
    assert app.background.get_loop().is_closed()


async def test_quart_startup_and_shutdown_hooks(tmp_path: Path) -> None:
    from quart import Quart

    quart = Quart("hooks")
    events: list[str] = []

    @quart.before_serving
    async def startup() -> None:
        quart.config["STARTED_ON"] = id(asyncio.get_running_loop())
        events.append("startup")

    @quart.after_serving
    async def shutdown() -> None:
        events.append("shutdown")

    @quart.route("/")
    async def index() -> str:
        return f"{quart.config['STARTED_ON'] == id(asyncio.get_running_loop())}"

    async with serving(quart, f"unix:{tmp_path}/s.sock", lifespan="on") as srv:  # auto: asyncio
        r = await request(srv.address)
        assert (r.status, r.body) == (200, b"True")
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


async def test_graceful_timeout_cancels_stuck_asyncio_tasks(
    tmp_path: Path, autojump_clock: Any
) -> None:
    seen: list[str] = []
    started = trio.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loops.append(asyncio.get_running_loop())
        child = asyncio.create_task(asyncio.Event().wait())
        started.set()
        try:
            await asyncio.Event().wait()  # stuck for good
        except asyncio.CancelledError:
            seen.append("cancelled")
            try:
                await send({"type": "http.response.start", "status": 200})
                await send({"type": "http.response.body", "body": b"late"})
            except RequestCancelled:
                seen.append("send refused")
            raise
        finally:
            child.cancel()

    async with (
        serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio", graceful_timeout=3.0) as srv,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(exchange, srv.address, encode_request(environ()))
        await started.wait()
        srv.stop()
        start = trio.current_time()
        await srv.stopped.wait()
        nursery.cancel_scope.cancel()
    assert srv.stopped_at is not None
    assert 3.0 <= srv.stopped_at - start < 4.0
    assert seen == ["cancelled", "send refused"]
    # Nothing leaked: the loop is closed with no task left.
    assert loops[0].is_closed()
    assert not asyncio.all_tasks(loops[0])


async def test_task_ignoring_its_cancellation_is_reported(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    started = trio.Event()
    tasks: list[asyncio.Task[Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # swallowed once: a broken app
        await asyncio.Event().wait()  # cancelled again when the loop closes

    async with (
        serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio", graceful_timeout=1.0) as srv,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(exchange, srv.address, encode_request(environ()))
        await started.wait()
        srv.stop()
        await srv.stopped.wait()
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any("ignored its cancellation for 5 s" in m for m in messages), messages
    # The loop's close cancelled it again, and that time it ended: no leak.
    assert tasks[0].cancelled()
    assert tasks[0].get_loop().is_closed()


async def test_access_log_in_asyncio_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in _json_response(b"12345", status=201):
            await send(message)

    caplog.set_level(logging.INFO, "trioscgi.access")
    async with serving(
        app,
        f"unix:{tmp_path}/s.sock",
        app_loop="asyncio",
        access_log="-",
        access_log_format="%(r)s %(s)s %(b)s",
    ) as srv:
        await request(srv.address, environ("GET", "/logged"))
    lines = [r.getMessage() for r in caplog.records if r.name == "trioscgi.access"]
    assert lines == ["GET /logged HTTP/1.1 201 5"]


async def test_raw_response_parses(tmp_path: Path) -> None:
    # The bridge adds nothing to the bytes: same response as in trio mode.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in _json_response(b"x"):
            await send(message)

    raws = []
    for mode in ("trio", "asyncio"):
        async with serving(app, f"unix:{tmp_path}/{mode}.sock", app_loop=mode) as srv:
            raws.append(await exchange(srv.address, encode_request(environ())))
    assert raws[0] == raws[1]
    assert parse_response(raws[1]).status == 200


async def test_signals_stay_with_the_server(tmp_path: Path) -> None:
    import signal

    answers: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
        except NotImplementedError:
            answers.append("refused")
        for message in _json_response(b"ok"):
            await send(message)

    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        await request(srv.address)
        # trio's wakeup fd (its signal delivery) is untouched.
        current = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(current)
        assert current == wakeup_fd
    assert answers == ["refused"]


async def test_fastcgi_multiplexed_requests_run_side_by_side(tmp_path: Path) -> None:
    import fcgi_client as fc

    second_started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/one":
            # Answers only once the other request of the same connection runs.
            await asyncio.wait_for(second_started.wait(), 10)
        else:
            second_started.set()
        for message in _json_response(scope["path"].encode()):
            await send(message)

    async with serving(
        app, f"unix:{tmp_path}/s.sock", app_loop="asyncio", protocol="fastcgi"
    ) as srv:
        stream = await connect(srv.address)
        async with stream:
            await stream.send_all(
                fc.request(1, uri="/one", keep=True) + fc.request(2, uri="/two", keep=True)
            )
            reader = fc.Reader(stream)
            one = await reader.until_ended(1)
            two = await reader.until_ended(2)
    assert (one.status, one.body) == (200, b"/one")
    assert (two.status, two.body) == (200, b"/two")
