"""Workers: the real ``python -m trioscgi --workers N`` process, signals, crashes and reloads."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from notify_helper import expect_notification

REPO = Path(__file__).resolve().parent.parent

APP = textwrap.dedent(
    '''
    """Test app: answers its pid; marker files next to it change its behaviour."""
    import os
    import threading

    import trio

    HERE = os.path.dirname(os.path.abspath(__file__))

    def mark(name):
        return os.path.exists(os.path.join(HERE, name))

    if mark("broken-import"):
        raise RuntimeError("this deployment is broken")

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if mark("fail-startup"):
                        await send({"type": "lifespan.startup.failed", "message": "told to fail"})
                        return
                    if mark("crash-after-start"):
                        threading.Timer(0.2, os._exit, (7,)).start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"].startswith("/sleep/"):
            open(os.path.join(HERE, "in-flight"), "w").close()
            await trio.sleep(float(scope["path"][7:]))
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    '''
)


def scgi_get(path: str, uri: str = "/", timeout: float = 30) -> tuple[int, bytes]:
    """One SCGI request on a unix socket: (status, body)."""
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
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(timeout)
        c.connect(path)
        c.sendall(b"%d:%s," % (len(headers), headers))
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: "), data
    return int(head[8:11]), body


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    sock: str
    appdir: Path
    notify: socket.socket
    log: Path
    messages: list[str] = field(default_factory=list)

    def expect(self, state: str, timeout: float = 30) -> str:
        """Wait for a notification containing ``state``; return it."""
        return expect_notification(
            self.notify, state, self.messages, timeout=timeout, context=self.log_text
        )

    def workers(self) -> set[int]:
        pid = self.proc.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return {int(p) for p in text.split()}

    def wait_workers(self, predicate: object, timeout: float = 30) -> set[int]:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            w = self.workers()
            if predicate(w):
                return w
            time.sleep(0.02)  # polling /proc; not a timing assumption
        raise AssertionError(f"workers {self.workers()}; log:\n{self.log_text()}")

    def wait_in_flight(self, timeout: float = 30) -> None:
        """Wait until the app has received a /sleep/ request."""
        deadline = time.monotonic() + timeout
        while not (self.appdir / "in-flight").exists():
            assert time.monotonic() < deadline, "the request never reached the app"
            time.sleep(0.01)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(f"/tmp/tss-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir()
    (d / "app").mkdir()
    (d / "app" / "wapp.py").write_text(APP)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start(workdir: Path) -> Iterator[object]:
    started: list[Daemon] = []

    def start(
        *flags: str, workers: int = 2, ready: bool = True, env_extra: dict[str, str] | None = None
    ) -> Daemon:
        sock = str(workdir / "app.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(workdir / f"notify{len(started)}")
        notify.bind(notify_path)
        env = dict(os.environ)
        env.update(NOTIFY_SOCKET=notify_path, PYTHONPATH=str(REPO), **(env_extra or {}))
        log = workdir / f"log{len(started)}"
        with open(log, "wb") as logf:
            args = ["--app-dir", str(workdir / "app"), "--bind", f"unix:{sock}"]
            args += ["--workers", str(workers), *flags, "wapp:app"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "trioscgi", *args],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        d = Daemon(proc, sock, workdir / "app", notify, log)
        started.append(d)
        if ready:
            d.expect("READY=1")
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d.notify.close()


class Load:
    """Clients sending requests back to back until stopped; every failure recorded."""

    def __init__(self, sock: str, clients: int = 3) -> None:
        self.sock = sock
        self.stop = threading.Event()
        self.ok = 0
        self.pids: set[int] = set()
        self.served_by: list[tuple[float, int]] = []  # (when the request began, pid)
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # when each failed request began
        self.took: list[tuple[float, float]] = []  # (began, seconds) of each request served
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def client(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                status, body = scgi_get(self.sock, timeout=30)
                with self.lock:
                    if status == 200:
                        self.ok += 1
                        self.pids.add(int(body))
                        self.served_by.append((began, int(body)))
                        self.took.append((began, time.monotonic() - began))
                    else:
                        self.failures.append(f"status {status}")
                        self.failed_at.append(began)
            except Exception as exc:
                with self.lock:
                    self.failures.append(repr(exc))
                    self.failed_at.append(began)

    def served(self) -> int:
        with self.lock:
            return self.ok

    def wait_served(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        target = self.served() + n
        while self.served() < target:
            assert time.monotonic() < deadline, f"only {self.served()} served"
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_workers_serve_and_sigterm_finishes_the_request(start: object) -> None:
    assert callable(start)
    d: Daemon = start(workers=2)
    assert "STATUS=2 workers serving on unix:" in d.messages[-1]
    workers = d.wait_workers(lambda w: len(w) == 2)
    # Every worker has the supervisor as parent and answers on the one socket.
    seen = set()
    for _ in range(50):
        seen.add(int(scgi_get(d.sock)[1]))
        if seen == workers:
            break
    assert seen <= workers
    # A request in flight when SIGTERM arrives completes.
    result: list[tuple[int, bytes]] = []
    t = threading.Thread(target=lambda: result.append(scgi_get(d.sock, "/sleep/1")))
    t.start()
    d.wait_in_flight()
    began = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.expect("STOPPING=1")
    assert d.wait() == 0
    t.join(timeout=30)
    assert result and result[0][0] == 200
    assert time.monotonic() - began < 10
    assert not os.path.exists(d.sock), "the supervisor removes its socket file"
    assert not any(_alive(pid) for pid in workers)


def test_kill_9_worker_is_replaced_without_interruption(start: object) -> None:
    assert callable(start)
    d: Daemon = start(workers=2)
    before = d.wait_workers(lambda w: len(w) == 2)
    load = Load(d.sock)
    try:
        load.wait_served(20)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        after = d.wait_workers(lambda w: len(w) == 2 and victim not in w)
        with load.lock:
            lost = list(load.failures)
        load.wait_served(50)
    finally:
        load.finish()
    # Only what the killed worker had accepted is lost (one per client at
    # most); everything after is served by the survivor and the replacement.
    assert len(lost) <= 3
    assert all("ConnectionReset" in f or "status" not in f for f in lost), lost
    assert load.failures == lost
    new = after - before
    assert len(new) == 1
    assert "died (signal SIGKILL); replacing it" in d.log_text()
    # The replacement serves too.
    deadline = time.monotonic() + 30
    while not new <= load.pids and time.monotonic() < deadline:
        load.pids.add(int(scgi_get(d.sock)[1]))
    assert new <= load.pids
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_sighup_restart_loses_no_request(start: object) -> None:
    assert callable(start)
    d: Daemon = start(workers=2)
    old = d.wait_workers(lambda w: len(w) == 2)
    load = Load(d.sock, clients=4)
    try:
        load.wait_served(30)
        d.proc.send_signal(signal.SIGHUP)
        d.expect("RELOADING=1")
        d.expect("READY=1")
        new = d.wait_workers(lambda w: len(w) == 2 and not (w & old))
        cutoff = time.monotonic()
        load.wait_served(50)
    finally:
        load.finish()
    assert load.failures == [], d.log_text()
    # Requests begun once the old workers were gone went to the new ones.
    assert {pid for began, pid in load.served_by if began > cutoff} <= new
    assert {pid for began, pid in load.served_by} & old, "old workers served before"
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_sighup_with_a_broken_deployment_keeps_the_old_workers(start: object) -> None:
    assert callable(start)
    d: Daemon = start(workers=2)
    old = d.wait_workers(lambda w: len(w) == 2)
    (d.appdir / "broken-import").touch()
    d.proc.send_signal(signal.SIGHUP)
    d.expect("RELOADING=1")
    assert "reload failed" in d.expect("READY=1")
    d.wait_workers(lambda w: w == old)
    assert int(scgi_get(d.sock)[1]) in old
    assert "this deployment is broken" in d.log_text()
    # Fixed: the next SIGHUP goes through.
    (d.appdir / "broken-import").unlink()
    d.proc.send_signal(signal.SIGHUP)
    assert "workers serving" in d.expect("READY=1")
    d.wait_workers(lambda w: len(w) == 2 and not (w & old))
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_lifespan_startup_failure_exits_3(start: object, workdir: Path) -> None:
    assert callable(start)
    (workdir / "app" / "fail-startup").touch()
    d: Daemon = start(workers=2, ready=False)
    assert d.wait() == 3
    assert "failed to start (exit code 3)" in d.log_text()
    assert not any("READY=1" in m for m in d.messages)


def test_app_that_cannot_load_exits_2(start: object, workdir: Path) -> None:
    assert callable(start)
    (workdir / "app" / "broken-import").touch()
    d: Daemon = start(workers=2, ready=False)
    assert d.wait() == 2
    assert "this deployment is broken" in d.log_text()


def test_crash_loop_ends_the_daemon(start: object, workdir: Path) -> None:
    assert callable(start)
    d: Daemon = start(workers=2)
    # From now on every new worker dies 0.2 s after its startup.
    (workdir / "app" / "crash-after-start").touch()
    os.kill(min(d.workers()), signal.SIGKILL)
    assert d.wait(timeout=60) == 1
    log = d.log_text()
    assert "crashes within 10 s, giving up" in log
    assert "died (exit code 7)" in log


def test_max_requests_recycles_workers(start: object) -> None:
    assert callable(start)
    d: Daemon = start("--max-requests", "3", workers=2)
    pids = set()
    for _ in range(20):
        status, body = scgi_get(d.sock)
        assert status == 200
        pids.add(int(body))
    # 20 requests, at most 3 per worker: at least 7 different workers.
    assert len(pids) >= 7
    assert "retiring (max_requests); starting a replacement" in d.log_text()
    # The replacement starts as the old one retires: for a moment there are three.
    deadline = time.monotonic() + 10
    while len(d.workers()) != 2:
        assert time.monotonic() < deadline, d.workers()
        time.sleep(0.02)  # polling for the retired worker's exit, bounded
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def _fastcgi_get_kept(conn: socket.socket) -> bytes:
    """One GET on a kept FastCGI connection; the records up to its END_REQUEST."""
    import fcgi_client

    conn.sendall(fcgi_client.request(1, keep=True))
    data = b""
    while True:
        # Records up to END_REQUEST (type 3); this app's answers are small.
        offset = 0
        while offset + 8 <= len(data):
            kind = data[offset + 1]
            length = int.from_bytes(data[offset + 4 : offset + 6], "big")
            offset += 8 + length + data[offset + 6]
            if kind == fcgi_client.END_REQUEST and offset <= len(data):
                return data
        chunk = conn.recv(65536)
        assert chunk, f"EOF before END_REQUEST: {data!r}"
        data += chunk


def test_max_requests_replacement_starts_while_the_old_worker_holds_kept_connections(
    start: object,
) -> None:
    # A worker retired by max_requests keeps its idle kept FastCGI connections
    # until the front-end is done with them (graceful_timeout at most); its
    # replacement must start at once, or once every worker has retired, new
    # connections wait in the backlog. Each request here comes on a new kept
    # connection that stays open, as in a front-end's keepalive cache.
    assert callable(start)
    d: Daemon = start("--max-requests", "3", "--graceful-timeout", "30", workers=2)
    held: list[socket.socket] = []
    try:
        for _ in range(12):
            conn = socket.socket(socket.AF_UNIX)
            held.append(conn)
            conn.settimeout(10)
            conn.connect(d.sock)
            began = time.monotonic()
            try:
                _fastcgi_get_kept(conn)
            except OSError as exc:
                raise AssertionError(d.log_text()) from exc
            assert time.monotonic() - began < 5, d.log_text()
    finally:
        for conn in held:
            conn.close()
    # 12 requests, 3 per worker: at least four workers served them.
    assert d.log_text().count("retiring (max_requests); starting a replacement") >= 3
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_second_sigterm_stops_at_once(start: object) -> None:
    assert callable(start)
    d: Daemon = start("--graceful-timeout", "60", workers=2)
    t = threading.Thread(target=lambda: _swallow(d.sock))
    t.start()
    d.wait_in_flight()
    began = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.expect("STOPPING=1")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0
    assert time.monotonic() - began < 10  # not the 60 s graceful timeout
    t.join(timeout=30)


def _swallow(sock: str) -> None:
    try:
        scgi_get(sock, "/sleep/120")
    except (OSError, AssertionError):
        pass


def test_graceful_timeout_bounds_the_stop(start: object) -> None:
    assert callable(start)
    d: Daemon = start("--graceful-timeout", "1", "--shutdown-timeout", "1", workers=2)
    t = threading.Thread(target=lambda: _swallow(d.sock))
    t.start()
    d.wait_in_flight()
    began = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0
    # graceful 1 s (+ shutdown 1 s + slack): far below the 120 s request.
    assert time.monotonic() - began < 6
    t.join(timeout=30)


def test_supervisor_death_stops_the_workers(start: object) -> None:
    assert callable(start)
    d: Daemon = start(workers=2)
    workers = d.wait_workers(lambda w: len(w) == 2)
    d.proc.kill()
    d.proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.02)  # polling /proc
    assert not any(_alive(p) for p in workers), "orphaned workers must exit"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_supervisor_pings_the_watchdog(start: object) -> None:
    assert callable(start)
    d: Daemon = start(workers=2, env_extra={"WATCHDOG_USEC": "200000"})
    for _ in range(3):
        d.expect("WATCHDOG=1")
    d.proc.send_signal(signal.SIGTERM)
    d.expect("STOPPING=1")
    assert d.wait() == 0


def test_one_worker_is_one_worker_in_the_log(start: object) -> None:
    # --reload runs one worker under the supervisor: its lines and status
    # say "1 worker", not "1 workers".
    assert callable(start)
    d: Daemon = start("--reload", workers=1)
    assert "STATUS=1 worker serving on unix:" in d.messages[-1]
    first = re.search(r"\[(\d+)\] \[INFO\] listening on", d.log_text())
    assert first is not None
    d.proc.send_signal(signal.SIGHUP)
    d.expect("RELOADING=1")
    d.expect("READY=1")
    # The old worker stops on its own time: wait until it is gone, so that
    # the supervisor stops one worker, not the old one too.
    old_worker = Path(f"/proc/{first.group(1)}")
    deadline = time.monotonic() + 10
    while old_worker.exists():
        assert time.monotonic() < deadline, d.log_text()
        time.sleep(0.02)  # polling for the exit, bounded
    d.proc.send_signal(signal.SIGTERM)
    d.expect("STOPPING=1")
    assert d.wait() == 0
    log = d.log_text()
    assert "1 worker ready" in log
    assert "SIGHUP received: starting 1 new worker\n" in log
    assert "stopping 1 old worker\n" in log
    assert "stopping 1 worker gracefully" in log, log
    assert "1 workers" not in log and "1 new workers" not in log and "1 old workers" not in log


def _wait_log(d: Daemon, text: str, timeout: float, count: int = 1) -> float:
    """Wait until the log holds ``text`` ``count`` times; return the seconds it took."""
    began = time.monotonic()
    while d.log_text().count(text) < count:
        assert time.monotonic() - began < timeout, f"no {text!r} in the log:\n{d.log_text()}"
        time.sleep(0.05)  # polling the log file, bounded
    return time.monotonic() - began


def test_deleted_socket_is_reported_and_sighup_rebinds_it(start: object) -> None:
    from frontends import free_port
    from test_metrics import scrape, value  # here: test_metrics imports this module

    assert callable(start)
    metrics = ("127.0.0.1", free_port())
    d: Daemon = start("--metrics-bind", f"{metrics[0]}:{metrics[1]}", workers=2)
    assert scgi_get(d.sock)[0] == 200
    assert value(scrape(metrics)[1], "trioscgi_listener_path_missing") == 0

    os.unlink(d.sock)  # a cleanup script, a tmpfiles rule, a mistaken rm
    took = _wait_log(d, f"unix:{d.sock}: the socket file is gone", timeout=15)
    assert took < 5, f"noticed only after {took:.1f} s"
    assert "[ERROR]" in next(line for line in d.log_text().splitlines() if "is gone" in line)
    assert value(scrape(metrics)[1], "trioscgi_listener_path_missing") == 1

    d.proc.send_signal(signal.SIGHUP)
    d.expect("READY=1")
    assert scgi_get(d.sock)[0] == 200
    assert value(scrape(metrics)[1], "trioscgi_listener_path_missing") == 0

    # Replaced by another socket file (nobody listening on it: stale).
    os.unlink(d.sock)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(d.sock)
    stale.close()
    _wait_log(d, f"unix:{d.sock}: the socket file was replaced", timeout=15)
    assert value(scrape(metrics)[1], "trioscgi_listener_path_missing") == 1
    d.proc.send_signal(signal.SIGHUP)
    d.expect("READY=1")
    assert scgi_get(d.sock)[0] == 200
    # Once per episode, not once per check.
    assert d.log_text().count("the socket file is gone") == 1

    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0
    assert not os.path.exists(d.sock), "the rebound socket file is ours to remove"


def test_deleted_socket_is_reported_by_a_single_process(start: object) -> None:
    from frontends import free_port
    from test_metrics import scrape, value  # here: test_metrics imports this module

    assert callable(start)
    metrics = ("127.0.0.1", free_port())
    d: Daemon = start("--metrics-bind", f"127.0.0.1:{metrics[1]}", workers=1)
    assert scgi_get(d.sock)[0] == 200
    assert value(scrape(metrics)[1], "trioscgi_listener_path_missing") == 0
    os.unlink(d.sock)
    took = _wait_log(d, f"unix:{d.sock}: the socket file is gone", timeout=15)
    assert took < 5, f"noticed only after {took:.1f} s"
    assert "restart the service" in d.log_text()
    assert value(scrape(metrics)[1], "trioscgi_listener_path_missing") == 1
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_hung_worker_is_killed_and_replaced_within_worker_timeout(start: object) -> None:
    assert callable(start)
    d: Daemon = start("--worker-timeout", "3", workers=2)
    victim = min(d.wait_workers(lambda w: len(w) == 2))
    load = Load(d.sock)
    try:
        load.wait_served(20)
        os.kill(victim, signal.SIGSTOP)  # as hung as a worker gets
        stopped = time.monotonic()
        took = _wait_log(d, f"worker {victim} sent no heartbeat", timeout=20)
        assert took < 3 + 2, f"killed only after {took:.1f} s"
        d.wait_workers(lambda w: victim not in w and len(w) == 2)
        load.wait_served(20)
    finally:
        load.finish()
    # Requests begun after the stop went to the other worker, at its speed.
    later = [t for began, t in load.took if began > stopped]
    assert later, "nothing was served meanwhile"
    assert max(later) < 2, f"a request took {max(later):.1f} s"
    assert not [b for b in load.failed_at if b > stopped], load.failures
    assert "[ERROR]" in next(line for line in d.log_text().splitlines() if "heartbeat" in line)
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_a_silent_worker_stops_counting_as_ready(start: object) -> None:
    from frontends import free_port
    from test_metrics import scrape, value  # here: test_metrics imports this module

    assert callable(start)
    metrics = ("127.0.0.1", free_port())
    d: Daemon = start("--metrics-bind", f"127.0.0.1:{metrics[1]}", "--worker-timeout", "0")
    victim = min(d.wait_workers(lambda w: len(w) == 2))

    def wait_ready(n: int) -> None:
        deadline = time.monotonic() + 15
        while value(scrape(metrics)[1], "trioscgi_workers_ready") != n:
            assert time.monotonic() < deadline, f"workers_ready never {n}"
            time.sleep(0.05)  # polling the endpoint, bounded

    wait_ready(2)
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_ready(1)  # three heartbeats missed: about 3 s
    finally:
        os.kill(victim, signal.SIGCONT)
    wait_ready(2)
    assert victim in d.workers(), "worker_timeout = 0 kills nobody"
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_watchdog_pings_stop_while_every_worker_is_silent(start: object) -> None:
    assert callable(start)
    d: Daemon = start("--worker-timeout", "0", workers=2, env_extra={"WATCHDOG_USEC": "200000"})
    workers = d.wait_workers(lambda w: len(w) == 2)
    d.expect("WATCHDOG=1")
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        _wait_log(d, "every worker is silent", timeout=15)
        # Pings every 0.1 s until then (drop those still queued); none for 1 s
        # after (ten intervals).
        d.notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                d.notify.recv(4096)
        with pytest.raises(AssertionError, match="no 'WATCHDOG=1' within"):
            d.expect("WATCHDOG=1", timeout=1)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    d.expect("WATCHDOG=1")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0


def test_deleted_socket_and_a_broken_deployment_say_what_is_left(start: object) -> None:
    assert callable(start)
    d: Daemon = start(workers=2)
    os.unlink(d.sock)
    _wait_log(d, "the socket file is gone", timeout=15)
    (d.appdir / "broken-import").touch()
    d.proc.send_signal(signal.SIGHUP)
    assert "reload failed" in d.expect("READY=1")
    assert "the old workers still listen on the socket whose file was gone" in d.log_text()
    (d.appdir / "broken-import").unlink()
    d.proc.send_signal(signal.SIGHUP)
    assert "workers serving" in d.expect("READY=1")
    assert scgi_get(d.sock)[0] == 200
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0
