"""Tests of trioscgi._wire.sendfile on real socketpairs and real files."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from scgi_client import connect, serving

from trioscgi._wire import sendfile as _sendfile
from trioscgi._wire.sendfile import sendfile


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    # A small send buffer makes the kernel refuse data early: partial sends
    # and EAGAIN happen with a few hundred KiB instead of many MiB.
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def make_file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


async def read_all(
    sock: socket.socket, limit: int, chunk: int = 65536, pause: bool = False
) -> bytes:
    """Read until EOF (or ``limit`` bytes), optionally pausing between reads (a slow reader)."""
    out = bytearray()
    while len(out) < limit:
        try:
            data = sock.recv(chunk)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if not data:
            break
        out += data
        if pause:
            await trio.sleep(0.001)
    return bytes(out)


async def send_and_read(  # noqa: PLR0917
    sock: socket.socket,
    peer: socket.socket,
    fd: int,
    offset: int,
    count: int,
    expect: int,
    **read_kw: object,
) -> tuple[int, bytes]:
    result: list[int] = []
    received: list[bytes] = []

    async def reader() -> None:
        received.append(await read_all(peer, expect, **read_kw))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        result.append(await sendfile(sock, fd, offset, count))
    return result[0], received[0]


async def test_whole_small_file(pair: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 1000)
    with open(path, "rb") as f:
        n, got = await send_and_read(*pair, f.fileno(), 0, len(data), len(data))
    assert n == len(data)
    assert got == data


async def test_large_file_slow_reader_partial_sends(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    size = 3 * 1024 * 1024 + 17
    path, data = make_file(tmp_path, size)
    with open(path, "rb") as f:
        n, got = await send_and_read(*pair, f.fileno(), 0, size, size, chunk=7000, pause=True)
    assert n == size
    assert got == data


async def test_offset_and_count(pair: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 100_000)
    with open(path, "rb") as f:
        f.seek(5)
        n, got = await send_and_read(*pair, f.fileno(), 1234, 50_000, 50_000)
        # The file's own position is untouched (sendfile with an offset, pread).
        assert f.tell() == 5
    assert n == 50_000
    assert got == data[1234 : 1234 + 50_000]


async def test_file_ends_before_count(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    path, data = make_file(tmp_path, 10_000)
    with open(path, "rb") as f:
        n, got = await send_and_read(*pair, f.fileno(), 9_000, 5_000, 1_000)
    assert n == 1_000
    assert got == data[9_000:]


async def test_zero_count_checkpoints(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    path, _ = make_file(tmp_path, 10)
    with open(path, "rb") as f:
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await sendfile(pair[0], f.fileno(), 0, 0)
        assert await sendfile(pair[0], f.fileno(), 0, 0) == 0


async def test_peer_gone_raises_oserror(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    sock, peer = pair
    path, _ = make_file(tmp_path, 1024 * 1024)
    peer.close()
    with open(path, "rb") as f, pytest.raises(OSError) as info:
        await sendfile(sock, f.fileno(), 0, 1024 * 1024)
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)


async def test_peer_gone_midway_raises(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    sock, peer = pair
    size = 2 * 1024 * 1024
    path, data = make_file(tmp_path, size)

    async def reader_that_quits() -> None:
        got = await read_all(peer, 50_000, chunk=10_000)
        assert got == data[: len(got)]
        peer.close()

    with open(path, "rb") as f:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader_that_quits)
            with pytest.raises(OSError):
                await sendfile(sock, f.fileno(), 0, size)


async def test_non_regular_file_uses_read_send(pair: tuple[socket.socket, socket.socket]) -> None:
    # A pipe: not a regular file (sendfile's in_fd must be mmap-able), and
    # pread fails with ESPIPE, so the fallback reads from where it is.
    r, w = os.pipe()
    try:
        os.write(w, b"x" * 3000)
        os.close(w)
        w = -1
        n, got = await send_and_read(*pair, r, 0, 5000, 3000)
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    assert n == 3000
    assert got == b"x" * 3000


async def test_sendfile_refused_falls_back(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate a kernel that refuses sendfile for this pair (EINVAL, as Linux
    # does for some file systems): the read/send fallback takes over.
    calls = []

    def refusing_sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refusing_sendfile)
    size = 600_000
    path, data = make_file(tmp_path, size)
    with open(path, "rb") as f:
        n, got = await send_and_read(*pair, f.fileno(), 0, size, size)
    assert calls == [size]
    assert n == size
    assert got == data


async def test_other_sendfile_error_propagates(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "sendfile", failing_sendfile)
    path, _ = make_file(tmp_path, 100)
    with open(path, "rb") as f, pytest.raises(OSError) as info:
        await sendfile(pair[0], f.fileno(), 0, 100)
    assert info.value.errno == errno.EIO


async def test_fairness_yields_on_fast_reader(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a small fairness threshold, other tasks run while a big file is sent
    # even if the socket never blocks.
    monkeypatch.setattr(_sendfile, "_FAIRNESS_BYTES", 4096)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    size = 200_000
    path, data = make_file(tmp_path, size)
    with open(path, "rb") as f:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            n, got = await send_and_read(*pair, f.fileno(), 0, size, size)
            nursery.cancel_scope.cancel()
    assert n == size and got == data
    assert ticks > 2


async def test_negative_arguments(pair: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(ValueError):
        await sendfile(pair[0], 0, -1, 10)


async def test_stalled_reader_times_out(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    # The peer never reads: the socket buffer fills and stays full.
    path, _ = make_file(tmp_path, 4 * 1024 * 1024)
    with open(path, "rb") as f, pytest.raises(TimeoutError):
        await sendfile(pair[0], f.fileno(), 0, 4 * 1024 * 1024, patience=30)
    assert trio.current_time() >= 30


# --- the ASGI file extensions in trioscgi._connection ------------------------------------


def scgi_request(uri: str = "/f", body: bytes = b"") -> bytes:
    env = [
        (b"CONTENT_LENGTH", str(len(body)).encode()),
        (b"SCGI", b"1"),
        (b"REQUEST_METHOD", b"GET" if not body else b"POST"),
        (b"REQUEST_URI", uri.encode()),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"SERVER_NAME", b"localhost"),
        (b"SERVER_PORT", b"80"),
    ]
    head = b"".join(k + b"\0" + v + b"\0" for k, v in env)
    return str(len(head)).encode() + b":" + head + b"," + body


async def serve_one(app: Any, request: bytes | None = None, quit_after: int | None = None) -> bytes:
    """Run one trioscgi Connection on a socketpair; return what the front-end side read."""
    from types import SimpleNamespace

    from trioscgi import Config
    from trioscgi._wire.scgi import SCGIConnection

    server_sock, front = socket.socketpair()
    server_sock.setblocking(False)
    front.setblocking(False)
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    server = SimpleNamespace(
        config=Config(),
        app=app,
        state=None,
        access_logger=None,
        metrics=None,
        warn_request=print,
        request_served=lambda: None,
    )
    received: list[bytes] = []
    try:
        front.sendall(request if request is not None else scgi_request())

        async def frontend() -> None:
            received.append(await read_all(front, quit_after or 1 << 40, chunk=100_000))
            if quit_after is not None:
                front.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(frontend)
            await SCGIConnection(server_sock, server).run()
    finally:
        server_sock.close()
        front.close()
    return received[0]


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


async def test_pathsend_sends_the_file(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 1024 * 1024 + 3)
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["extensions"])
        length = str(len(data)).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        await send({"type": "http.response.pathsend", "path": str(path)})

    head, body = split_response(await serve_one(app))
    assert head.startswith(b"Status: 200 OK\r\n")
    assert b"content-length: 1048579" in head
    assert body == data
    assert "http.response.pathsend" in seen[0]
    assert "http.response.zerocopysend" in seen[0]
    assert "scgi" in seen[0]


async def test_zerocopysend_offset_count_and_more_body(tmp_path: Path) -> None:
    path, data = make_file(tmp_path, 300_000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"<", "more_body": True})
        with open(path, "rb") as f:
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": f,
                    "offset": 1000,
                    "count": 200_000,
                    "more_body": True,
                }
            )
            # Without offset: from the file's position, which moves.
            f.seek(250_000)
            await send({"type": "http.response.zerocopysend", "file": f, "more_body": True})
            assert f.tell() == 300_000
        await send({"type": "http.response.body", "body": b">"})

    _, body = split_response(await serve_one(app))
    assert body == b"<" + data[1000:201_000] + data[250_000:] + b">"


async def test_pathsend_missing_file_is_a_500(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(tmp_path / "nope")})

    head, _ = split_response(await serve_one(app))
    assert head.startswith(b"Status: 500")


async def test_pathsend_relative_path_refused(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": "relative/file"})
        except RuntimeError as exc:
            errors.append(exc)
            raise

    head, _ = split_response(await serve_one(app))
    assert head.startswith(b"Status: 500")
    assert "absolute" in str(errors[0])


async def test_pathsend_before_start_refused(tmp_path: Path) -> None:
    path, _ = make_file(tmp_path, 10)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.pathsend", "path": str(path)})

    head, _ = split_response(await serve_one(app))
    assert head.startswith(b"Status: 500")


async def test_pathsend_client_gone_raises_oserror_in_app(tmp_path: Path) -> None:
    path, _ = make_file(tmp_path, 4 * 1024 * 1024)
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": str(path)})
        except OSError as exc:
            errors.append(exc)
            raise

    raw = await serve_one(app, quit_after=100_000)
    assert len(raw) >= 100_000
    assert len(errors) == 1


async def read_until_reset(address: str, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` over TCP, read to the end; return what came and whether it ended in a reset."""
    received = b""
    async with await connect(address) as stream:
        await stream.send_all(data)
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return received, True
            if not chunk:
                return received, False
            received += chunk


@pytest.mark.parametrize("kind", ["zerocopysend", "file-shrunk", "offset-past-end"])
async def test_file_response_cut_short_ends_with_a_reset(tmp_path: Path, kind: str) -> None:
    """A file that can't deliver what was promised must not look complete (TCP: a reset shows)."""
    path, data = make_file(tmp_path, 300_000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # No Content-Length: only the way the connection ends tells a cut from a whole.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if kind == "zerocopysend":
            with open(path, "rb") as f:
                await send({"type": "http.response.zerocopysend", "file": f, "count": 500_000})
        elif kind == "file-shrunk":
            with open(path, "rb") as f:
                os.truncate(path, 1000)  # the file shrinks after the app measured it
                await send({"type": "http.response.zerocopysend", "file": f, "count": 300_000})
        else:
            with open(path, "rb") as f:  # an offset past the end: nothing to read at all
                await send(
                    {
                        "type": "http.response.zerocopysend",
                        "file": f,
                        "offset": 400_000,
                        "count": 10,
                    }
                )

    async with serving(app, "127.0.0.1:0") as srv:
        raw, reset = await read_until_reset(srv.address, scgi_request())
        assert raw.startswith(b"Status: 200 OK\r\n")
        assert reset, "a truncated response ended with a clean EOF"

        # A file sent whole: a clean end, not a reset.
        (tmp_path / "whole").mkdir()
        path, data = make_file(tmp_path / "whole", 300_000)

        async def whole(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.pathsend", "path": str(path)})

    async with serving(whole, "127.0.0.1:0") as srv:
        raw, reset = await read_until_reset(srv.address, scgi_request())
        assert not reset
        assert raw.endswith(data)


async def test_starlette_file_response_uses_pathsend(tmp_path: Path) -> None:
    from starlette.responses import FileResponse

    path, data = make_file(tmp_path, 200_000)
    kinds: list[str] = []
    response = FileResponse(path, media_type="application/octet-stream")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def recording_send(message: Any) -> None:
            kinds.append(message["type"])
            await send(message)

        await response(scope, receive, recording_send)

    head, body = split_response(await serve_one(app))
    assert kinds == ["http.response.start", "http.response.pathsend"]
    assert b"content-length: 200000" in head
    assert body == data


async def test_wsgi_file_wrapper_through_the_connection(tmp_path: Path) -> None:
    from trioscgi import Config
    from trioscgi._apps.wsgi import wrap_wsgi

    path, data = make_file(tmp_path, 500_000)

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        f = open(path, "rb")  # noqa: SIM115 - closed by the server through the wrapper
        f.seek(100)
        start_response("200 OK", [("Content-Length", str(len(data) - 100))])
        return environ["wsgi.file_wrapper"](f)

    head, body = split_response(await serve_one(wrap_wsgi(wsgi_app, Config())))
    assert head.startswith(b"Status: 200 OK")
    assert body == data[100:]
