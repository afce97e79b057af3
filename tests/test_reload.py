"""``--reload``: the real ``python -m trioscgi --reload`` process restarting its app on a change."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_helper import expect_notification
from test_supervisor import scgi_get

from trioscgi._config import Config, ConfigError
from trioscgi._daemon.reload import _Filter, check_reload, reload_dirs

REPO = Path(__file__).resolve().parent.parent


def app_source(version: str) -> str:
    # Each version answers its own text, so a response says which code ran.
    return (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        f"    body = b'version {version}'\n"
        "    await send({'type': 'http.response.start', 'status': 200,\n"
        "                'headers': [(b'content-length', str(len(body)).encode())]})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )


class Dev:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.appdir = workdir / "app"
        self.sock = str(workdir / "app.sock")
        self.log = workdir / "log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(workdir / "notify"))
        self.messages: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *flags: str) -> None:
        env = dict(os.environ, NOTIFY_SOCKET=str(self.workdir / "notify"), PYTHONPATH=str(REPO))
        args = ["--app-dir", str(self.appdir), "--bind", f"unix:{self.sock}", "--reload"]
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trioscgi", *args, *flags, "devapp:app"],
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

    def write(self, text: str) -> None:
        # Written to a temporary name and renamed: the watcher never sees a
        # half-written file, and the new worker never imports one.
        tmp = self.appdir / "devapp.py.tmp"
        tmp.write_text(text)
        tmp.rename(self.appdir / "devapp.py")

    def body(self) -> bytes:
        status, body = scgi_get(self.sock)
        assert status == 200, (status, body)
        return body

    def wait_body(self, expected: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (body := self.body()) != expected:
            assert time.monotonic() < deadline, f"still {body!r}; log:\n{self.log_text()}"

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log_text()}"
            time.sleep(0.02)  # polling a file; not a timing assumption


class Load:
    """Clients sending requests back to back until stopped; every failure recorded."""

    def __init__(self, sock: str, clients: int = 2) -> None:
        self.sock = sock
        self.stop = threading.Event()
        self.bodies: list[bytes] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def client(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = scgi_get(self.sock, timeout=30)
            except Exception as exc:  # ConnectionRefusedError above all
                self.failures.append(repr(exc))
                continue
            if status != 200:
                self.failures.append(f"status {status}")
            self.bodies.append(body)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.fixture
def dev() -> Iterator[Dev]:
    d = Path(f"/tmp/tsr-{os.getpid()}-{time.monotonic_ns()}")
    (d / "app").mkdir(parents=True)
    (d / "app" / "devapp.py").write_text(app_source("1"))
    dev = Dev(d)
    try:
        yield dev
    finally:
        if dev.proc is not None and dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()
        dev.notify.close()
        shutil.rmtree(d, ignore_errors=True)


def test_a_change_reloads_with_no_refused_connection(dev: Dev) -> None:
    dev.start()
    dev.expect("READY=1")
    dev.wait_log("--reload: watching")
    assert dev.body() == b"version 1"
    load = Load(dev.sock, clients=2)
    try:
        deadline = time.monotonic() + 30
        while len(load.bodies) < 10:  # the load is running before the first change
            assert time.monotonic() < deadline and not load.failures, load.failures
            time.sleep(0.01)
        dev.write(app_source("2"))
        dev.wait_body(b"version 2")
        dev.write(app_source("3"))
        dev.wait_body(b"version 3")
        # The load runs on until it has been answered by the last version too: that
        # the test's own request saw it first says nothing of the load's threads.
        deadline = time.monotonic() + 30
        while b"version 3" not in load.bodies:
            assert time.monotonic() < deadline and not load.failures, load.failures
            time.sleep(0.01)
    finally:
        load.finish()
    assert load.failures == []
    # The load saw every version, the reloads happened while it ran.
    assert {b"version 1", b"version 2", b"version 3"} <= set(load.bodies)
    assert "--reload: " in dev.log_text() and "devapp.py changed" in dev.log_text()
    assert dev.proc is not None
    dev.proc.terminate()
    assert dev.proc.wait(timeout=60) == 0
    # The watcher went with it: no process of the group is left.
    with pytest.raises(ProcessLookupError):
        os.killpg(dev.proc.pid, 0)


def test_an_import_error_keeps_the_old_app_until_the_next_change(dev: Dev) -> None:
    dev.start()
    dev.expect("READY=1")
    dev.wait_log("--reload: watching")
    dev.write("raise RuntimeError('typo in the new code')\n")
    dev.wait_log("reload failed")
    assert "typo in the new code" in dev.log_text()
    # The old code serves meanwhile; the server did not exit.
    assert dev.body() == b"version 1"
    assert dev.proc is not None and dev.proc.poll() is None
    dev.write(app_source("fixed"))
    dev.wait_body(b"version fixed")


def test_a_broken_app_at_start_waits_for_a_fix(dev: Dev) -> None:
    (dev.appdir / "devapp.py").write_text("import no_such_module_here\n")
    dev.start()
    dev.wait_log("waiting for a change")
    dev.wait_log("--reload: watching")
    assert dev.proc is not None and dev.proc.poll() is None
    dev.write(app_source("fixed"))
    dev.expect("READY=1")
    dev.wait_log("--reload: watching")
    assert dev.body() == b"version fixed"


def test_excluded_and_not_included_files_do_not_reload(dev: Dev) -> None:
    dev.start("--reload-exclude", "ignored_*.py", "--reload-include", "*.py")
    dev.expect("READY=1")
    dev.wait_log("--reload: watching")
    (dev.appdir / "ignored_notes.py").write_text("x = 1\n")
    (dev.appdir / "notes.txt").write_text("x\n")
    # Then a change that counts: the only reload the log shows is for it.
    dev.write(app_source("2"))
    dev.wait_body(b"version 2")
    log = dev.log_text()
    assert "ignored_notes.py" not in log and "notes.txt" not in log
    assert log.count("--reload: starting") == 1, log


def test_filter_matches_name_or_path_and_exclusion_wins(tmp_path: Path) -> None:
    from watchfiles import Change

    f = _Filter(["*.py", "*/templates/*"], ["*_test.py"])
    assert f(Change.modified, str(tmp_path / "a.py"))
    assert f(Change.modified, str(tmp_path / "templates" / "page.html"))
    assert not f(Change.modified, str(tmp_path / "a_test.py"))
    assert not f(Change.modified, str(tmp_path / "a.txt"))
    # watchfiles' own ignores still apply (bytecode, VCS directories).
    assert not f(Change.modified, str(tmp_path / "__pycache__" / "a.cpython-311.pyc"))
    assert not f(Change.modified, str(tmp_path / ".git" / "x.py"))


def test_reload_dirs_default_to_app_dir_then_cwd(tmp_path: Path) -> None:
    assert reload_dirs(Config(app_dir=str(tmp_path))) == [str(tmp_path)]
    assert reload_dirs(Config()) == [str(Path.cwd())]
    assert reload_dirs(Config(app_dir="x", reload_dirs=[str(tmp_path)])) == [str(tmp_path)]


def test_reload_with_workers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="workers = 2"):
        check_reload(Config(reload=True, workers=2))
    check_reload(Config(reload=True))
    check_reload(Config(workers=2))


def test_reload_with_workers_exits_2_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trioscgi", "--reload", "-w", "2", "x:app"],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert b"--reload runs one worker process, but workers = 2" in proc.stderr


def test_a_reload_behind_nginx_shows_no_502(dev: Dev) -> None:
    # The set-up of docs/operations.md: nginx in front, trioscgi --reload behind.
    from frontends import run_nginx

    dev.start()
    dev.expect("READY=1")
    dev.wait_log("--reload: watching")
    with run_nginx(f"unix:{dev.sock}") as nginx:
        assert nginx.get("/").text == "version 1"
        seen: list[tuple[int, str]] = []
        dev.write(app_source("2"))
        deadline = time.monotonic() + 30
        while not seen or seen[-1][1] != "version 2":
            assert time.monotonic() < deadline, f"{seen[-5:]}; log:\n{dev.log_text()}"
            response = nginx.get("/")
            seen.append((response.status, response.text))
        assert {status for status, _ in seen} == {200}, seen
        assert "connect() to unix" not in nginx.log_text(), nginx.log_text()
