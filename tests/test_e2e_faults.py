"""Faults an operator meets, end to end through real nginx and the real process (issue 20).

- A rolling reload (SIGHUP every 2 s) under POSTs and GETs over FastCGI keep-conn and
  SCGI: no 502, and every POST the application ran got its answer.
- A streamed response cut short (the app raises after 512 KiB of 1 MiB): what the client
  sees, per wire and socket; the cut is logged and counted.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from frontends import (
    FrontEnd,
    TrioscgiProcess,
    free_port,
    http_request,
    run_nginx_mixed,
    run_trioscgi,
)

pytestmark = pytest.mark.e2e

# --------------------------------------------------------------------------- reloads

RELOADS = 9
RELOAD_EVERY = 2.0


class ReloadLoad:
    """Clients through nginx, back to back until stopped: POSTs (ids the app logs) and GETs."""

    def __init__(self, fe: FrontEnd, prefixes: dict[str, int]) -> None:
        self.fe = fe
        self.stop = threading.Event()
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.answered: set[str] = set()  # POST ids whose answer came back
        self.failures: list[str] = []
        self.counts: dict[str, int] = dict.fromkeys(prefixes, 0)
        self.pids: set[int] = set()
        self.threads = [
            threading.Thread(target=self.client, args=(prefix,))
            for prefix, n in prefixes.items()
            for _ in range(n)
        ]
        for t in self.threads:
            t.start()

    def client(self, prefix: str) -> None:
        while not self.stop.is_set():
            req = f"{prefix[1:]}-{next(self.ids)}"
            try:
                r = self.fe.request(
                    "POST", f"{prefix}/count", headers=[("X-Req", req)], body=b"b" * 1000
                )
                ok = r.status == 200 and r.body == f"ran {req} 1000".encode()
                with self.lock:
                    self.counts[prefix] += 1
                    if ok:
                        self.answered.add(req)
                    else:
                        self.failures.append(f"POST {prefix} {req}: {r.status} {r.body[:80]!r}")
                r = self.fe.get(f"{prefix}/pid")
                with self.lock:
                    self.counts[prefix] += 1
                    if r.status == 200:
                        self.pids.add(int(r.body))
                    else:
                        self.failures.append(f"GET {prefix}: {r.status} {r.body[:80]!r}")
            except Exception as exc:
                with self.lock:
                    self.failures.append(f"{prefix} {req}: {exc!r}")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_rolling_reload_under_load_loses_no_request(e2e_dir: Path, tmp_path: Path) -> None:
    """SIGHUP every 2 s for ~20 s under POSTs and GETs over FastCGI keep-conn (and a
    connection per request) and SCGI: no 502 on any wire, and every POST the app ran was
    answered. nginx's upstream keepalive_timeout (3 s) is below graceful_timeout (10 s),
    as docs/operations.md says: nginx closes the old workers' idle connections itself."""
    ran_log = tmp_path / "ran.log"
    ran_log.touch()
    with (
        run_trioscgi(
            "faults_app:app",
            sockdir=e2e_dir,
            logdir=tmp_path,
            args=["--workers", "2", "--protocol", "auto", "--graceful-timeout", "10"],
            env={"FAULTS_APP_LOG": str(ran_log)},
            name="reload",
        ) as server,
        run_nginx_mixed(
            server.backends["unix"], workdir=tmp_path / "nginx", keepalive_timeout="3s"
        ) as fe,
    ):
        load = ReloadLoad(fe, {"/fcgi-keep": 4, "/scgi": 2, "/fcgi": 1})
        try:
            for _ in range(RELOADS):
                time.sleep(RELOAD_EVERY)
                server.proc.send_signal(signal.SIGHUP)
            time.sleep(RELOAD_EVERY)
        finally:
            load.finish()
        nginx_log = fe.log_text()
    ran = set(ran_log.read_text().split())
    logs = server.stderr.read_text()
    assert logs.count("reload: new workers ready") >= RELOADS - 2, logs
    assert all(n > 50 for n in load.counts.values()), load.counts
    assert len(load.pids) > 2 * 3, "requests went to several worker generations"
    lost = ran - load.answered
    assert load.failures == [], (
        f"{len(load.failures)} failed (the app ran {len(lost)} of them)",
        load.failures[:10],
        nginx_log[-2000:],
    )
    assert not lost, f"the app ran {len(lost)} POSTs whose answer was lost: {sorted(lost)[:20]}"
    assert "client went away" not in logs, logs[-3000:]


# --------------------------------------------------------------------------- cut responses


def get_raw(port: int, target: str, timeout: float = 30) -> tuple[bytes, bytes, str]:
    """GET over HTTP/1.1 and read until the connection ends: (head, body bytes decoded
    from the chunks, how it ended: "complete" with the last chunk, else "cut")."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := c.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, rest = data.partition(b"\r\n\r\n")
    body = b""
    while True:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            return head, body, "cut"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return head, body, "complete" if after.startswith(b"\r\n") else "cut"
        if len(after) < size + 2:
            return head, body + after[:size], "cut"
        body += after[:size]
        rest = after[size + 2 :]


@pytest.fixture(scope="module")
def cut_server(e2e_dir: Path) -> Iterator[tuple[TrioscgiProcess, int]]:
    port = free_port()
    with run_trioscgi(
        "faults_app:app",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        args=["--protocol", "auto", "--metrics-bind", f"127.0.0.1:{port}"],
        env={"FAULTS_APP_LOG": "/dev/null"},
        name="cut",
    ) as server:
        yield server, port


def cut_count(metrics_port: int, wire: str) -> int | None:
    r = http_request(metrics_port, "GET", "/metrics")
    m = re.search(rf'^trioscgi_responses_cut_total{{wire="{wire}"}} (\S+)$', r.text, re.M)
    return None if m is None else int(float(m.group(1)))


# What the client sees when the app raises mid-body, per (socket, location); docs/operations.md.
CUT_SEEN = {
    ("unix", "/fcgi"): "cut",
    ("unix", "/fcgi-keep"): "cut",
    ("tcp", "/fcgi"): "cut",
    ("tcp", "/fcgi-keep"): "cut",
    ("tcp", "/scgi"): "cut",
    # No reset on AF_UNIX: nginx sees an EOF, the end of a response without Content-Length.
    ("unix", "/scgi"): "complete",
}


@pytest.mark.parametrize("query", ["", "unbuffered"])
@pytest.mark.parametrize(("sock", "prefix"), list(CUT_SEEN))
def test_cut_response_through_nginx(
    cut_server: tuple[TrioscgiProcess, int], tmp_path: Path, sock: str, prefix: str, query: str
) -> None:
    """The app raises after 512 KiB of 1 MiB; ``unbuffered``: with X-Accel-Buffering: no."""
    server, metrics_port = cut_server
    wire = "scgi" if prefix == "/scgi" else "fastcgi"
    before = cut_count(metrics_port, wire)
    with run_nginx_mixed(server.backends[sock], workdir=tmp_path / "nginx") as fe:
        head, body, ended = get_raw(fe.port, f"{prefix}/cut?{query}")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"chunked" in head.lower(), head
        assert len(body) <= 512 * 1024, len(body)
        assert ended == CUT_SEEN[sock, prefix], (len(body), fe.log_text()[-2000:])
        # The connection (kept or not) serves again afterwards.
        assert fe.get(f"{prefix}/pid").status == 200
    assert before is not None, "trioscgi_responses_cut_total is missing"
    deadline = time.monotonic() + 5
    while cut_count(metrics_port, wire) != before + 1:
        assert time.monotonic() < deadline, "the cut was not counted"
        time.sleep(0.05)
    line = f"[WARNING] response cut short: GET {prefix}/cut, 524288 body bytes sent ({wire}"
    assert line in server.stderr.read_text()


# What the client sees when the worker dies (SIGKILL) mid-body: the kernel closes its
# sockets with a plain EOF (nothing unread). Only nginx's buffered FastCGI keep-conn path
# takes an EOF without END_REQUEST for an error; unbuffered (X-Accel-Buffering: no), an
# EOF ends the response there too. docs/operations.md.
def kill_seen(sock: str, prefix: str, query: str) -> str:
    if prefix == "/fcgi-keep" and "unbuffered" not in query:
        return "cut"
    return "complete"


@pytest.mark.parametrize("query", ["kill", "kill&unbuffered"])
@pytest.mark.parametrize("sock", ["unix", "tcp"])
def test_worker_killed_mid_body(e2e_dir: Path, tmp_path: Path, sock: str, query: str) -> None:
    seen = {}
    with (
        run_trioscgi(
            "faults_app:app",
            sockdir=e2e_dir,
            logdir=tmp_path,
            args=["--workers", "2", "--protocol", "auto"],
            env={"FAULTS_APP_LOG": "/dev/null"},
            name="killed",
        ) as server,
        run_nginx_mixed(server.backends[sock], workdir=tmp_path / "nginx") as fe,
    ):
        for prefix in ("/fcgi", "/fcgi-keep", "/scgi"):
            head, body, ended = get_raw(fe.port, f"{prefix}/cut?{query}")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert len(body) <= 512 * 1024
            seen[sock, prefix] = ended
            # The other worker serves meanwhile; the supervisor replaces the dead one.
            assert fe.get(f"{prefix}/pid").status == 200
    assert seen == {(sock, p): kill_seen(sock, p, query) for p in ("/fcgi", "/fcgi-keep", "/scgi")}
