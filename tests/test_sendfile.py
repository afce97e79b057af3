"""Tests of trioscgi._sendfile on real socketpairs and real files."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trioscgi import _sendfile
from trioscgi._sendfile import sendfile


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
