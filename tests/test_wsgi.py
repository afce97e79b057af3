"""PEP 3333 conformance of the WSGI adapter (trioscgi._apps.wsgi), driven as an ASGI app.

The adapter is an ASGI application: each test gives it a scope built from a real-shaped
SCGI environ and a small fake connection (receive/send recorded), and runs it under trio.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest
import trio
import trio.testing

from trioscgi import Config
from trioscgi._apps.wsgi import FileWrapper, detect_interface, wrap_wsgi
from trioscgi._apps.wsgi_environ import build_environ
from trioscgi._asgi.scope import http_scope

Environ = list[tuple[bytes, bytes]]
StartResponse = Any


def nginx_environ(
    uri: str = "/hello?x=1",
    *,
    method: str = "GET",
    length: int = 0,
    content_type: str = "",
    extra: Iterable[tuple[str, str]] = (),
) -> Environ:
    """What nginx with the stock scgi_params sends (no SCRIPT_NAME, no PATH_INFO)."""
    _, _, query = uri.partition("?")
    items = [
        ("CONTENT_LENGTH", str(length)),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", uri),
        ("QUERY_STRING", query),
        ("CONTENT_TYPE", content_type),
        ("DOCUMENT_URI", uri.partition("?")[0]),
        ("SCGI", "1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "51234"),
        ("SERVER_PORT", "8080"),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost:8080"),
        ("HTTP_ACCEPT", "*/*"),
        *extra,
    ]
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items]


def make_scope(
    environ: Environ | None = None, *, root_path: str = "", zerocopy: bool = False
) -> Any:
    scope = http_scope(environ or nginx_environ(), root_path=root_path, state=None)
    if zerocopy:
        scope["extensions"]["http.response.zerocopysend"] = {}
    return scope


class FakeConnection:
    """receive()/send() of one request: the body in chunks, the messages recorded."""

    def __init__(self, body: Iterable[bytes] = (), *, fail_on_send: int | None = None) -> None:
        self.chunks = list(body)
        self.sent: list[MutableMapping[str, Any]] = []
        self.receive_calls = 0
        self.fail_on_send = fail_on_send

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        await trio.lowlevel.checkpoint()
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail_on_send is not None and len(self.sent) >= self.fail_on_send:
            # What the server raises once the front-end closed (ASGI spec 2.4).
            raise BrokenPipeError(32, "Broken pipe")
        self.sent.append(message)

    @property
    def status(self) -> int:
        assert self.sent[0]["type"] == "http.response.start"
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        assert self.sent[-1].get("more_body", False) is False
        return b"".join(m.get("body", b"") for m in self.sent[1:])


async def call(
    app: Any,
    scope: Any = None,
    conn: FakeConnection | None = None,
    config: Config | None = None,
) -> FakeConnection:
    conn = conn or FakeConnection()
    asgi = wrap_wsgi(app, config or Config())
    await asgi(scope or make_scope(), conn.receive, conn.send)
    return conn


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


# --- the environ -------------------------------------------------------------------------


async def capture_environ(scope: Any, config: Config | None = None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    await call(app, scope, config=config)
    return seen


async def test_environ_is_pep3333_valid() -> None:
    # wsgiref.validate checks the environ's keys and types, start_response's
    # arguments and the iterable protocol; its warnings are errors here.
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        body = environ["wsgi.input"].read(5)
        environ["wsgi.errors"].write("")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        yield body[:4]

    scope = make_scope(nginx_environ("/p?a=b", method="POST", length=5, content_type="text/x"))
    conn = await call(validator(app), scope, FakeConnection([b"hel", b"lo"]))
    assert conn.status == 200
    assert conn.body == b"hell"


async def test_environ_keys_and_values() -> None:
    environ = await capture_environ(make_scope(), Config(workers=3))
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/hello"
    assert environ["QUERY_STRING"] == "x=1"
    assert environ["SERVER_NAME"] == "localhost"
    assert environ["SERVER_PORT"] == "8080"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["HTTP_HOST"] == "localhost:8080"
    assert environ["CONTENT_LENGTH"] == "0"
    assert "CONTENT_TYPE" not in environ  # nginx's empty CONTENT_TYPE on a GET
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.file_wrapper"] is FileWrapper
    assert environ["wsgi.input_terminated"] is True
    for key, value in environ.items():
        assert type(key) is str
        if not key.startswith("wsgi."):
            assert type(value) is str, key
    single = await capture_environ(make_scope())
    assert single["wsgi.multiprocess"] is False


async def test_environ_root_path_and_non_ascii_path() -> None:
    # nginx stock: no SCRIPT_NAME/PATH_INFO, the configured root_path splits the path.
    scope = make_scope(nginx_environ("/app/caf%C3%A9/%2Fx?q=%20"), root_path="/app")
    environ = await capture_environ(scope)
    assert environ["SCRIPT_NAME"] == "/app"
    # PEP 3333: the decoded bytes, as latin-1 "bytes as unicode".
    assert environ["PATH_INFO"] == "/caf\xc3\xa9//x"
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café//x"
    assert environ["QUERY_STRING"] == "q=%20"
    assert scope["root_path"] + scope["path"][len(scope["root_path"]) :] == scope["path"]


async def test_environ_invalid_utf8_keeps_bytes() -> None:
    environ = await capture_environ(make_scope(nginx_environ("/x%FFy")))
    assert environ["PATH_INFO"] == "/x\xffy"


async def test_environ_lighttpd_split() -> None:
    raw = [
        (b"CONTENT_LENGTH", b"0"),
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", b"/app/caf%C3%A9?z"),
        (b"QUERY_STRING", b"z"),
        (b"SCRIPT_NAME", b"/app"),
        (b"PATH_INFO", "/café".encode()),
        (b"SERVER_NAME", b"h"),
        (b"SERVER_PORT", b"80"),
        (b"SCGI", b"1"),
    ]
    environ = await capture_environ(make_scope(raw))
    assert environ["SCRIPT_NAME"] == "/app"
    assert environ["PATH_INFO"] == "/caf\xc3\xa9"


async def test_environ_outside_root_path() -> None:
    environ = await capture_environ(make_scope(nginx_environ("/other/x"), root_path="/app"))
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/other/x"


async def test_environ_duplicates_and_nginx_extras() -> None:
    extra = [
        ("HTTP_COOKIE", "a=1"),
        ("HTTP_COOKIE", "b=2"),  # nginx < 1.23 repeats a header sent twice
        ("HTTP_X_THING", "1"),
        ("HTTP_X_THING", "2"),
        ("HTTP_CONTENT_LENGTH", "5"),
        ("HTTP_TRANSFER_ENCODING", "chunked"),  # nginx de-chunked the body already
        ("HTTPS", "on"),
        ("REQUEST_SCHEME", "https"),
    ]
    environ = await capture_environ(make_scope(nginx_environ(extra=extra)))
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_THING"] == "1, 2"
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert "HTTP_TRANSFER_ENCODING" not in environ
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"


def test_environ_from_a_plain_asgi_scope() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/r/x",
        "root_path": "/r",
        "query_string": b"a=1",
        "headers": [(b"content-type", b"text/plain"), (b"cookie", b"a"), (b"cookie", b"b")],
        "client": ("10.0.0.1", 5),
        "server": None,
        "http_version": "1.0",
    }
    environ = build_environ(scope, io.BytesIO(), sys.stderr, False)
    assert environ["SCRIPT_NAME"] == "/r"
    assert environ["PATH_INFO"] == "/x"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["HTTP_COOKIE"] == "a; b"
    assert environ["SERVER_NAME"] == "localhost"
    assert environ["SERVER_PORT"] == "80"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert environ["REMOTE_ADDR"] == "10.0.0.1"


async def test_wsgi_errors_go_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        errors = environ["wsgi.errors"]
        errors.write("first line\nsecond ")
        errors.writelines(["line\n", "tail"])
        start_response("200 OK", [])
        return [b"x"]

    with caplog.at_level(logging.INFO, logger="trioscgi.wsgi"):
        await call(app)
    lines = [r.getMessage() for r in caplog.records if r.name == "trioscgi.wsgi"]
    assert lines == ["first line", "second line", "tail"]


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


# --- wsgi.input ------------------------------------------------------------------------------


def post_scope(length: int) -> Any:
    return make_scope(nginx_environ("/up", method="POST", length=length, content_type="x/y"))


async def test_input_read_sizes() -> None:
    got = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        got.append(stream.read(2))
        got.append(stream.read(5))
        got.append(stream.read(0))
        got.append(stream.read())
        got.append(stream.read())
        got.append(stream.read(10))
        start_response("200 OK", [])
        return []

    body = [b"abc", b"defgh", b"ij"]
    await call(app, post_scope(10), FakeConnection(body))
    assert got == [b"ab", b"cdefg", b"", b"hij", b"", b""]


async def test_input_lines_and_iteration() -> None:
    got: list[Any] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        got.append(stream.readline())
        got.append(stream.readline(3))
        got.append(stream.readline(-1))
        got.append(stream.readlines(1))
        got.append(list(stream))
        got.append(stream.readline())
        start_response("200 OK", [])
        return []

    body = [b"line one\nli", b"ne two\nthird\nfo", b"urth\nlast"]
    await call(app, post_scope(sum(map(len, body))), FakeConnection(body))
    assert got == [
        b"line one\n",
        b"lin",
        b"e two\n",
        [b"third\n"],
        [b"fourth\n", b"last"],
        b"",
    ]


async def test_input_readlines_all() -> None:
    got = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        got.extend(environ["wsgi.input"].readlines())
        start_response("200 OK", [])
        return []

    await call(app, post_scope(6), FakeConnection([b"a\nb", b"\nc"]))
    assert got == [b"a\n", b"b\n", b"c"]


async def test_input_is_pulled_only_as_the_app_reads() -> None:
    conn = FakeConnection([b"x" * 100] * 50)
    calls_seen = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        calls_seen.append(conn.receive_calls)
        stream.read(150)
        calls_seen.append(conn.receive_calls)
        start_response("200 OK", [])
        return []

    await call(app, post_scope(5000), conn)
    # Nothing before the first read; two chunks for 150 bytes; the rest stays with the
    # connection (the server drains it after the response).
    assert calls_seen == [0, 2]
    assert len(conn.chunks) == 48


async def test_input_get_never_receives() -> None:
    conn = FakeConnection()

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        assert environ["wsgi.input"].read() == b""
        assert environ["wsgi.input"].readline() == b""
        start_response("200 OK", [])
        return []

    await call(app, conn=conn)
    assert conn.receive_calls == 0


@pytest.mark.parametrize(
    "length",
    [
        [("CONTENT_LENGTH", "")],  # nginx, `fastcgi_request_buffering off`
        [],  # Apache mod_proxy_fcgi streaming a chunked upload it did not prefetch whole
    ],
)
async def test_input_without_content_length_is_the_whole_stream(
    length: list[tuple[str, str]],
) -> None:
    # FastCGI: with no CONTENT_LENGTH the body is the STDIN stream, to its end.
    got: list[Any] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        got.append("CONTENT_LENGTH" in environ)
        got.append("HTTP_TRANSFER_ENCODING" in environ)
        got.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return []

    params = [
        (k.encode(), v.encode())
        for k, v in [
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/up"),
            *length,
            ("CONTENT_TYPE", "application/octet-stream"),
            ("HTTP_TRANSFER_ENCODING", "chunked"),
        ]
    ]
    scope = http_scope(params, root_path="", state=None, wire="fastcgi")
    await call(app, scope, FakeConnection([b"hello ", b"chunked ", b"world"]))
    assert got == [False, False, b"hello chunked world"]


async def test_input_client_gone_while_reading() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            start_response("400 Bad Request", [])
            return [str(exc).encode()]
        raise AssertionError("read() returned")

    # CONTENT_LENGTH 100, then the connection reports a disconnect.
    conn = FakeConnection([b"partial"])
    conn.chunks.append(b"")
    fake = conn.receive

    async def receive() -> dict[str, Any]:
        message = await fake()
        if message["type"] == "http.request" and not message["body"]:
            return {"type": "http.disconnect"}
        message["more_body"] = True
        return message

    conn.receive = receive  # type: ignore[method-assign]
    await call(app, post_scope(100), conn)
    assert conn.status == 400
    assert b"went away" in conn.body


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
