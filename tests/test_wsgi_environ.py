"""The WSGI environ and its streams (``trioscgi._apps.wsgi_environ``).

Mostly through the adapter (wsgi_harness.py), as an application sees the environ and
reads ``wsgi.input`` (which pulls the body with ``trio.from_thread``, so it needs the
adapter's thread); ``build_environ`` and the streams alone where that is all there is
to it. The adapter itself (start_response, the response, close(), the thread limit,
wsgi.file_wrapper's sendfile): test_wsgi.py.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
import trio
from wsgi_harness import (
    FakeConnection,
    StartResponse,
    call,
    make_scope,
    nginx_environ,
)

from trioscgi import Config
from trioscgi._apps.wsgi_environ import ErrorStream, FileWrapper, InputStream, build_environ
from trioscgi._asgi.scope import http_scope

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


async def test_input_refuses_a_message_that_is_not_the_body() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.response.start"}

    stream = InputStream(receive, at_eof=False)
    with pytest.raises(RuntimeError, match=r"unexpected message 'http\.response\.start'"):
        await trio.to_thread.run_sync(stream.read)


async def test_input_known_empty_never_receives() -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("an empty body is known at the head")

    stream = InputStream(receive, at_eof=True)
    assert await trio.to_thread.run_sync(stream.read) == b""


# --- CONTENT_TYPE: nginx sends it twice -----------------------------------------------------


@pytest.mark.parametrize("fastcgi", [False, True])
@pytest.mark.parametrize(
    ("sent", "content_type"),
    [
        # nginx's stock scgi_params / fastcgi_params: the header under both names.
        ([("CONTENT_TYPE", "text/x"), ("HTTP_CONTENT_TYPE", "text/x")], "text/x"),
        # No *_params: nginx passes the header as HTTP_CONTENT_TYPE alone.
        ([("HTTP_CONTENT_TYPE", "text/x")], "text/x"),
        # The params' CONTENT_TYPE empty, the header there.
        ([("CONTENT_TYPE", ""), ("HTTP_CONTENT_TYPE", "text/x")], "text/x"),
        # Both, different: the CGI variable the operator configured wins.
        ([("CONTENT_TYPE", "text/cgi"), ("HTTP_CONTENT_TYPE", "text/x")], "text/cgi"),
        # Neither, or empty (nginx on a GET): absent, per CGI.
        ([("CONTENT_TYPE", "")], None),
        ([], None),
    ],
)
def test_content_type_has_only_its_cgi_name(
    sent: list[tuple[str, str]], content_type: str | None, fastcgi: bool
) -> None:
    params = [
        (b"CONTENT_LENGTH", b"0"),
        (b"REQUEST_METHOD", b"POST"),
        (b"REQUEST_URI", b"/up"),
        *[(k.encode(), v.encode()) for k, v in sent],
    ]
    scope = http_scope(params, root_path="", state=None, wire="fastcgi" if fastcgi else "scgi")
    environ = build_environ(scope, io.BytesIO(), ErrorStream(), False)
    assert environ.get("CONTENT_TYPE") == content_type
    assert "HTTP_CONTENT_TYPE" not in environ  # wsgiref.validate refuses it


# --- wsgi.errors and wsgi.file_wrapper alone ------------------------------------------------


def test_errors_flush_logs_the_unfinished_line(caplog: pytest.LogCaptureFixture) -> None:
    stream = ErrorStream()
    assert stream.write("no newline yet") == len("no newline yet")
    assert [r.name for r in caplog.records] == []
    stream.flush()
    stream.flush()  # nothing left: no empty record
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [("trioscgi.wsgi", "WARNING", "no newline yet")]


def test_file_wrapper_iterates_in_blocks_and_closes_the_file() -> None:
    f = io.BytesIO(b"abcdefg")
    wrapper = FileWrapper(f, blksize=3)
    assert list(wrapper) == [b"abc", b"def", b"g"]
    wrapper.close()
    assert f.closed
