"""The uwsgi wire through a real in-process server: ``protocol = "uwsgi"`` and the sniff.

The wire is the one SCGI uses (``_wire.oneshot``), so what is the same (streaming,
disconnects, timeouts, pathsend) is held by the conformance suite on the ``uwsgi`` paths;
here is what is uwsgi's own: the packet in, the HTTP/1.1 status line out, the
first-byte sniff, the head's errors (501 for another modifier), and the limits.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import fcgi_client as fc
import pytest
import trio
from scgi_client import connect, encode_request, environ, exchange, parse_response, serving
from uwsgi_client import encode_packet, stock_vars


@pytest.fixture
def bind(tmp_path: Path) -> str:
    return f"unix:{tmp_path}/s.sock"


async def where(scope: Any, receive: Any, send: Any) -> None:
    """Answers where the request went, and its body's length."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    text = f"{scope['root_path']}|{scope['path']}|{scope['query_string'].decode()}|{len(body)}"
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"text/plain"), (b"x-wire", b"yes")],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("protocol", ["uwsgi", "auto"])
async def test_stock_get_gets_an_http_status_line(
    bind: str, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(where, bind, protocol=protocol) as srv:
        data = await exchange(srv.address, encode_packet(stock_vars("GET", "/a%20b/c?x=1")))
    # nginx's uwsgi module and Apache mod_proxy_uwsgi read an HTTP status line.
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n"), data[:60]
    r = parse_response(data)
    assert r.header("x-wire") == "yes"
    assert r.body == b"|/a b/c|x=1|0"
    no_errors(caplog)


@pytest.mark.parametrize("modifier1", [0, 30])
async def test_prefix_with_either_modifier(bind: str, modifier1: int) -> None:
    pairs = [*stock_vars("POST", "/app/form", content_length="5"), ("SCRIPT_NAME", "/app")]
    async with serving(where, bind) as srv:
        data = await exchange(srv.address, encode_packet(pairs, b"hello", modifier1=modifier1))
    assert parse_response(data).body == b"/app|/app/form||5"


async def test_body_in_pieces_after_pauses(bind: str, autojump_clock: Any) -> None:
    body = bytes(range(256)) * 800
    packet = encode_packet(stock_vars("PUT", "/up", content_length=str(len(body))), body)
    async with serving(where, bind) as srv, await connect(srv.address) as s:
        for i in range(0, len(packet), 7000):
            await s.send_all(packet[i : i + 7000])
            await trio.sleep(0.5)
        chunks = []
        while chunk := await s.receive_some(65536):
            chunks.append(chunk)
    assert parse_response(b"".join(chunks)).body == b"|/up||%d" % len(body)


async def test_one_socket_answers_scgi_fastcgi_and_uwsgi(bind: str) -> None:
    async with serving(where, bind, protocol="auto") as srv:
        u = await exchange(srv.address, encode_packet(stock_vars("GET", "/u")))
        s = await exchange(srv.address, encode_request(environ("GET", "/s")))
        fcgi = fc.begin(1) + fc.params(1, environ("GET", "/f")) + fc.stdin(1, b"")
        f = await exchange(srv.address, fcgi)
    assert u.startswith(b"HTTP/1.1 404 ")
    assert parse_response(u).body == b"|/u||0"
    assert s.startswith(b"Status: 404 ")
    assert parse_response(s).body == b"|/s||0"
    assert b"Status: 404 " in f and b"|/f||0" in f


@pytest.mark.parametrize(
    ("protocol", "answer"),
    [
        # The uwsgi core refuses a management packet (modifier1 72: uWSGI's ping...).
        ("uwsgi", b"HTTP/1.1 501 Not Implemented\r\n"),
        # Under "auto" the first byte is neither 0, 30, 1 nor a digit: SCGI's parser says 400.
        ("auto", b"Status: 400 Bad Request\r\n"),
    ],
)
async def test_other_modifiers_are_refused(
    bind: str, protocol: str, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    packet = struct.pack("<BHB", 72, 0, 0)
    async with serving(where, bind, protocol=protocol) as srv:
        data = await exchange(srv.address, packet)
    assert data.startswith(answer), data[:60]
    no_errors(caplog)


async def test_vars_over_max_header_size_is_431(bind: str) -> None:
    pairs = [*stock_vars("GET", "/"), ("HTTP_COOKIE", "x" * 3000)]
    async with serving(where, bind, protocol="uwsgi", max_header_size=2048) as srv:
        data = await exchange(srv.address, encode_packet(pairs))
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), data[:60]


async def test_body_over_max_body_size_is_413(bind: str) -> None:
    packet = encode_packet(stock_vars("POST", "/", content_length="100"), b"x" * 100)
    async with serving(where, bind, protocol="uwsgi", max_body_size=99) as srv:
        data = await exchange(srv.address, packet)
    assert data.startswith(b"HTTP/1.1 413 "), data[:60]


async def test_header_timeout_is_408(bind: str, autojump_clock: Any) -> None:
    packet = encode_packet(stock_vars("GET", "/"))
    server = serving(where, bind, protocol="uwsgi", header_timeout=5)
    async with server as srv, await connect(srv.address) as s:
        await s.send_all(packet[:20])  # the header and part of the vars
        start = trio.current_time()
        data = await s.receive_some(65536)
        waited = trio.current_time() - start
    assert data.startswith(b"HTTP/1.1 408 "), data[:60]
    assert waited == pytest.approx(5)


async def test_client_gone_mid_body_is_a_disconnect(bind: str, autojump_clock: Any) -> None:
    got: list[dict[str, Any]] = []
    done = trio.Event()

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        try:
            while True:
                message = await receive()
                got.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return
        finally:
            done.set()

    packet = encode_packet(stock_vars("POST", "/", content_length="1000"), b"x" * 10)
    async with serving(reader, bind, protocol="uwsgi") as srv:
        async with await connect(srv.address) as s:
            await s.send_all(packet)
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.01)
        with trio.fail_after(5):
            await done.wait()
    assert got[0] == {"type": "http.request", "body": b"x" * 10, "more_body": True}
    assert got[-1] == {"type": "http.disconnect"}


async def test_pathsend(bind: str, tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"0123456789" * 5000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        size = str(path.stat().st_size).encode()
        headers = [(b"content-length", size)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    async with serving(app, bind, protocol="uwsgi") as srv:
        data = await exchange(srv.address, encode_packet(stock_vars("GET", "/f")))
    r = parse_response(data)
    assert (r.status, r.body) == (200, path.read_bytes())
