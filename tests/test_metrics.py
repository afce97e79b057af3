"""metrics_bind: GET /metrics from the real process, parsed by prometheus_client's own parser."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import fcgi_client as fc
import pytest
from frontends import free_port
from notify_helper import expect_notification
from prometheus_client.parser import text_string_to_metric_families
from test_supervisor import scgi_get

from trioscgi._config import Config, ConfigError, check_value
from trioscgi._counters import BUCKETS, WorkerMetrics
from trioscgi._daemon.metrics import Totals, encode_snapshot, families

REPO = Path(__file__).resolve().parent.parent

APP = textwrap.dedent(
    """
    import os

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                if scope["path"] == "/ws-boom":
                    raise RuntimeError("told to fail on an open WebSocket")
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/boom":
            raise RuntimeError("told to fail")
        if scope["path"] == "/read":
            while (await receive()).get("more_body"):
                pass
        if scope["path"] == "/big":
            big = b"x" * (16 << 20)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(big)).encode())]})
            await send({"type": "http.response.body", "body": big})
            return
        body = str(os.getpid()).encode().rjust(10)
        status = 404 if scope["path"] == "/missing" else 200
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": body})
    """
)


def scrape(address: tuple[str, int] | str, path: str = "/metrics") -> tuple[int, str]:
    if isinstance(address, str):
        conn: http.client.HTTPConnection = _UnixHTTP(address)
    else:
        conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


class Service:
    def __init__(self, workdir: Path, *flags: str, workers: int = 2) -> None:
        self.workdir = workdir
        self.sock = str(workdir / "app.sock")
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.log = workdir / "log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(workdir / "notify"))
        self.messages: list[str] = []
        env = dict(os.environ, NOTIFY_SOCKET=str(workdir / "notify"), PYTHONPATH=str(REPO))
        args = ["--app-dir", str(workdir), "--bind", f"unix:{self.sock}"]
        args += ["--workers", str(workers), "--metrics-bind", f"127.0.0.1:{self.port}", *flags]
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trioscgi", *args, "mapp:app"],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )

    def expect(self, state: str, timeout: float = 30) -> str:
        return expect_notification(
            self.notify, state, self.messages, timeout=timeout, context=self.log_text
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, name: str, want: float, timeout: float = 30, **labels: str) -> str:
        """Scrape until ``name`` is ``want``; a value past it fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            status, text = scrape(self.address)
            assert status == 200, text
            # A labelled sample appears with its first count (close codes).
            got = samples(text).get((name, tuple(sorted(labels.items()))), 0.0)
            if got == want:
                return text
            assert got < want, f"{name}{labels} = {got}, more than the {want} expected"
            assert time.monotonic() < deadline, f"{name}{labels} = {got}, not {want}"
            time.sleep(0.05)  # the workers report once a second; polling, not timing

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


@pytest.fixture
def service() -> Iterator[object]:
    workdir = Path(f"/tmp/tsm-{os.getpid()}-{time.monotonic_ns()}")
    workdir.mkdir()
    (workdir / "mapp.py").write_text(APP)
    started: list[Service] = []

    def start(*flags: str, workers: int = 2) -> Service:
        s = Service(workdir, *flags, workers=workers)
        started.append(s)
        s.expect("READY=1")
        return s

    try:
        yield start
    finally:
        for s in started:
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_counters_add_up_across_two_workers(service: object) -> None:
    assert callable(service)
    s = service()
    status, text = scrape(s.address)
    assert status == 200
    assert value(text, "trioscgi_worker_starts_total") == 2
    assert value(text, "trioscgi_workers_ready") == 2
    assert value(text, "trioscgi_requests_total", protocol="scgi", status_class="2xx") == 0
    # At least 60 requests, and on until both workers have served some (the
    # kernel picks the worker): the sum must count every one of them.
    pids: set[int] = set()
    n = 0
    while n < 60 or len(pids) < 2:
        assert n < 5000, "the requests never reached both workers"
        code, body = scgi_get(s.sock)
        assert code == 200
        pids.add(int(body))
        n += 1
    text = s.wait_for("trioscgi_requests_total", n, protocol="scgi", status_class="2xx")
    assert value(text, "trioscgi_request_duration_seconds_count") == n
    assert value(text, "trioscgi_request_duration_seconds_bucket", le="+Inf") == n
    assert value(text, "trioscgi_response_body_bytes_total") == 10 * n
    assert value(text, "trioscgi_requests_in_flight") == 0
    assert value(text, "trioscgi_requests_total", protocol="fastcgi", status_class="2xx") == 0

    assert scgi_get(s.sock, "/missing")[0] == 404
    assert scgi_get(s.sock, "/boom")[0] == 500
    text = s.wait_for("trioscgi_app_exceptions_total", 1)
    s.wait_for("trioscgi_requests_total", 1, protocol="scgi", status_class="4xx")
    s.wait_for("trioscgi_requests_total", 1, protocol="scgi", status_class="5xx")


def test_counts_survive_a_reload_and_workers_are_counted(service: object) -> None:
    assert callable(service)
    s = service()
    for _ in range(10):
        assert scgi_get(s.sock)[0] == 200
    s.wait_for("trioscgi_requests_total", 10, protocol="scgi", status_class="2xx")
    s.proc.send_signal(signal.SIGHUP)
    s.expect("READY=1")
    # The old workers' counts stay in the sum once they are gone.
    text = s.wait_for("trioscgi_worker_starts_total", 4)
    assert value(text, "trioscgi_reloads_total") == 1
    assert value(text, "trioscgi_requests_total", protocol="scgi", status_class="2xx") == 10
    for _ in range(5):
        assert scgi_get(s.sock)[0] == 200
    text = s.wait_for("trioscgi_requests_total", 15, protocol="scgi", status_class="2xx")
    assert value(text, "trioscgi_worker_deaths_total") == 0


def test_workers_that_retire_leave_every_count(service: object) -> None:
    # max_requests: each worker stops right after its 5th request, so its
    # last counts reach the supervisor only in the snapshot it sends on exit.
    assert callable(service)
    s = service("--max-requests", "5")
    for _ in range(30):
        assert scgi_get(s.sock)[0] == 200
    text = s.wait_for("trioscgi_requests_total", 30, protocol="scgi", status_class="2xx")
    assert value(text, "trioscgi_worker_starts_total") >= 6
    assert value(text, "trioscgi_worker_deaths_total") == 0


def test_a_killed_worker_is_a_death(service: object) -> None:
    assert callable(service)
    s = service()
    pid = int(scgi_get(s.sock)[1])
    os.kill(pid, signal.SIGKILL)
    text = s.wait_for("trioscgi_worker_starts_total", 3)
    s.wait_for("trioscgi_worker_deaths_total", 1)
    assert value(text, "trioscgi_lifespan_failures_total") == 0


def test_single_process_serves_its_own_metrics(service: object) -> None:
    assert callable(service)
    s = service(workers=1)
    for _ in range(3):
        assert scgi_get(s.sock)[0] == 200
    text = s.wait_for("trioscgi_requests_total", 3, protocol="scgi", status_class="2xx")
    # No supervisor: no worker counts.
    assert ("trioscgi_worker_starts_total", ()) not in samples(text)
    assert scrape(s.address, "/other")[0] == 404


@pytest.mark.parametrize("workers", [1, 2])
def test_the_log_says_where_metrics_listen(service: object, workers: int) -> None:
    assert callable(service)
    s = service(workers=workers)
    assert f"[INFO] metrics on http://127.0.0.1:{s.port}/metrics\n" in s.log_text()


def test_refusals_are_counted_by_reason(service: object) -> None:
    assert callable(service)
    s = service("--max-header-size", "100")
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(30)
        c.connect(s.sock)
        c.sendall(b"500:" + b"x" * 100)
        reply = b""
        while chunk := c.recv(4096):
            reply += chunk
    assert reply.startswith(b"Status: 431")
    s.wait_for("trioscgi_refused_total", 1, reason="header_too_large")
    # No REQUEST_METHOD: the scope can't be built; a 400 before the app.
    headers = b"CONTENT_LENGTH\x000\x00SCGI\x001\x00"
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(30)
        c.connect(s.sock)
        c.sendall(b"%d:%s," % (len(headers), headers))
        reply = b""
        while chunk := c.recv(4096):
            reply += chunk
    assert reply.startswith(b"Status: 400"), reply
    text = s.wait_for("trioscgi_refused_total", 1, reason="bad_request")
    assert value(text, "trioscgi_requests_total", protocol="scgi", status_class="4xx") == 0
    # FastCGI on the same socket (protocol auto): a role we don't serve, answered by
    # the core with UNKNOWN_ROLE.
    reply = _send_and_read(s.sock, fc.begin(1, role=fc.AUTHORIZER) + fc.params(1, []))
    assert reply == fc.record(fc.END_REQUEST, 1, struct.pack(">IB3x", 0, fc.UNKNOWN_ROLE))
    s.wait_for("trioscgi_refused_total", 1, reason="unknown_role")


def _send_and_read(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(30)
        c.connect(path)
        c.sendall(data)
        reply = b""
        while chunk := c.recv(4096):
            reply += chunk
    return reply


def test_timeouts_are_counted_by_kind(service: object) -> None:
    assert callable(service)
    s = service(
        "--header-timeout", "0.3", "--read-timeout", "0.3", "--drain-timeout", "0.3",
        "--write-timeout", "0.3", workers=1,
    )  # fmt: skip
    # Nothing at all (protocol auto: the first byte never comes), then half a head.
    assert _send_and_read(s.sock, b"") == b""
    assert _send_and_read(s.sock, b"70:CONTENT_LENGTH").startswith(b"Status: 408")
    s.wait_for("trioscgi_timeouts_total", 2, kind="header")
    # A body that stops halfway while the app reads it.
    env = b"CONTENT_LENGTH\x0010\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00REQUEST_URI\x00/read\x00"
    _send_and_read(s.sock, b"%d:%s,12345" % (len(env), env))
    text = s.wait_for("trioscgi_timeouts_total", 1, kind="read")
    assert value(text, "trioscgi_refused_total", reason="bad_request") == 0
    # The app answers without reading a body that stops halfway: the drain gives up.
    env = b"CONTENT_LENGTH\x0010\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00REQUEST_URI\x00/\x00"
    assert _send_and_read(s.sock, b"%d:%s,12345" % (len(env), env)).startswith(b"Status: 200")
    s.wait_for("trioscgi_timeouts_total", 1, kind="drain")
    # A front-end that reads nothing of a 16 MiB response.
    env = b"CONTENT_LENGTH\x000\x00SCGI\x001\x00REQUEST_METHOD\x00GET\x00REQUEST_URI\x00/big\x00"
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(30)
        c.connect(s.sock)
        c.sendall(b"%d:%s," % (len(env), env))
        text = s.wait_for("trioscgi_timeouts_total", 1, kind="write")
    assert value(text, "trioscgi_timeouts_total", kind="header") == 2


def test_live_status_line(service: object) -> None:
    assert callable(service)
    s = service(workers=2)
    assert scgi_get(s.sock)[0] == 200
    line = s.expect("requests served", timeout=40)
    assert "2 workers ready" in line and "in flight" in line


def test_metrics_on_a_unix_socket(tmp_path: Path) -> None:
    (tmp_path / "mapp.py").write_text(APP)
    path = str(tmp_path / "metrics.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), PYTHONPATH=str(REPO))
    args = ["--app-dir", str(tmp_path), "--bind", f"unix:{tmp_path / 'app.sock'}"]
    with open(tmp_path / "log", "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioscgi", *args, "--metrics-bind", f"unix:{path}", "mapp:app"],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    try:
        expect_notification(notify, "READY=1", [], timeout=30)
        log = (tmp_path / "log").read_text()
        assert f"[INFO] metrics on unix:{path} (GET /metrics)\n" in log
        status, text = scrape(path)
        assert status == 200
        assert "trioscgi_requests_total" in text
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        assert not os.path.exists(path), "the metrics socket file was left behind"
    finally:
        proc.kill()
        proc.wait()
        notify.close()


def test_metrics_bind_without_prometheus_client_is_a_config_error(tmp_path: Path) -> None:
    # A stand-in package directory that hides prometheus_client makes the
    # import machinery find nothing.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'prometheus_client':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trioscgi", "--metrics-bind", "127.0.0.1:0", "x:app"],
        env=dict(os.environ, PYTHONPATH=f"{hide}:{REPO}"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert b"pip install 'trioscgi[metrics]'" in proc.stderr


def test_metrics_bind_accepts_tcp_and_unix_only() -> None:
    assert check_value("metrics_bind", "127.0.0.1:9300") == "127.0.0.1:9300"
    assert check_value("metrics_bind", "unix:/run/m.sock") == "unix:/run/m.sock"
    with pytest.raises(ConfigError, match="metrics_bind"):
        check_value("metrics_bind", "systemd")
    with pytest.raises(ConfigError, match="metrics_bind"):
        check_value("metrics_bind", "nonsense")
    assert Config().metrics_bind is None


def test_totals_keep_dead_workers_counters_and_drop_their_gauges() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    scope = {"headers": [(b"content-length", b"7")]}
    for m, status in ((a, 200), (b, 503)):
        m.in_flight += 1
        m.request_done("scgi", status, scope, 5, 0.02)
    a.in_flight = 1
    totals = Totals()
    snap_a = a.snapshot(3, 1)
    snap_a["pid"] = 1
    totals.update(encode_snapshot(snap_a), {1, 2})
    snap_b = b.snapshot(2, 0)
    snap_b["pid"] = 2
    totals.update(encode_snapshot(snap_b), {1, 2})
    total = totals.total()
    assert total["connections_open"] == 5 and total["in_flight"] == 1
    assert sum(total["requests"]) == 2 and total["bytes_in"] == 14
    totals.worker_gone(1)
    total = totals.total()
    assert sum(total["requests"]) == 2 and total["bytes_out"] == 10
    assert total["connections_open"] == 2 and total["in_flight"] == 0
    totals.update(b"not json", {1, 2})  # ignored
    # A late snapshot from the retired worker: not counted again.
    totals.update(encode_snapshot(snap_a), {2})
    assert sum(totals.total()["requests"]) == 2


def test_histogram_buckets_are_cumulative() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    m = WorkerMetrics()
    for elapsed in (0.001, 0.02, 0.02, 100.0):
        m.in_flight += 1
        m.request_done("fastcgi", 200, {"headers": []}, 0, elapsed)

    class C:
        def collect(self) -> object:
            return families(m.snapshot(0, 0), None)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(C())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert value(text, "trioscgi_request_duration_seconds_bucket", le="0.005") == 1
    assert value(text, "trioscgi_request_duration_seconds_bucket", le="0.025") == 3
    assert value(text, "trioscgi_request_duration_seconds_bucket", le=str(BUCKETS[-1])) == 3
    assert value(text, "trioscgi_request_duration_seconds_bucket", le="+Inf") == 4
    assert value(text, "trioscgi_requests_total", protocol="fastcgi", status_class="2xx") == 4


def test_the_endpoint_answers_get_and_head_on_metrics_only() -> None:
    from trioscgi._daemon.metrics_http import MetricsHTTP

    m = WorkerMetrics()
    http = MetricsHTTP(lambda: families(m.snapshot(0, 0), None))
    get = http.respond(b"GET /metrics HTTP/1.1\r\nHost: x")
    head, _, body = get.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert value(body.decode(), "trioscgi_requests_in_flight") == 0
    # HEAD: the same length, no body.
    h = http.respond(b"HEAD /metrics?x=1 HTTP/1.1")
    assert h.endswith(b"\r\n\r\n") and f"Content-Length: {len(body)}".encode() in h
    # OpenMetrics when the scraper asks for it.
    om = http.respond(
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0"
    )
    assert b"application/openmetrics-text" in om and om.endswith(b"# EOF\n")
    assert http.respond(b"GET / HTTP/1.1").startswith(b"HTTP/1.1 404 ")
    assert http.respond(b"POST /metrics HTTP/1.1").startswith(b"HTTP/1.1 405 ")
    assert http.respond(b"garbage").startswith(b"HTTP/1.1 400 ")


def test_websocket_sessions_and_close_codes(service: object) -> None:
    from scgi_client import encode_request, environ
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection, TextMessage

    assert callable(service)
    s = service(workers=2)
    headers = {
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }

    def session(path: str) -> tuple[socket.socket, Connection]:
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(30)
        c.connect(s.sock)
        c.sendall(encode_request(environ("GET", path, extra=headers)))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"Status: 101"), head
        return c, Connection(ConnectionType.CLIENT, trailing_data=rest)

    c, ws = session("/ws")
    with c:
        text = s.wait_for("trioscgi_websocket_sessions_open", 1)
        c.sendall(ws.send(CloseConnection(code=1000)))
        while chunk := c.recv(4096):
            ws.receive_data(chunk)
    text = s.wait_for("trioscgi_websocket_closes_total", 1, code="1000")
    assert value(text, "trioscgi_app_exceptions_total") == 0
    # The app raises on an open session: 1011 to the client, counted as an app exception.
    c, ws = session("/ws-boom")
    with c:
        c.sendall(ws.send(TextMessage(data="boom")))
        while chunk := c.recv(4096):
            ws.receive_data(chunk)
        codes = [e.code for e in ws.events() if isinstance(e, CloseConnection)]
    assert codes == [1011]
    text = s.wait_for("trioscgi_websocket_closes_total", 1, code="1011")
    s.wait_for("trioscgi_app_exceptions_total", 1)
    assert value(text, "trioscgi_requests_total", protocol="websocket", status_class="1xx") == 2
    assert value(text, "trioscgi_websocket_sessions_open") == 0
    assert value(text, "trioscgi_requests_total", protocol="scgi", status_class="2xx") == 0


# --- metrics_bind on a Unix path: the file is ours only if it was stale -------


def test_metrics_bind_refuses_a_regular_file(tmp_path: Path) -> None:
    from trioscgi._daemon.metrics_http import bind_metrics
    from trioscgi._listeners import BindError

    path = tmp_path / "metrics.sock"
    path.write_text("precious")
    with pytest.raises(BindError, match="exists and is not a socket; refusing to remove it"):
        bind_metrics(f"unix:{path}")
    assert path.read_text() == "precious"


def test_metrics_bind_refuses_a_live_socket_and_leaves_it(tmp_path: Path) -> None:
    from trioscgi._daemon.metrics_http import bind_metrics
    from trioscgi._listeners import BindError

    path = str(tmp_path / "metrics.sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(path)
        other.listen(1)
        with pytest.raises(BindError, match="address in use"):
            bind_metrics(f"unix:{path}")
        # The other instance is still reachable on its path.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        probe.close()
    finally:
        other.close()


def test_metrics_bind_replaces_a_stale_socket_and_spares_a_successor(tmp_path: Path) -> None:
    from trioscgi._daemon.metrics_http import bind_metrics

    path = str(tmp_path / "metrics.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: stale
    listener = bind_metrics(f"unix:{path}")
    # Another instance replaces the file while we run: on exit we leave its file alone.
    os.unlink(path)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        successor.bind(path)
        successor.listen(1)
        listener.close()
        assert os.path.exists(path), "closing the metrics listener removed another's socket"
    finally:
        successor.close()
    # Ours, still ours at exit: removed.
    os.unlink(path)
    listener = bind_metrics(f"unix:{path}")
    listener.close()
    assert not os.path.exists(path)


async def test_the_trio_endpoint_serves_at_most_max_clients_at_once(autojump_clock: object) -> None:
    # Connections that send nothing each hold a slot until CLIENT_TIMEOUT; past
    # MAX_CLIENTS of them, the next scraper waits in the backlog (not a task, not
    # a socket of ours) until one is done.
    import trio

    from trioscgi._daemon.metrics_http import (
        CLIENT_TIMEOUT,
        MAX_CLIENTS,
        MetricsHTTP,
        serve_http,
    )

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    http = MetricsHTTP(lambda: families(WorkerMetrics().snapshot(0, 0), None))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_http, listener, http)
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CLIENTS)]
        scraper = await trio.open_tcp_stream("127.0.0.1", port)
        await scraper.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        with trio.move_on_after(CLIENT_TIMEOUT / 2) as waiting:
            await scraper.receive_some()
        assert waiting.cancelled_caught, "a scraper past MAX_CLIENTS was served at once"
        await silent[0].aclose()
        response = b""
        with trio.fail_after(1):  # well before the silent ones time out
            while chunk := await scraper.receive_some():
                response += chunk
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        for stream in [*silent[1:], scraper]:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    listener.close()


def test_the_supervisors_endpoint_serves_at_most_max_clients_at_once() -> None:
    from trioscgi._daemon.metrics_http import MAX_CLIENTS, MetricsHTTP, SelectServer

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0trioscgi-test-{os.getpid()}")
    listener.listen(64)
    server = SelectServer(
        listener, MetricsHTTP(lambda: families(WorkerMetrics().snapshot(0, 0), None))
    )
    clients = []
    try:
        for _ in range(MAX_CLIENTS + 1):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(listener.getsockname())
            clients.append(c)
        for _ in range(MAX_CLIENTS + 1):  # one accept per wake-up
            server.on_readable(server.readers(), now=0.0)
        assert len(server.clients) == MAX_CLIENTS
        assert listener not in server.readers()  # the rest wait in the backlog
        clients[0].close()
        server.on_readable(server.readers(), now=0.0)  # EOF: the first is done
        assert listener in server.readers()
        server.on_readable([listener], now=0.0)
        clients[-1].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        server.on_readable(server.readers(), now=0.0)
        assert clients[-1].recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        server.close_clients()
        listener.close()
        for c in clients:
            c.close()
