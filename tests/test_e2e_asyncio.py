"""End to end: asyncio applications (Django's ASGI handler, Quart, FastAPI on asyncio-only
libraries) behind real nginx (stock scgi_params) in front of the real trioscgi process."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e_checks as checks
import pytest
from frontends import (
    APPS_DIR,
    HTTP_TIMEOUT,
    FrontEnd,
    HTTPResponse,
    TrioscgiProcess,
    backend_address,
    connectable,
    http_request,
    run_nginx,
    run_trioscgi,
    start_trioscgi,
    stop_process,
)

pytestmark = pytest.mark.e2e


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def django_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    """Django's ASGI application with no app_loop setting (auto: asyncio)."""
    env = {"DJANGO_ASGI_DB": str(e2e_dir / "django.db"), "DJANGO_ASGI_MARKS": str(e2e_dir)}
    with run_trioscgi(
        "django_asgi_app.asgi:application",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        env=env,
        name="django-asgi",
    ) as s:
        yield s


@pytest.fixture(scope="module", params=["unix", "tcp"])
def django_nginx(
    request: pytest.FixtureRequest, django_server: TrioscgiProcess
) -> Iterator[FrontEnd]:
    with run_nginx(django_server.backends[request.param]) as fe:
        yield fe


@pytest.fixture(scope="module")
def quart_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    """Quart, two worker processes, no app_loop setting (auto: asyncio)."""
    with run_trioscgi(
        "quart_app:app",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        args=["--workers", "2"],
        env={"QUART_MARKS": str(e2e_dir)},
        name="quart",
    ) as s:
        yield s
    assert (e2e_dir / "quart.shutdown").read_text() == "after_serving ran\n"


@pytest.fixture(scope="module")
def quart_nginx(quart_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx(quart_server.backends["tcp"]) as fe:
        yield fe


@pytest.fixture(scope="module")
def fastapi_asyncio_nginx(e2e_dir: Path) -> Iterator[FrontEnd]:
    with (
        run_trioscgi(
            "fastapi_asyncio_app:app",
            sockdir=e2e_dir,
            logdir=e2e_dir,
            args=["--app-loop", "asyncio", "--access-log", "-"],
            env={"ECHO_SOCKET": str(e2e_dir / "echo.sock")},
            name="fastapi-asyncio",
        ) as server,
        run_nginx(server.backends["unix"]) as fe,
    ):
        yield fe


@pytest.fixture(scope="module")
def sanic_nginx(e2e_dir: Path) -> Iterator[FrontEnd]:
    """Sanic in ASGI mode, no app_loop setting: auto must put it on asyncio."""
    with (
        run_trioscgi("sanic_app:app", sockdir=e2e_dir, logdir=e2e_dir, name="sanic") as server,
        run_nginx(server.backends["unix"]) as fe,
    ):
        yield fe


# --------------------------------------------------------------------------- Django


def test_django_async_view(django_nginx: FrontEnd) -> None:
    r = django_nginx.get("/")
    assert (r.status, r.body) == (200, b"hello from django asgi\n")


@pytest.mark.parametrize("prefix", ["", "/app"], ids=["stock", "prefix"])
def test_django_streaming_async_view(django_nginx: FrontEnd, prefix: str) -> None:
    r = django_nginx.get(f"{prefix}/stream?n=7")
    assert r.status == 200
    assert r.body == b"".join(f"chunk {i}\n".encode() for i in range(7))
    assert r.header("transfer-encoding") == "chunked"  # streamed, not buffered whole


def test_django_orm_through_sync_to_async(django_nginx: FrontEnd) -> None:
    got = checks.json_of(django_nginx.get("/app/orm?tag=t1"))
    assert got == {
        "users": ["admin"],
        "count": 1,
        "same_thread": True,
        "not_loop_thread": True,
        "tag_in_thread": "t1",
    }


def _cookies(resp: HTTPResponse) -> dict[str, str]:
    jar = {}
    for name, value in resp.headers:
        if name.lower() == "set-cookie":
            key, _, rest = value.partition("=")
            jar[key] = rest.partition(";")[0]
    return jar


def test_django_admin_login_with_csrf_under_a_prefix(django_nginx: FrontEnd) -> None:
    # Mounted at /app (SCRIPT_NAME -> root_path): Django's URLs carry the prefix.
    page = django_nginx.get("/app/admin/login/?next=/app/admin/")
    assert page.status == 200, page.text[:500]
    assert 'action="/app/admin/login/' in page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None
    csrf_cookie = _cookies(page)["csrftoken"]
    form = (
        f"csrfmiddlewaretoken={token.group(1)}&username=admin&password=admin-password"
        "&next=/app/admin/"
    ).encode()
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Cookie", f"csrftoken={csrf_cookie}"),
    ]
    # Without the token: refused by the CSRF middleware.
    refused = django_nginx.request("POST", "/app/admin/login/", headers=headers[:1], body=form)
    assert refused.status == 403
    login = django_nginx.request("POST", "/app/admin/login/", headers=headers, body=form)
    assert login.status == 302, login.text[:2000]
    assert login.header("location") == "/app/admin/"
    session = _cookies(login)["sessionid"]
    home = django_nginx.get("/app/admin/", headers=[("Cookie", f"sessionid={session}")])
    assert home.status == 200
    assert "Site administration" in home.text
    assert 'href="/app/admin/logout/"' in home.text or 'action="/app/admin/logout/"' in home.text


def test_django_client_abort_while_streaming(django_nginx: FrontEnd, e2e_dir: Path) -> None:
    mark = f"abort-{time.monotonic_ns()}"
    request = f"GET /forever?mark={mark} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", django_nginx.port), timeout=HTTP_TIMEOUT) as s:
        s.sendall(request)
        received = 0
        while received < 256 * 1024:
            data = s.recv(65536)
            assert data, "stream ended before the client aborted"
            received += len(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    marker = e2e_dir / f"{mark}.cancelled"
    checks.wait_for(marker.exists, "the view's stream to be cancelled")
    assert marker.read_text() in ("CancelledError", "GeneratorExit")
    for _ in range(3):
        assert django_nginx.get("/").status == 200


def test_sigterm_completes_asyncio_requests_in_flight(e2e_dir: Path) -> None:
    tag = f"sigterm-{time.monotonic_ns()}"
    env = {"DJANGO_ASGI_DB": str(e2e_dir / "django.db"), "DJANGO_ASGI_MARKS": str(e2e_dir)}
    server = start_trioscgi(
        "django_asgi_app.asgi:application",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        args=["--graceful-timeout", "20"],
        env=env,
        name=tag,
    )
    try:
        with run_nginx(server.backends["unix"]) as fe:
            results: dict[int, Any] = {}

            def client(i: int) -> None:
                try:
                    results[i] = http_request(fe.port, "GET", f"/slow?mark={tag}-{i}")
                except BaseException as e:
                    results[i] = e

            threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            try:
                for i in range(3):
                    started = e2e_dir / f"{tag}-{i}.started"
                    checks.wait_for(started.exists, f"request {i} to reach the view")
                server.proc.send_signal(signal.SIGTERM)
                tcp = backend_address(server.backends["tcp"])
                checks.wait_for(lambda: not connectable(tcp), "the listeners to close")
                assert server.proc.poll() is None, "exited with requests in flight"
            finally:
                for i in range(3):
                    (e2e_dir / f"{tag}-{i}.release").touch()
                for t in threads:
                    t.join(HTTP_TIMEOUT + 5)
            for i in range(3):
                resp = results[i]
                assert isinstance(resp, HTTPResponse), resp
                assert (resp.status, resp.body) == (200, f"{tag}-{i} done\n".encode())
            assert server.proc.wait(timeout=checks.WAIT_LIMIT) == 0, server.logs()
    finally:
        stop_process(server.proc, signal.SIGKILL)
    assert "Traceback" not in server.logs()


# --------------------------------------------------------------------------- Quart


def test_quart_route_stream_and_startup_state(quart_nginx: FrontEnd) -> None:
    r = quart_nginx.get("/")
    assert (r.status, r.body) == (200, b"hello from quart\n")
    stream = quart_nginx.get("/stream?n=6")
    assert stream.status == 200
    assert stream.body == b"".join(f"part {i}\n".encode() for i in range(6))
    assert checks.json_of(quart_nginx.get("/state")) == {
        "greeting": "set in before_serving",
        "same_loop": True,
    }


def test_quart_client_abort_while_streaming(quart_nginx: FrontEnd, e2e_dir: Path) -> None:
    checks.check_client_abort(quart_nginx, "", e2e_dir)


def test_quart_workers_serve_concurrently(quart_nginx: FrontEnd) -> None:
    # Two worker processes, each with its own loop: many requests at once all answer.
    results: list[int] = []

    def client() -> None:
        for _ in range(5):
            results.append(quart_nginx.get("/").status)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HTTP_TIMEOUT * 5)
    assert results == [200] * 30


# --------------------------------------------------------------------------- FastAPI


# --------------------------------------------------------------------------- Sanic


def test_sanic_starts_and_answers_under_auto(sanic_nginx: FrontEnd) -> None:
    r = sanic_nginx.get("/")
    assert (r.status, r.body) == (200, b"hello from sanic")
    assert checks.json_of(sanic_nginx.get("/started")) == {"started": "before_server_start ran"}
    body = bytes(range(256)) * 2048  # 512 KiB, sent chunked in pieces
    pieces = [body[i : i + 60_000] for i in range(0, len(body), 60_000)]
    r = sanic_nginx.request("POST", "/sha256", body=pieces, chunked=True)
    assert checks.json_of(r) == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_fastapi_on_asyncio_only_libraries(fastapi_asyncio_nginx: FrontEnd) -> None:
    assert checks.json_of(fastapi_asyncio_nginx.get("/notes")) == {"notes": ["one", "two"]}
    assert checks.json_of(fastapi_asyncio_nginx.get("/echo/marco")) == {"answer": "echo: marco"}


def test_asyncio_library_in_a_lifespan_on_trio_fails_startup_with_the_hint(e2e_dir: Path) -> None:
    # The FastAPI app starts an asyncio server and opens aiosqlite in its
    # lifespan; without --app-loop, auto puts FastAPI on trio. The startup
    # fails (exit 3) with one failure line that ends with the hint, and no
    # shutdown line before or after it.
    argv = [sys.executable, "-m", "trioscgi", "--app-dir", str(APPS_DIR)]
    argv += ["--bind", f"unix:{e2e_dir}/wrong-loop.sock", "fastapi_asyncio_app:app"]
    proc = subprocess.run(
        argv,
        check=False,
        env={**os.environ, "ECHO_SOCKET": str(e2e_dir / "wrong-loop-echo.sock")},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "shutdown" not in err, err
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if "[CRITICAL]" in line)
    assert lines[first].endswith("lifespan startup failed: Traceback (most recent call last):")
    assert "RuntimeError: no running event loop" in err  # asyncio.start_unix_server
    assert lines[-1].endswith('set app_loop = "asyncio" (--app-loop asyncio); see docs/asyncio.md')


def test_http_client_sees_complete_responses(fastapi_asyncio_nginx: FrontEnd) -> None:
    # Several requests on one keep-alive connection to nginx: each response is whole.
    conn = http.client.HTTPConnection("127.0.0.1", fastapi_asyncio_nginx.port, timeout=10)
    try:
        for word in ("a", "b", "c"):
            conn.request("GET", f"/echo/{word}")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.read() == f'{{"answer":"echo: {word}"}}'.encode()
    finally:
        conn.close()
