"""Socket activation of the real ``python -m trioscgi`` by the real ``systemd-socket-activate``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_helper import expect_notification

REPO = Path(__file__).resolve().parent.parent


def _tool() -> str:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-socket-activate is missing (apt-get install systemd)")
        pytest.skip("systemd-socket-activate not installed (Debian package systemd)")
    return tool


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(f"/tmp/tsd-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scgi_get(addr: str | tuple[str, int], uri: str = "/") -> bytes:
    env = {
        "CONTENT_LENGTH": "0",
        "SCGI": "1",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": uri,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
    }
    headers = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in env.items())
    family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    with socket.socket(family) as c:
        c.settimeout(30)
        c.connect(addr)
        c.sendall(b"%d:%s," % (len(headers), headers))
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    return data


HELLO = b"Status: 200 OK\r\n"


class Activated:
    """systemd-socket-activate running trioscgi, with a notify socket we own."""

    def __init__(self, workdir: Path, listen: list[str], fdnames: str | None, *args: str) -> None:
        self.notify_path = str(workdir / f"notify-{time.monotonic_ns()}")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        cmd = [_tool()]
        for addr in listen:
            cmd += ["-l", addr]
        if fdnames is not None:
            cmd.append(f"--fdname={fdnames}")
        cmd += ["-E", f"NOTIFY_SOCKET={self.notify_path}", "-E", f"PYTHONPATH={REPO}"]
        cmd += [sys.executable, "-m", "trioscgi", "--app-dir", str(REPO / "examples"), *args]
        cmd.append("hello:app")
        self.log = workdir / f"log-{time.monotonic_ns()}"
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        self.messages: list[str] = []
        # The tool logs "Listening on ADDR as N." before it waits for a client.
        deadline = time.monotonic() + 30
        while self.log.read_text().count("Listening on") < len(listen):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.01)  # polling the tool's log

    def expect(self, state: str, timeout: float = 30) -> str:
        return expect_notification(
            self.notify, state, self.messages, timeout=timeout, context=self.log.read_text
        )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


@pytest.fixture
def activate(workdir: Path) -> Iterator[object]:
    made: list[Activated] = []

    def activate(listen: list[str], fdnames: str | None, *args: str) -> Activated:
        a = Activated(workdir, listen, fdnames, *args)
        made.append(a)
        return a

    yield activate
    for a in made:
        a.close()


def test_one_named_socket(activate: object) -> None:
    assert callable(activate)
    port = _free_port()
    a: Activated = activate([f"127.0.0.1:{port}"], "web", "--bind", "systemd:web")
    # The first connection makes the tool exec trioscgi (same pid), which
    # finds the queued connection on the inherited socket and serves it.
    assert scgi_get(("127.0.0.1", port)).startswith(HELLO)
    assert a.expect("READY=1") == "READY=1\nSTATUS=listening on systemd:web"
    assert scgi_get(("127.0.0.1", port)).startswith(HELLO)
    assert a.stop() == 0
    assert "STOPPING=1" in a.expect("STOPPING=1")


def test_several_named_sockets(activate: object, workdir: Path) -> None:
    assert callable(activate)
    port = _free_port()
    path = str(workdir / "adm.sock")
    a: Activated = activate(
        [f"127.0.0.1:{port}", path], "web:adm", "--bind", "systemd:adm", "--bind", "systemd:web"
    )
    assert scgi_get(("127.0.0.1", port)).startswith(HELLO)
    assert a.expect("READY=1") == "READY=1\nSTATUS=listening on systemd:adm, systemd:web"
    assert scgi_get(path).startswith(HELLO)
    assert a.stop() == 0
    # The socket file belongs to systemd (the .socket unit): we leave it.
    assert os.path.exists(path)


def test_every_socket_with_workers(activate: object, workdir: Path) -> None:
    assert callable(activate)
    port = _free_port()
    path = str(workdir / "app.sock")
    a: Activated = activate(
        [f"127.0.0.1:{port}", path], None, "--bind", "systemd", "--workers", "2"
    )
    assert scgi_get(path).startswith(HELLO)
    ready = a.expect("READY=1")
    assert "STATUS=2 workers serving on systemd:unknown, systemd:unknown" in ready
    for _ in range(20):
        assert scgi_get(("127.0.0.1", port)).startswith(HELLO)
    pid = a.proc.pid
    assert len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()) == 2
    assert a.stop() == 0
    assert "STOPPING=1" in a.expect("STOPPING=1")
    # Only the supervisor (the main PID) notified: NotifyAccess=main suffices.
    assert sum("READY=1" in m for m in a.messages) == 1


def test_wrong_name_is_a_clear_error(activate: object) -> None:
    assert callable(activate)
    port = _free_port()
    a: Activated = activate([f"127.0.0.1:{port}"], "web", "--bind", "systemd:admin")
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        assert a.proc.wait(timeout=60) == 1
    assert "systemd passed no socket named it (has: web)" in a.log.read_text()
