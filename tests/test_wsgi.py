"""PEP 3333 conformance of the WSGI adapter (trioscgi._apps.wsgi), driven as an ASGI app.

The adapter is an ASGI application: each test gives it a scope built from a real-shaped
SCGI environ and a small fake connection (receive/send recorded: wsgi_harness.py), and runs
it under trio. The environ and wsgi.input: test_wsgi_environ.py.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from wsgi_harness import FakeConnection, StartResponse, call, make_scope

from trioscgi import Config
from trioscgi._apps.wsgi import detect_interface, wrap_wsgi


def hello(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]


# --- interface detection -----------------------------------------------------------------


async def asgi_function(scope: Any, receive: Any, send: Any) -> None:
    raise NotImplementedError


class ASGIObject:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError


class WSGIObject:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def test_detect_plain_shapes() -> None:
    assert detect_interface(asgi_function, "auto") == "asgi"
    assert detect_interface(ASGIObject(), "auto") == "asgi"
    assert detect_interface(hello, "auto") == "wsgi"
    assert detect_interface(WSGIObject(), "auto") == "wsgi"


def test_detect_frameworks() -> None:
    import fastapi
    import flask
    import starlette.applications

    assert detect_interface(flask.Flask("t"), "auto") == "wsgi"
    assert detect_interface(starlette.applications.Starlette(), "auto") == "asgi"
    assert detect_interface(fastapi.FastAPI(), "auto") == "asgi"
    # Django's handlers: WSGIHandler.__call__(self, environ, start_response) and
    # ASGIHandler's async __call__(self, scope, receive, send), looked at without
    # building them (their constructors need configured settings).
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    assert detect_interface(object.__new__(WSGIHandler), "auto") == "wsgi"
    assert detect_interface(object.__new__(ASGIHandler), "auto") == "asgi"


def test_detect_declared_wins() -> None:
    assert detect_interface(hello, "asgi") == "asgi"
    assert detect_interface(asgi_function, "wsgi") == "wsgi"
    with pytest.raises(ValueError, match="auto"):
        detect_interface(hello, "rsgi")


def sync_three(scope: Any, receive: Any, send: Any) -> Any:
    raise NotImplementedError


async def async_two(environ: Any, start_response: Any) -> None:
    raise NotImplementedError


@pytest.mark.parametrize(
    "app",
    [
        sync_three,  # an ASGI middleware returning a coroutine, or a mistake: ask
        async_two,
        lambda *args: None,
        ASGIObject,  # a class (ASGI 2 double callable?)
        WSGIObject,
    ],
)
def test_detect_ambiguous_asks_for_the_flag(app: Any) -> None:
    with pytest.raises(ValueError, match="--interface asgi or --interface wsgi"):
        detect_interface(app, "auto")


def test_detect_not_callable() -> None:
    with pytest.raises(ValueError, match="not callable"):
        detect_interface(42, "auto")


# --- start_response and the response ------------------------------------------------------


async def test_hello_is_one_start_and_one_body() -> None:
    conn = await call(hello)
    assert conn.sent == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"Content-Type", b"text/plain")],
        },
        {"type": "http.response.body", "body": b"Hello, world!", "more_body": False},
    ]


async def test_list_with_repeated_blocks() -> None:
    block = b"same"

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [block, block, block]

    conn = await call(app)
    assert conn.body == b"samesamesame"
    assert [m["more_body"] for m in conn.sent[1:]] == [True, True, False]


@pytest.mark.parametrize(
    ("status", "code"), [("404 Not Found", 404), ("599 Whatever", 599), ("200", 200)]
)
async def test_status_parsing(status: str, code: int) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response(status, [])
        return [b""]

    conn = await call(app)
    assert conn.status == code


@pytest.mark.parametrize("status", ["OK", "20 OK", "200OK", " 200 OK", "099 Low", 200, b"200 OK"])
async def test_invalid_status_raises_before_anything_is_sent(status: Any) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response(status, [])
        return [b"x"]

    conn = FakeConnection()
    with pytest.raises((TypeError, ValueError)):
        await call(app, conn=conn)
    # Nothing sent: the server can still answer 500.
    assert conn.sent == []


@pytest.mark.parametrize(
    "headers",
    [
        (("A", "b"),),
        [("A", b"b")],
        [("A",)],
        [("X", "snow\u2603")],
    ],
)
async def test_invalid_headers(headers: Any) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", headers)
        return [b"x"]

    with pytest.raises((TypeError, ValueError)):
        await call(app)


async def test_start_response_twice_without_exc_info() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    with pytest.raises(RuntimeError, match="second time"):
        await call(app)


async def test_exc_info_before_headers_sent_replaces_them() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Ok", "1")])
        try:
            raise KeyError("boom")
        except KeyError:
            start_response("500 Internal Server Error", [("X-Err", "1")], sys.exc_info())
        return [b"error page"]

    conn = await call(app)
    assert conn.status == 500
    assert conn.headers == [(b"X-Err", b"1")]
    assert conn.body == b"error page"


async def test_exc_info_after_headers_sent_reraises() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"part one"
        try:
            raise KeyError("late")
        except KeyError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    conn = FakeConnection()
    with pytest.raises(KeyError, match="late"):
        await call(app, conn=conn)
    # The start and the first block went out; the server closes the connection.
    assert [m["type"] for m in conn.sent] == ["http.response.start", "http.response.body"]
    assert conn.sent[1] == {"type": "http.response.body", "body": b"part one", "more_body": True}


async def test_write_callable_then_iterable() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"one ")
        write(bytearray(b"two "))
        return [b"three"]

    conn = await call(app)
    assert conn.body == b"one two three"
    # write() transmits at once (PEP 3333); the last block ends the response.
    assert [m.get("more_body") for m in conn.sent[1:]] == [True, True, False]


async def test_write_before_start_response_and_bad_types() -> None:
    def early(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response.__self__.write(b"x")
        return []

    with pytest.raises(RuntimeError, match="before start_response"):
        await call(early)

    def text(environ: dict[str, Any], start_response: StartResponse) -> list[str]:
        start_response("200 OK", [])
        return ["not bytes"]

    with pytest.raises(TypeError, match="bytes"):
        await call(text)

    def integer(environ: dict[str, Any], start_response: StartResponse) -> list[int]:
        start_response("200 OK", [])
        return [5]

    with pytest.raises(TypeError, match="bytes"):
        await call(integer)


async def test_start_response_never_called() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        return [b"x"]

    with pytest.raises(RuntimeError, match="start_response"):
        await call(app)

    def empty(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        return []

    with pytest.raises(RuntimeError, match="start_response"):
        await call(empty)


async def test_headers_held_until_first_non_empty_block() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b""
        yield b""
        raise ZeroDivisionError

    conn = FakeConnection()
    with pytest.raises(ZeroDivisionError):
        await call(app, conn=conn)
    assert conn.sent == []  # still time for the server's 500


async def test_streaming_sends_each_block_before_the_next_is_made() -> None:
    conn = FakeConnection()
    seen_when_resumed = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for i in range(3):
            yield f"event {i}\n".encode()
            seen_when_resumed.append(len(conn.sent))

    await call(app, conn=conn)
    assert seen_when_resumed == [2, 3, 4]
    assert conn.body == b"event 0\nevent 1\nevent 2\n"
    assert conn.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_content_length_complete_ends_and_clips() -> None:
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"abc"
            yield b"defgh"
            yield b"never reached"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Body:
        start_response("200 OK", [("Content-Length", "6")])
        return Body()

    conn = await call(app)
    assert conn.body == b"abcdef"
    assert conn.sent[-1] == {"type": "http.response.body", "body": b"def", "more_body": False}
    assert closed == [True]


# --- close() always called -----------------------------------------------------------------


class Closing:
    """A response iterable that records close() and can fail or run forever."""

    def __init__(self, blocks: Iterable[bytes], fail_after: int | None = None) -> None:
        self.blocks = blocks
        self.fail_after = fail_after
        self.closed = 0
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        for block in self.blocks:
            if self.fail_after is not None and self.produced >= self.fail_after:
                raise OSError("disk gone")  # an app error that is an OSError too
            self.produced += 1
            yield block

    def close(self) -> None:
        self.closed += 1


def forever() -> Iterator[bytes]:
    while True:
        yield b"tick\n"


async def test_close_called_on_normal_end() -> None:
    body = Closing([b"a", b"b"])
    conn = await call(lambda e, sr: (sr("200 OK", []), body)[1])
    assert conn.body == b"ab"
    assert body.closed == 1


async def test_close_called_on_error_during_iteration() -> None:
    body = Closing([b"a", b"b", b"c"], fail_after=1)
    conn = FakeConnection()
    with pytest.raises(OSError, match="disk gone"):
        # An OSError from the app (not from send) is an app error: it propagates.
        await call(lambda e, sr: (sr("200 OK", []), body)[1], conn=conn)
    assert body.closed == 1


async def test_client_abort_while_streaming_closes_and_frees_the_thread() -> None:
    body = Closing(forever())
    conn = FakeConnection(fail_on_send=3)
    asgi = wrap_wsgi(lambda e, sr: (sr("200 OK", []), body)[1], Config(wsgi_threads=1))
    # The send error is the client's doing: the adapter returns quietly.
    await asgi(make_scope(), conn.receive, conn.send)
    assert body.closed == 1
    assert body.produced == 3
    assert asgi.limiter.borrowed_tokens == 0  # type: ignore[attr-defined]
    # The one thread is free for the next request.
    conn2 = await call(hello)
    assert conn2.body == b"Hello, world!"


async def test_client_abort_on_the_last_block() -> None:
    body = Closing([b"only"])
    conn = FakeConnection(fail_on_send=0)
    await call(lambda e, sr: (sr("200 OK", []), body)[1], conn=conn)
    assert body.closed == 1


async def test_close_called_when_write_fails() -> None:
    body = Closing([b"x"])

    def app(environ: dict[str, Any], start_response: StartResponse) -> Closing:
        write = start_response("200 OK", [])
        write(b"a")
        write(b"b")  # the client is gone: raises OSError in the app
        return body

    conn = FakeConnection(fail_on_send=2)
    await call(app, conn=conn)
    assert body.closed == 0  # the app never returned it: nothing to close
    assert [m.get("body") for m in conn.sent[1:]] == [b"a"]


# --- wsgi.file_wrapper ------------------------------------------------------------------------


def file_app(path: Path, skip: int = 0, length: int | None = None) -> Any:
    opened: list[Any] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        f = open(path, "rb")  # noqa: SIM115 - closed through the wrapper
        opened.append(f)
        f.seek(skip)
        headers = [] if length is None else [("Content-Length", str(length))]
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, 1000)

    app.opened = opened  # type: ignore[attr-defined]
    return app


async def test_file_wrapper_uses_zerocopysend(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 40)
    app = file_app(path, skip=10, length=5000)
    conn = await call(app, make_scope(zerocopy=True))
    (f,) = app.opened
    assert [m["type"] for m in conn.sent] == ["http.response.start", "http.response.zerocopysend"]
    message = conn.sent[1]
    assert message["file"] is f
    assert (message["offset"], message["count"], message["more_body"]) == (10, 5000, False)
    assert f.closed


async def test_file_wrapper_without_zerocopysend_iterates(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 40
    path.write_bytes(data)
    app = file_app(path, skip=10)
    conn = await call(app, make_scope())
    assert conn.body == data[10:]
    assert app.opened[0].closed


async def test_file_wrapper_without_a_file_descriptor() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"in memory" * 300))

    conn = await call(app, make_scope(zerocopy=True))
    assert conn.body == b"in memory" * 300


# --- lifespan and the thread limit (the pool itself: test_wsgi_pool.py) ----------------------


async def test_lifespan_answers_complete() -> None:
    asgi = wrap_wsgi(hello, Config())
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    await asgi({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_websocket_scope_refused() -> None:
    with pytest.raises(RuntimeError, match="websocket"):
        await wrap_wsgi(hello, Config())({"type": "websocket"}, None, None)  # type: ignore[arg-type]


def test_wsgi_threads_must_be_positive() -> None:
    with pytest.raises(ValueError):
        wrap_wsgi(hello, Config(wsgi_threads=0))


async def test_wsgi_threads_limits_concurrency() -> None:
    entered_send, entered_receive = trio.open_memory_channel[int](10)
    gate = trio.Event()
    lock = threading.Lock()
    running = 0
    peak = 0

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        trio.from_thread.run(entered_send.send, 1)
        trio.from_thread.run(gate.wait)
        with lock:
            running -= 1
        start_response("200 OK", [])
        return [b"ok"]

    asgi = wrap_wsgi(app, Config(wsgi_threads=2))
    conns = [FakeConnection() for _ in range(5)]
    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(asgi, make_scope(), conn.receive, conn.send)
        await entered_receive.receive()
        await entered_receive.receive()
        await trio.testing.wait_all_tasks_blocked()
        stats = asgi.limiter.statistics()  # type: ignore[attr-defined]
        assert stats.borrowed_tokens == 2
        assert stats.tasks_waiting == 3
        gate.set()
    assert peak == 2
    assert all(conn.body == b"ok" for conn in conns)


async def test_hung_view_does_not_hold_the_shutdown(tmp_path: Path, autojump_clock: Any) -> None:
    # A thread can't be interrupted; past graceful_timeout the server stops
    # waiting for it instead of hanging the shutdown (or a second SIGTERM).
    from scgi_client import connect, encode_head, environ, serving

    started = threading.Event()
    gate = threading.Event()
    view_done = threading.Event()

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        started.set()
        gate.wait(30)
        view_done.set()
        start_response("200 OK", [])
        return [b"late"]

    wrapped = wrap_wsgi(app, Config(wsgi_threads=2))
    try:
        async with serving(wrapped, f"unix:{tmp_path}/s.sock", graceful_timeout=5) as srv:
            stream = await connect(srv.address)
            await stream.send_all(encode_head(environ("GET", "/"), 0))
            assert await trio.to_thread.run_sync(started.wait, 10)
            srv.stop()
            await srv.stopped.wait()
            assert not view_done.is_set()  # stopped while the view still hangs
            await stream.aclose()
    finally:
        gate.set()
