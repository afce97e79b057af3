"""The real ``python -m trioscgi`` process: SIGTERM with a request in flight, a second SIGTERM,
and exit code 3 on a lifespan startup failure.

Waits are on the server's own log lines (read from its stderr) and on socket
I/O, each bounded by TIMEOUT: no sleep stands in for an event.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scgi_client import encode_head, environ, open_sync, parse_response, read_all_sync

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0  # an upper bound for a hung child, never a timing assumption

APP = '''
"""Test app: streams "first" once the first body chunk is in, "done" after the rest."""
import os as _os
import time as _time

_gate = _os.environ.get("TESTAPP_GATE")
if _gate:
    # A slow import: wait (bounded) until the test creates the gate file.
    print("importing", flush=True)
    for _ in range(2000):
        if _os.path.exists(_gate):
            break
        _time.sleep(0.01)

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                print("lifespan shutdown", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first\\n", "more_body": True})
    while message.get("more_body"):
        message = await receive()
    await send({"type": "http.response.body", "body": b"done\\n"})


async def slow(scope, receive, send):
    import trio
    await receive()
    print("starting up", flush=True)
    await trio.sleep_forever()


async def failing(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})
'''


class Server:
    """A trioscgi child process and its stderr, read line by line with a deadline."""

    def __init__(self, tmp_path: Path, app: str, *args: str) -> None:
        (tmp_path / "testapp.py").write_text(textwrap.dedent(APP))
        self.address = f"unix:{tmp_path}/s.sock"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        for name in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trioscgi",
                "--app-dir",
                str(tmp_path),
                "--bind",
                self.address,
                "--log-level",
                "info",
                *args,
                f"testapp:{app}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self._out = self.proc.stdout
        os.set_blocking(self._out.fileno(), False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._out, selectors.EVENT_READ)
        self.output = b""

    def wait_for(self, text: str) -> None:
        """Read the child's output until ``text`` appears (or fail after TIMEOUT)."""
        deadline = time.monotonic() + TIMEOUT
        while text.encode() not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                pytest.fail(f"no {text!r} in the output within {TIMEOUT} s:\n{self.text()}")
            chunk = self._out.read()
            if chunk == b"":
                pytest.fail(f"process ended before {text!r}:\n{self.text()}")
            self.output += chunk or b""

    def wait_exit(self) -> int:
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process did not exit within {TIMEOUT} s:\n{self.text()}")
        self.output += self._out.read() or b""
        return code

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._sel.close()
        self._out.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_server(app_attr, *flags)``; every child is killed at teardown if still running."""
    started: list[Server] = []

    def start(app: str, *args: str) -> Server:
        srv = Server(tmp_path, app, *args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.close()


def start_request(address: str) -> tuple[socket.socket, bytes]:
    """Send the head and half the body; return the socket once "first" has arrived."""
    sock = open_sync(address, TIMEOUT)
    sock.sendall(encode_head(environ("POST", "/", body=b"x"), 10) + b"12345")
    got = b""
    while b"first\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    return sock, got


def test_sigterm_completes_request_in_flight_and_exits_0(
    start_server: Callable[..., Server],
) -> None:
    srv = start_server("app", "--lifespan", "on")
    srv.wait_for("listening on")
    sock, got = start_request(srv.address)
    with sock:
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for("graceful shutdown")
        # Still in flight: finish the body, get the end of the response.
        sock.sendall(b"67890")
        got += read_all_sync(sock)
    r = parse_response(got)
    assert (r.status, r.body) == (200, b"first\ndone\n")
    assert srv.wait_exit() == 0
    assert "lifespan shutdown" in srv.text()
    assert not os.path.exists(srv.address[5:])


def test_second_sigterm_exits_at_once(start_server: Callable[..., Server]) -> None:
    srv = start_server("app", "--graceful-timeout", "600")
    srv.wait_for("listening on")
    sock, got = start_request(srv.address)
    with sock:
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for("graceful shutdown")
        srv.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = srv.wait_exit()  # far sooner than graceful_timeout (600 s)
        assert time.monotonic() - start < TIMEOUT
        got += read_all_sync(sock)
    assert b"done" not in got  # the request was cut off, not completed
    assert code in (0, 1), srv.text()
    assert "Traceback" not in srv.text()
    assert "[WARNING] request cut by a forced shutdown: POST /, running for " in srv.text()


def test_lifespan_startup_failure_exits_3(start_server: Callable[..., Server]) -> None:
    srv = start_server("failing", "--lifespan", "on")
    code = srv.wait_exit()
    assert code == 3, srv.text()
    assert "no database" in srv.text()
    assert "Traceback" not in srv.text()


def test_lifespan_startup_failure_under_auto_exits_3(start_server: Callable[..., Server]) -> None:
    srv = start_server("failing")
    assert srv.wait_exit() == 3, srv.text()


def test_bind_error_exits_1_with_one_line(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    (tmp_path / "s.sock").write_text("not a socket")
    srv = start_server("app")
    assert srv.wait_exit() == 1, srv.text()
    assert "not a socket" in srv.text()
    assert "Traceback" not in srv.text()


def test_sighup_does_not_kill_a_single_process_server(
    start_server: Callable[..., Server],
) -> None:
    # SIGHUP's default action would end the process; with workers = 1 there
    # is no supervisor to restart, so it is logged and serving goes on.
    srv = start_server("app")
    srv.wait_for("listening on")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for("SIGHUP ignored")
    sock, got = start_request(srv.address)
    with sock:
        sock.sendall(b"67890")
        got += read_all_sync(sock)
    assert parse_response(got).body == b"first\ndone\n"
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0


def test_sigterm_during_a_slow_startup_is_a_clean_stop(
    start_server: Callable[..., Server],
) -> None:
    # systemctl stop while the app is still starting: exit 0 at once, no
    # traceback, not the startup_timeout and not exit 3.
    srv = start_server("slow", "--lifespan", "on", "--startup-timeout", "600")
    srv.wait_for("starting up")
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0, srv.text()
    assert "Traceback" not in srv.text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_while_the_app_imports_does_not_kill(
    start_server: Callable[..., Server],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: str,
) -> None:
    # logrotate's kill -USR1 can land while the app is still importing,
    # before trio handles signals: SIGUSR1's default action would end the
    # process (or, with workers, the worker and so the daemon's first start).
    gate = tmp_path / "gate"
    monkeypatch.setenv("TESTAPP_GATE", str(gate))
    srv = start_server("app", "--workers", workers)
    srv.wait_for("importing")
    srv.proc.send_signal(signal.SIGUSR1)
    gate.touch()
    srv.wait_for("listening on")
    sock, got = start_request(srv.address)
    with sock:
        sock.sendall(b"67890")
        got += read_all_sync(sock)
    assert parse_response(got).body == b"first\ndone\n"
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0, srv.text()


def _cpus(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def _threads_cpus(pid: int) -> set[str]:
    return {_cpus(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to choose from")
def test_cpu_affinity_pins_the_process_and_its_threads(
    start_server: Callable[..., Server],
) -> None:
    cpu = str(max(os.sched_getaffinity(0)))
    srv = start_server("app", "--cpu-affinity", cpu)
    srv.wait_for("listening on")
    assert _threads_cpus(srv.proc.pid) == {cpu}
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to spread over")
def test_cpu_affinity_spreads_workers(start_server: Callable[..., Server]) -> None:
    first, second = sorted(os.sched_getaffinity(0))[:2]
    srv = start_server("app", "--workers", "2", "--cpu-affinity", f"{first},{second}")
    srv.wait_for("listening on")
    pid = srv.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        workers = [int(p) for p in f.read().split()]
    assert len(workers) == 2
    assert sorted(_cpus(w) for w in workers) == [str(first), str(second)]
    assert _cpus(pid) != str(first)  # the supervisor itself is not pinned
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0


def test_the_daemon_drives_the_server_through_its_public_members() -> None:
    # One way to run a Server: serve() and _daemon.run both call Server.run() and use
    # its public members; a private one read from the daemon is a second driver in
    # the making.
    import ast

    import trioscgi._daemon

    private = []
    for path in Path(trioscgi._daemon.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "server"
                and node.attr.startswith("_")
            ):
                private.append(f"{path.name}:{node.lineno}: server.{node.attr}")
    assert private == []
