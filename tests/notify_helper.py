"""Receiving sd_notify datagrams on a socket the test owns, as systemd would."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def expect_notification(
    sock: socket.socket,
    want: str,
    seen: list[str],
    *,
    timeout: float = 30.0,
    context: Callable[[], str] = lambda: "",
) -> str:
    """Read datagrams into ``seen`` until one contains ``want``; return that one.

    Fails after ``timeout`` seconds with what was seen and ``context()`` (a log).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(msg)
        if want in msg:
            return msg
    raise AssertionError(f"no {want!r} within {timeout:g} s; got {seen!r}\n{context()}")
