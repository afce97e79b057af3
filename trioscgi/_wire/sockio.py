"""Socket primitives shared by the wire layers: try the syscall first, wait only if it must.

Working on a non-blocking stdlib socket and waiting with ``trio.lowlevel.wait_readable`` /
``wait_writable`` only on ``BlockingIOError`` is the fastest trio I/O shape measured for
this job: a bare hello loop so answered about 4x the requests per second of the same loop
on ``trio.SocketStream`` behind nginx (12.1k vs 2.8k on two cores). Two rules keep it
honest:

- **Every loop reaches a checkpoint.** A syscall that succeeds does not yield, so a peer
  that keeps data flowing could hold the event loop and no deadline could fire. After
  ``_YIELD_EVERY`` successful calls in a row without a wait, :class:`SocketIO` yields once
  (trio's own ``_try_sync`` yields after every call; once per few calls keeps the hot path,
  which makes two or three calls per request, free of it).
- **``write_timeout`` bounds each wait,** not the whole write: a front-end that reads a
  large body slowly but steadily is never cut off.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_writable,
)

from .._errors import ClientDisconnected, Timeout, WriteTimeout
from .._types import RECV_SIZE, Bytes

if TYPE_CHECKING:
    from .._counters import WorkerMetrics

# The errors and constants are defined in the leaves (_errors, _types) so that the ASGI
# layer needs nothing of this module; they are named here too for the wires' convenience.
__all__ = [
    "COALESCE_LIMIT",
    "RECV_SIZE",
    "Bytes",
    "ClientDisconnected",
    "SocketIO",
    "Timeout",
    "WriteTimeout",
    "body_stalled",
]

# A first body chunk up to this size is copied behind the response head and both go out
# in one send(); a larger one goes out beside it (sendmsg), not copied.
COALESCE_LIMIT = 16384

# Successful syscalls in a row (no wait in between) before one schedule point.
_YIELD_EVERY = 16
# Responses larger than the default socket send buffer (212992 bytes on
# Linux) get a bigger one, up to _MAX_SNDBUF.
_BIG_RESPONSE = 262144
_MAX_SNDBUF = 4 << 20
# SO_LINGER on with a zero timeout: close() sends a reset.
_LINGER_RESET = struct.pack("ii", 1, 0)
# Linux: the bytes in a socket's send queue (SIOCOUTQ, the same number as TIOCOUTQ).
_SIOCOUTQ = termios.TIOCOUTQ


def _unsent(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that the peer has not taken yet (-1: can't tell)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except OSError:
        return -1


def body_stalled(metrics: WorkerMetrics | None, patience: float) -> ClientDisconnected:
    """A request body that sent nothing for ``read_timeout`` (``patience``): counted, and
    the error that ends the request, with the message the log shows."""
    if metrics is not None:
        metrics.timeouts["read"] += 1
    return ClientDisconnected(f"request body stalled for {patience:g} s (read_timeout)")


class SocketIO:
    """A connected non-blocking socket with fair, deadline-friendly reads and writes."""

    __slots__ = ("_unyielded", "sock", "write_timeout")

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self.sock = sock
        self.write_timeout = write_timeout
        self._unyielded = 0

    async def _fair(self) -> None:
        # Called after a syscall that did not wait: yield once every few. The
        # yield is shielded, as in trio's own _try_sync: what the call read or
        # wrote is done and must not be lost to a Cancelled raised here; each
        # call checks for cancellation before it touches the socket instead.
        # (The hot paths below count in line and call _yield only when it is
        # time: a coroutine per successful syscall was measurable.)
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            await self._yield()

    async def _yield(self) -> None:
        self._unyielded = 0
        await cancel_shielded_checkpoint()

    async def recv(self, patience: float, deadline: float | None = None) -> bytes:
        """Read what is there; wait at most ``patience`` s (or until ``deadline``).

        Raises:
            Timeout: nothing arrived in time.
            OSError: the socket failed (reset).
        """
        await checkpoint_if_cancelled()
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            pass
        else:
            self._unyielded += 1
            if self._unyielded >= _YIELD_EVERY:
                await self._yield()
            return data
        with trio.move_on_at(trio.current_time() + patience if deadline is None else deadline):
            return await self.recv_when_readable()
        raise Timeout

    async def recv_unbounded(self) -> bytes:
        """:meth:`recv` with no time limit (the caller's scope bounds it, if anything)."""
        await checkpoint_if_cancelled()
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return await self.recv_when_readable()
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            await self._yield()
        return data

    async def recv_when_readable(self) -> bytes:
        """:meth:`recv_unbounded` for a caller that knows nothing is there yet: wait for
        the socket first rather than try a read that would fail."""
        sock = self.sock
        self._unyielded = 0
        while True:
            await wait_readable(sock)
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue

    async def wait_readable(self) -> None:
        """Wait until a read would not block (data, EOF or an error)."""
        self._unyielded = 0
        await wait_readable(self.sock)

    async def sendall(self, data: Bytes, *, checked: bool = False) -> None:
        """Write all of ``data``; ``checked``: the caller has just checked for
        cancellation, with no schedule point since (the ASGI cycle's send()).

        Raises:
            ClientDisconnected: the peer is gone, or accepted nothing for write_timeout.
        """
        if not checked:
            await checkpoint_if_cancelled()
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ClientDisconnected(f"the client went away: {exc}") from None
        if sent == len(data):
            self._unyielded += 1
            if self._unyielded >= _YIELD_EVERY:
                await self._yield()
            return
        await self._send_rest(memoryview(data)[sent:])

    async def _send_rest(self, view: memoryview) -> None:
        sock = self.sock
        patience = self.write_timeout
        self._unyielded = 0
        while view:
            unsent = _unsent(sock)
            while True:
                with trio.move_on_after(patience) as scope:
                    try:
                        await wait_writable(sock)
                    except trio.ClosedResourceError:
                        # The connection is being closed under us (notify_closing).
                        raise ClientDisconnected("the connection is closing") from None
                if not scope.cancelled_caught:
                    break
                # The kernel calls a socket writable only once much of its
                # buffer is free (a quarter used, for AF_UNIX): a front-end
                # reading steadily but slowly can take longer than that.
                # What counts is whether it read anything in the meantime.
                now = _unsent(sock)
                if now >= unsent:
                    raise WriteTimeout(
                        f"front-end read nothing of the response for {patience:g} s (write_timeout)"
                    )
                unsent = now
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise ClientDisconnected(f"the client went away: {exc}") from None
            view = view[sent:]

    async def send_two(self, first: Bytes, second: Bytes, *, checked: bool = False) -> None:
        """Write ``first`` then ``second`` without copying them together (one sendmsg)."""
        await self.send_many((first, second), checked=checked)

    async def send_many(self, buffers: Sequence[Bytes], *, checked: bool = False) -> None:
        """Write ``buffers`` in order without copying them together (one sendmsg);
        ``checked`` as for :meth:`sendall`."""
        if not checked:
            await checkpoint_if_cancelled()
        total = sum(map(len, buffers))
        if total > _BIG_RESPONSE:
            # A send buffer that holds the whole response lets one sendmsg()
            # hand it to the kernel: fewer wake-ups here and bigger reads for
            # the front-end (docs/benchmarks.md, /big: 1.06x aioscgi without
            # it, 1.56x with it). The kernel caps it at net.core.wmem_max.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(total, _MAX_SNDBUF))
        try:
            sent = self.sock.sendmsg(buffers)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ClientDisconnected(f"the client went away: {exc}") from None
        if sent == total:
            self._unyielded += 1
            if self._unyielded >= _YIELD_EVERY:
                await self._yield()
            return
        for buffer in buffers:
            size = len(buffer)
            if sent >= size:
                sent -= size
                continue
            await self._send_rest(memoryview(buffer)[sent:])
            sent = 0

    def close(self, *, reset: bool = False) -> None:
        """Close the socket; with ``reset``, so that the peer sees a reset, not a clean EOF.

        A response cut short must not look complete: a clean EOF is what
        nginx, reading to EOF when there is no Content-Length, passes on as
        the end of the response. A reset makes it abort its client's response.
        """
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.sock.close()
