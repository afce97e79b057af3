"""The wire layers' socket primitives: every loop yields, write_timeout bounds each wait."""

from __future__ import annotations

import socket

import pytest
import trio

from trioscgi._wire.sockio import _YIELD_EVERY, RECV_SIZE, ClientDisconnected, SocketIO


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback with big buffers (non-blocking, ours first)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    for s in (ours, peer):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    return ours, peer


def prefill(sender: socket.socket, at_most: int) -> int:
    """Write into ``sender`` until the kernel takes no more (or ``at_most``)."""
    sent = 0
    chunk = b"z" * RECV_SIZE
    while sent < at_most:
        try:
            sent += sender.send(chunk)
        except BlockingIOError:
            break
    return sent


async def test_reads_that_never_block_still_let_other_tasks_run() -> None:
    ours, peer = tcp_pair()
    with ours, peer:
        queued = prefill(peer, 8 << 20)
        # Enough that reading it all takes many more recv() calls than the yield interval.
        assert queued >= 4 * _YIELD_EVERY * RECV_SIZE, queued
        io = SocketIO(ours, write_timeout=10)
        other_ran = False
        reads = 0

        async def other() -> None:
            nonlocal other_ran
            other_ran = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            while not other_ran:
                await io.recv(10)
                reads += 1
        # A yield lets the other task run in the next batch; trio may run us first
        # in that batch, so allow two intervals (without the yields: every queued byte).
        assert reads <= 2 * _YIELD_EVERY


async def test_a_deadline_fires_while_the_peer_keeps_data_flowing() -> None:
    ours, peer = tcp_pair()
    with ours, peer:
        assert prefill(peer, 8 << 20) >= 4 * _YIELD_EVERY * RECV_SIZE
        io = SocketIO(ours, write_timeout=10)
        consumed = 0
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.lowlevel.checkpoint)  # only to be scheduled once
                scope.cancel()  # cancelled from the start: the first recv must not read
                consumed += len(await io.recv(10))
        assert scope.cancelled_caught
        assert consumed == 0


async def test_writes_that_never_block_still_let_other_tasks_run() -> None:
    ours, peer = tcp_pair()
    with ours, peer:
        io = SocketIO(ours, write_timeout=10)
        other_ran = False
        writes = 0

        async def other() -> None:
            nonlocal other_ran
            other_ran = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            while not other_ran:
                await io.sendall(b"w" * 1000)
                writes += 1
        assert writes <= 2 * _YIELD_EVERY


async def test_write_timeout_is_per_wait(autojump_clock: object) -> None:
    ours, peer = tcp_pair()
    with ours, peer:
        io = SocketIO(ours, write_timeout=2)
        total = 32 << 20  # far more than both socket buffers
        got = 0

        async def slow_reader() -> None:
            nonlocal got
            while got < total:
                try:
                    got += len(peer.recv(1 << 20))
                except BlockingIOError:
                    pass
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_reader)
            start = trio.current_time()
            await io.sendall(b"s" * total)
            assert trio.current_time() - start > 2 * 2
        assert got == total


async def test_write_timeout_when_the_peer_stops_reading(autojump_clock: object) -> None:
    ours, peer = tcp_pair()
    with ours, peer:
        io = SocketIO(ours, write_timeout=3)
        start = trio.current_time()
        with pytest.raises(ClientDisconnected, match="write_timeout"):
            await io.sendall(b"s" * (64 << 20))
        assert trio.current_time() - start == pytest.approx(3)


async def test_a_write_waiting_when_the_socket_is_closed_under_it_says_disconnected(
    autojump_clock: object,
) -> None:
    # The FastCGI wire layer ends a connection by waking whoever waits on its socket
    # (trio.lowlevel.notify_closing): a stuck writer must learn it as the client gone,
    # the exception the ASGI cycle expects, not as trio's ClosedResourceError.
    ours, peer = tcp_pair()
    with ours, peer:
        io = SocketIO(ours, write_timeout=30)

        async def close_soon() -> None:
            await trio.sleep(1)
            trio.lowlevel.notify_closing(ours)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            start = trio.current_time()
            with pytest.raises(ClientDisconnected, match="closing"):
                await io.sendall(b"s" * (64 << 20))
            assert trio.current_time() - start == pytest.approx(1)
