"""sd_notify: datagrams received on a unix socket the test owns, in-process and from the CLI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from notify_helper import expect_notification

from trioscgi._daemon import notify as _notify
from trioscgi._daemon.notify import notify, ready, stopping, watchdog_interval, watchdog_loop

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(f"/tmp/tsn-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def systemd(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The datagram socket systemd would own, named by NOTIFY_SOCKET."""
    path = str(sockdir / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield s
    finally:
        s.close()


def received(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_states_go_as_one_datagram(systemd: socket.socket) -> None:
    assert notify("READY=1", "STATUS=listening on 127.0.0.1:4000") is True
    assert notify("STOPPING=1") is True
    assert received(systemd) == ["READY=1\nSTATUS=listening on 127.0.0.1:4000", "STOPPING=1"]


def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"trioscgi-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert received(s) == ["READY=1"]


def test_gone_manager_is_not_fatal(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "nobody"))
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    # For another process (inherited from a parent that was the main PID).
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "", "-5", "abc"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_interval() is None


async def test_watchdog_loop_pings_at_half_the_period(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    with trio.move_on_after(10.5):
        await watchdog_loop()
    # Pings at t = 0, 1, ..., 10.
    assert received(systemd) == ["WATCHDOG=1"] * 11


async def test_watchdog_loop_returns_without_watchdog(systemd: socket.socket) -> None:
    with trio.fail_after(1):
        await watchdog_loop()
    assert received(systemd) == []


async def test_ready_starts_watchdog_and_stopping(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    ready(["127.0.0.1:4000", "unix:/run/a.sock"])
    await trio.sleep(1.25)
    stopping()
    assert received(systemd) == [
        "READY=1\nSTATUS=listening on 127.0.0.1:4000, unix:/run/a.sock",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping: finishing requests in flight",
    ]


def test_ready_outside_trio_does_not_start_a_task(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    ready(["x"])
    assert received(systemd) == ["READY=1\nSTATUS=listening on x"]


def test_cached_socket_is_reused(systemd: socket.socket) -> None:
    notify("STATUS=a")
    first = _notify._sock
    notify("STATUS=b")
    assert first is not None and _notify._sock is first
    assert received(systemd) == ["STATUS=a", "STATUS=b"]


# --------------------------------------------------------------------------- the CLI


def _scgi_get(addr: tuple[str, int]) -> bytes:
    env = {
        "CONTENT_LENGTH": "0",
        "SCGI": "1",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
    }
    headers = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in env.items())
    with socket.create_connection(addr, timeout=10) as c:
        c.sendall(b"%d:%s," % (len(headers), headers))
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    return data


def _recv_until(s: socket.socket, want: str, deadline: float) -> list[str]:
    """Datagrams up to and including the first one containing ``want``."""
    out: list[str] = []
    expect_notification(s, want, out, timeout=deadline - time.monotonic())
    return out


def test_cli_ready_watchdog_stopping(sockdir: Path) -> None:
    path = str(sockdir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd_sock:
        systemd_sock.bind(path)
        env = dict(os.environ)
        env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000", PYTHONPATH=str(REPO))
        env.pop("WATCHDOG_PID", None)
        args = ["--app-dir", str(REPO / "examples"), "--bind", "127.0.0.1:0", "hello:app"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioscgi", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            first = _recv_until(systemd_sock, "READY=1", deadline)
            m = re.search(r"STATUS=listening on 127\.0\.0\.1:(\d+)", first[-1])
            assert m, first
            # READY=1 means it really serves.
            assert _scgi_get(("127.0.0.1", int(m.group(1)))).startswith(b"Status: 200 OK\r\n")
            # WATCHDOG_USEC=0.2 s: pings every 0.1 s.
            pings = _recv_until(systemd_sock, "WATCHDOG=1", deadline)
            pings += _recv_until(systemd_sock, "WATCHDOG=1", deadline)
            assert pings.count("WATCHDOG=1") >= 2
            proc.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in _recv_until(systemd_sock, "STOPPING=1", deadline)[-1]
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
