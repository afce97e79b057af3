"""End to end over uwsgi: nginx ``uwsgi_pass`` and Apache mod_proxy_uwsgi in front of the
real trioscgi process, as a drop-in for a uWSGI backend.

nginx runs with the stock ``uwsgi_params`` (tests/frontends.py's ``nginx_uwsgi_config``):
at ``/`` as users have it (no SCRIPT_NAME, PATH_INFO = $document_uri), at ``/app/`` with
``uwsgi_param SCRIPT_NAME /app``, at ``/m30/`` with ``uwsgi_modifier1 30`` too, and at
``/unbuffered/`` with ``uwsgi_request_buffering off``. The Starlette app serves over the
default ``protocol = "auto"``; Django, Flask and FastAPI run with ``--protocol uwsgi``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import e2e_checks as checks
import pytest
from frontends import (
    FrontEnd,
    TrioscgiProcess,
    free_port,
    http_request,
    run_apache_uwsgi,
    run_nginx_mixed,
    run_nginx_uwsgi,
    run_trioscgi,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
UWSGI = ["--protocol", "uwsgi"]


@pytest.fixture(scope="module", params=["unix", "tcp"])
def nginx(request: pytest.FixtureRequest, starlette_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx_uwsgi(starlette_server.backends[request.param]) as fe:
        yield fe


def blocks(kib: int) -> bytes:
    """What the app's /blocks?kib= streams."""
    return bytes(i % 251 for i in range(kib * 1024))


def check_stock_surface(fe: FrontEnd, prefix: str) -> None:
    """What a site behind uwsgi_pass does all day, under ``prefix``."""
    checks.check_routes(fe, prefix)
    checks.check_query(fe, prefix)
    checks.check_paths(fe, prefix, root_path=prefix)
    checks.check_form_urlencoded(fe, prefix)
    checks.check_form_multipart(fe, prefix)  # a 300 KiB file
    body = os.urandom(200 * 1024)
    got = checks.json_of(fe.request("POST", f"{prefix}/body", body=body))
    assert (got["size"], got["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    r = fe.get(f"{prefix}/blocks?kib=1024")  # 1 MiB in 16 sends
    assert (r.status, r.body) == (200, blocks(1024))
    checks.check_streaming(fe, prefix)
    r = fe.get(f"{prefix}/missing")
    assert (r.status, r.body) == (404, b"not here\n")
    assert (r.header("x-custom"), r.header("cache-control")) == ("yes", "no-store")
    # 50 in a row: one connection each.
    assert [fe.get(f"{prefix}/").status for _ in range(50)] == [200] * 50


# --- nginx uwsgi_pass --------------------------------------------------------------------


def test_nginx_stock_uwsgi_params(nginx: FrontEnd, e2e_dir: Path) -> None:
    check_stock_surface(nginx, "")
    checks.check_duplicate_headers(nginx, "", joined=False)  # nginx 1.22 repeats them
    checks.check_client_abort(nginx, "", e2e_dir)


@pytest.mark.parametrize("prefix", ["/app", "/m30"], ids=["script_name", "modifier1_30"])
def test_nginx_under_a_prefix(nginx: FrontEnd, prefix: str) -> None:
    # PATH_INFO arrives as /app/... (the prefix in it, modifier1 30 or not): stripped once.
    # (The prefix twice in a path, stripped once: tests/test_scope.py, from captures.)
    check_stock_surface(nginx, prefix)


def test_nginx_unbuffered_uploads(nginx: FrontEnd) -> None:
    # With a Content-Length the body streams through as it comes.
    checks.check_large_body(nginx, "/unbuffered", size=3 * 1024 * 1024)
    # Chunked: nginx buffers it all the same (ngx_http_uwsgi_handler streams only a body
    # of known length) and sends the de-chunked length as CONTENT_LENGTH.
    pieces = [b"hello ", b"chunked ", b"world"]
    got = checks.json_of(nginx.request("POST", "/unbuffered/echo/up", body=pieces, chunked=True))
    headers = dict((k, v) for k, v in got["headers"])
    assert headers["content-length"] == str(len(b"".join(pieces)))
    assert "transfer-encoding" not in headers
    checks.check_chunked_body(nginx, "/unbuffered")


# --- WebSocket through nginx's uwsgi tunnel ----------------------------------------------


def ws(fe: FrontEnd, target: str) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{fe.port}{target}",
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        max_size=4 << 20,
    )


def ended_code(fe: FrontEnd, session: str) -> int | None:
    """The disconnect code the app's session got (None: not yet), bounded."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        code = json.loads(fe.get(f"/ws/ended?id={session}").body)
        if code is not None or time.monotonic() > deadline:
            return code  # type: ignore[no-any-return]
        time.sleep(0.02)


@pytest.mark.parametrize("prefix", ["", "/app"])
def test_websocket_through_nginx_uwsgi_tunnel(nginx: FrontEnd, prefix: str) -> None:
    name = f"uwsgi{prefix.replace('/', '-')}"
    with ws(nginx, f"{prefix}/ws/echo?id={name}") as c:
        c.send("héllo")
        assert c.recv(TIMEOUT) == "héllo"
        big = os.urandom(1 << 20)
        c.send(big)
        assert c.recv(TIMEOUT) == big
        assert c.ping(b"are you there").wait(TIMEOUT)
        c.send("scope")
        got = json.loads(c.recv(TIMEOUT))
        assert (got["path"], got["root_path"]) == (f"{prefix}/ws/echo", prefix)
        c.close(4002, "bye")
    assert ended_code(nginx, name) == 4002
    # The server closes with a code of the app's.
    with ws(nginx, f"{prefix}/ws/echo?id={name}-srv") as c:
        c.send("close 4001")
        with pytest.raises(ConnectionClosed) as info:
            c.recv(TIMEOUT)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "asked to")


# --- Apache mod_proxy_uwsgi --------------------------------------------------------------


def test_apache_mod_proxy_uwsgi(starlette_server: TrioscgiProcess) -> None:
    with run_apache_uwsgi(starlette_server.backends["tcp"]) as fe:
        for prefix in ("", "/app"):
            checks.check_routes(fe, prefix)
            checks.check_query(fe, prefix)
            checks.check_paths(fe, prefix, root_path=prefix)
            checks.check_form_multipart(fe, prefix)
            r = fe.get(f"{prefix}/blocks?kib=1024")
            assert (r.status, r.body) == (200, blocks(1024))
            r = fe.get(f"{prefix}/missing")
            assert (r.status, r.header("x-custom")) == (404, "yes")
        # mod_proxy_uwsgi refuses a chunked body itself (411).
        assert fe.request("POST", "/body", body=[b"a", b"b"], chunked=True).status == 411


# --- apps ----------------------------------------------------------------------------------


def test_fastapi(fastapi_server: TrioscgiProcess) -> None:
    with run_nginx_uwsgi(fastapi_server.backends["unix"]) as fe:
        checks.check_fastapi(fe, "")
        checks.check_fastapi(fe, "/app")


@pytest.mark.parametrize("app", ["flask", "django"])
def test_wsgi_apps(e2e_dir: Path, app: str) -> None:
    spec = "flask_app:app" if app == "flask" else "django_app.wsgi:application"
    with (
        run_trioscgi(spec, sockdir=e2e_dir, logdir=e2e_dir, args=UWSGI, name=f"u-{app}") as srv,
        run_nginx_uwsgi(srv.backends["tcp"]) as fe,
    ):
        r = fe.get("/")
        assert (r.status, r.body) == (200, f"hello from {app}\n".encode())
        got = checks.json_of(fe.get("/echo/a%20b?q=1"))
        assert (got["rest"], got["path"], got["script_name"]) == ("a b", "/echo/a b", "")
        got = checks.json_of(fe.get("/app/echo/z?q=2"))
        assert (got["script_name"], got["path_info"]) == ("/app", "/echo/z")
        r = fe.get("/stream?n=50")
        assert r.status == 200 and r.body.count(b"\n") == 50


def test_django_asgi(e2e_dir: Path) -> None:
    env = {"DJANGO_ASGI_DB": str(e2e_dir / "u-django.db"), "DJANGO_ASGI_MARKS": str(e2e_dir)}
    with (
        run_trioscgi(
            "django_asgi_app.asgi:application",
            sockdir=e2e_dir,
            logdir=e2e_dir,
            args=UWSGI,
            env=env,
            name="u-django-asgi",
        ) as srv,
        run_nginx_uwsgi(srv.backends["unix"]) as fe,
    ):
        r = fe.get("/")
        assert (r.status, r.body) == (200, b"hello from django asgi\n")
        r = fe.get("/app/stream?n=20")
        assert r.status == 200 and r.body.count(b"\n") == 20


# --- one socket, three protocols; metrics ------------------------------------------------


def metric(port: int, name: str, labels: str) -> float:
    text = http_request(port, "GET", "/metrics").text
    m = re.search(rf"^{name}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    assert m is not None, f"{name}{{{labels}}} missing"
    return float(m.group(1))


def test_one_socket_answers_scgi_fastcgi_and_uwsgi(e2e_dir: Path) -> None:
    """nginx's scgi_pass, fastcgi_pass (with and without keep-conn) and uwsgi_pass to one
    ``auto`` socket; tests/apps/faults_app.py answers /pid and cuts /cut at 512 KiB."""
    metrics_port = free_port()
    args = ["--metrics-bind", f"127.0.0.1:{metrics_port}", "--access-log", "-"]
    env = {"FAULTS_APP_LOG": "/dev/null"}
    with (
        run_trioscgi(
            "faults_app:app", sockdir=e2e_dir, logdir=e2e_dir, args=args, env=env, name="u-mixed"
        ) as srv,
        run_nginx_mixed(srv.backends["tcp"]) as fe,
    ):
        pids = {fe.get(f"{prefix}/pid").body for prefix in ("/scgi", "/fcgi", "/fcgi-keep")}
        assert pids == {fe.get("/uwsgi/pid").body} == {str(srv.proc.pid).encode()}
        label = 'protocol="uwsgi",status_class="2xx"'
        assert metric(metrics_port, "trioscgi_requests_total", label) == 1
        checks.wait_for(
            lambda: '"GET /uwsgi/pid HTTP/1.1" 200' in srv.stdout.read_text(),
            "the access log line of the uwsgi request",
        )
        # A response the app breaks off: over TCP the reset reaches the client as a cut.
        cut_before = metric(metrics_port, "trioscgi_responses_cut_total", 'wire="uwsgi"')
        with socket.create_connection(("127.0.0.1", fe.port), timeout=TIMEOUT) as c:
            c.sendall(b"GET /uwsgi/cut HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            try:
                while chunk := c.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        assert not data.endswith(b"0\r\n\r\n"), "the cut response looked complete"
        assert len(data) < 600 * 1024
        deadline = time.monotonic() + TIMEOUT
        while metric(metrics_port, "trioscgi_responses_cut_total", 'wire="uwsgi"') == cut_before:
            assert time.monotonic() < deadline, "the cut was not counted under wire=uwsgi"
            time.sleep(0.05)
