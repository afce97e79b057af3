"""sd_notify(3) without a dependency: READY/STATUS/STOPPING/WATCHDOG datagrams to systemd."""

from __future__ import annotations

import logging
import os
import socket

import trio

__all__ = ["notify", "ready", "stopping", "watchdog_interval", "watchdog_loop"]

log = logging.getLogger("trioscgi")

# One unconnected datagram socket for the life of the process: a notification
# is one sendto(), with the address read from the environment each time (so a
# supervisor can drop NOTIFY_SOCKET in its workers without touching ours).
_sock: socket.socket | None = None


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    # sd_notify(3): "@" at the start means the abstract namespace.
    if addr.startswith("@"):
        return "\0" + addr[1:]
    return addr


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=..."``...) as one datagram to systemd.

    Returns:
        True when sent; False when NOTIFY_SOCKET is unset (not under systemd,
        or not ``Type=notify``) or the send failed (logged at DEBUG: the
        service must keep running even if systemd is gone).
    """
    global _sock
    addr = _address()
    if addr is None or not states:
        return False
    if addr[0] not in "/\0":
        # vsock:/ and other forms systemd may use: not supported here.
        log.debug("NOTIFY_SOCKET %r is not a unix socket path; not notifying", addr)
        return False
    data = "\n".join(states).encode()
    try:
        if _sock is None:
            _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Small datagrams to a local socket: sendto() does not block for long;
        # MSG_DONTWAIT keeps a stuck manager from stalling the event loop.
        _sock.sendto(data, socket.MSG_DONTWAIT, addr)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", states, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is asked for.

    systemd sets WATCHDOG_USEC (``WatchdogSec=``) and WATCHDOG_PID; sd_watchdog_enabled(3)
    ignores the variables when WATCHDOG_PID names another process. We ping at
    half the period, as the man page recommends.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


async def watchdog_loop() -> None:
    """Ping ``WATCHDOG=1`` every :func:`watchdog_interval` seconds, forever.

    Returns at once when no watchdog is configured. Being a trio task, a ping
    also proves the event loop still runs.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)


def ready(bound: list[str]) -> None:
    """``on_ready`` callback of ``run()``: READY=1 with a STATUS line; starts the watchdog.

    Called from inside trio: the watchdog pings run as a system task, which
    trio cancels when the run ends.
    """
    notify("READY=1", f"STATUS=listening on {', '.join(bound)}")
    if watchdog_interval() is not None:
        try:
            trio.lowlevel.spawn_system_task(watchdog_loop, name="trioscgi.watchdog")
        except RuntimeError:  # not inside trio: the caller pings itself
            pass


def stopping() -> None:
    """``on_stopping`` callback of ``run()``: STOPPING=1."""
    notify("STOPPING=1", "STATUS=stopping: finishing requests in flight")
