"""Send part of a file to a non-blocking socket under trio, with os.sendfile where it works.

Used for the ASGI ``http.response.pathsend`` / ``http.response.zerocopysend``
extensions and for WSGI's ``wsgi.file_wrapper``.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import stat

import trio

# Errors that mean "sendfile can't do this pair of descriptors" rather than
# "the peer is gone": the kernel refuses some file types (EINVAL), some
# platforms lack the call (ENOSYS), and some socket families refuse it.
_SENDFILE_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EAFNOSUPPORT}
)

# One fallback read: large enough to amortise the syscalls, small enough not
# to hold much memory per connection.
_CHUNK = 256 * 1024

# Yield to other tasks after this many bytes sent without ever blocking: a
# fast reader must not let one big file starve every other connection.
_FAIRNESS_BYTES = 4 * 1024 * 1024

_HAVE_SENDFILE = hasattr(os, "sendfile")


async def sendfile(
    sock: socket.socket, fd: int, offset: int, count: int, *, patience: float = math.inf
) -> int:
    """Send ``count`` bytes of the file ``fd`` starting at ``offset`` to ``sock``.

    The socket must be a non-blocking stdlib socket: the syscall is tried
    first, and the task waits with :func:`trio.lowlevel.wait_writable` only
    when the socket buffer is full. Uses :func:`os.sendfile` when the kernel
    can, else ``os.pread`` + ``sock.send``. The file's own offset is not moved.

    Args:
        sock: the connected, non-blocking socket.
        fd: a readable file descriptor (a regular file for sendfile; anything
            readable for the fallback).
        offset: where to start in the file.
        count: how many bytes to send at most.
        patience: the longest wait for the socket to become writable (a front-end
            that stopped reading); the whole transfer may take longer.

    Returns:
        The number of bytes sent: ``count``, or fewer if the file ended first.

    Raises:
        OSError: the peer is gone (``BrokenPipeError``, ``ConnectionResetError``...),
            stopped reading for ``patience`` seconds (``TimeoutError``), or the file
            can't be read.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    if count < 0 or offset < 0:
        raise ValueError("offset and count must not be negative")
    use_sendfile = _HAVE_SENDFILE and stat.S_ISREG(os.fstat(fd).st_mode)
    sent = 0
    since_yield = 0
    waited = False
    while sent < count:
        if since_yield >= _FAIRNESS_BYTES:
            await trio.lowlevel.checkpoint()
            since_yield = 0
            waited = True
        if use_sendfile:
            try:
                n = os.sendfile(sock.fileno(), fd, offset + sent, count - sent)
            except BlockingIOError:
                await _wait_writable(sock, patience)
                since_yield = 0
                waited = True
                continue
            except OSError as exc:
                if exc.errno not in _SENDFILE_UNSUPPORTED:
                    raise
                use_sendfile = False
                continue
            if n == 0:  # the file ended before count
                break
            sent += n
            since_yield += n
            continue
        data = read_piece(fd, offset + sent, min(_CHUNK, count - sent))
        if not data:
            break
        view = memoryview(data)
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                await _wait_writable(sock, patience)
                since_yield = 0
                waited = True
                continue
            view = view[n:]
            sent += n
            since_yield += n
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return sent


async def _wait_writable(sock: socket.socket, patience: float) -> None:
    with trio.move_on_after(patience):
        await trio.lowlevel.wait_writable(sock)
        return
    raise TimeoutError(f"the peer did not read for {patience:g} s")


def read_piece(fd: int, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``fd`` at ``offset``, or from where it is if it has none."""
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        # A pipe or a character device has no offset: read from where it is.
        if exc.errno != errno.ESPIPE:
            raise
        return os.read(fd, size)
