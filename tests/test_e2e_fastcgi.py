"""End to end over FastCGI: real nginx, Apache (mod_proxy_fcgi, mod_fcgid), lighttpd, HAProxy
and cgi-fcgi in front of the real trioscgi process.

The servers run with the default ``protocol = "auto"``: the same sockets serve the SCGI
end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e_checks as checks
import pytest
from frontends import (
    FrontEnd,
    TrioscgiProcess,
    cgi_fcgi,
    http_request,
    python_for_apache_user,
    run_apache_fastcgi,
    run_apache_fcgid,
    run_haproxy_fastcgi,
    run_lighttpd_fastcgi,
    run_nginx_fastcgi,
    run_trioscgi,
    start_trioscgi,
    stop_process,
)

pytestmark = pytest.mark.e2e

APPS = Path(__file__).resolve().parent / "apps"


@pytest.fixture(scope="module", params=["unix", "tcp"])
def nginx(request: pytest.FixtureRequest, starlette_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx_fastcgi(starlette_server.backends[request.param]) as fe:
        yield fe


@pytest.fixture(scope="module", params=["unix", "tcp"])
def nginx_keep(
    request: pytest.FixtureRequest, starlette_server: TrioscgiProcess
) -> Iterator[FrontEnd]:
    with run_nginx_fastcgi(starlette_server.backends[request.param], keep_conn=True) as fe:
        yield fe


def check_everything(fe: FrontEnd, prefix: str, tmp: Path) -> None:
    checks.check_routes(fe, prefix)
    checks.check_query(fe, prefix)
    checks.check_form_urlencoded(fe, prefix)
    checks.check_form_multipart(fe, prefix)
    checks.check_large_body(fe, prefix)
    checks.check_streaming(fe, prefix)
    checks.check_client_abort(fe, prefix, tmp)


# --- nginx ---------------------------------------------------------------------------


def test_nginx_stock_fastcgi_params(nginx: FrontEnd, e2e_dir: Path) -> None:
    # Stock fastcgi_params: SCRIPT_NAME is the whole path, CONTENT_LENGTH empty on a GET.
    checks.check_paths(nginx, "", root_path="")
    checks.check_duplicate_headers(nginx, "", joined=False)  # nginx 1.22 repeats them
    check_everything(nginx, "", e2e_dir)


def test_nginx_keep_conn(nginx_keep: FrontEnd, e2e_dir: Path) -> None:
    check_everything(nginx_keep, "", e2e_dir)
    # Many requests over the kept connections, some of them at once.
    results: list[int] = []

    def client() -> None:
        for _ in range(25):
            results.append(nginx_keep.get("/").status)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 200


def test_nginx_split_path_info_gives_root_path(nginx: FrontEnd) -> None:
    checks.check_paths(nginx, "/app", root_path="/app")


def test_nginx_unbuffered_chunked_upload_streams(nginx: FrontEnd) -> None:
    # fastcgi_request_buffering off: no CONTENT_LENGTH, the STDIN stream is the body.
    checks.check_chunked_body(nginx, "/unbuffered")
    checks.check_large_body(nginx, "/unbuffered", size=3 * 1024 * 1024)


def test_nginx_fastapi(fastapi_server: TrioscgiProcess) -> None:
    with run_nginx_fastcgi(fastapi_server.backends["unix"], keep_conn=True) as fe:
        checks.check_fastapi(fe, "")


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigterm_completes_request_in_flight_over_keep_conn(transport: str, e2e_dir: Path) -> None:
    def run(backend: str) -> Any:
        return run_nginx_fastcgi(backend, keep_conn=True)

    checks.check_sigterm_in_flight(run, transport, e2e_dir)


# --- Apache --------------------------------------------------------------------------


@pytest.mark.parametrize("reuse", [False, True], ids=["default", "enablereuse"])
def test_apache_mod_proxy_fcgi(
    reuse: bool, starlette_server: TrioscgiProcess, rooted_server: TrioscgiProcess, e2e_dir: Path
) -> None:
    with run_apache_fastcgi(starlette_server.backends["tcp"], reuse=reuse) as fe:
        # SCRIPT_NAME = the whole path, as mod_proxy_scgi: never a root path.
        checks.check_paths(fe, "", root_path="")
        checks.check_duplicate_headers(fe, "", joined=True)
        check_everything(fe, "", e2e_dir)
        # mod_proxy_fcgi streams a chunked upload with no CONTENT_LENGTH.
        checks.check_chunked_body(fe, "")
    with run_apache_fastcgi(rooted_server.backends["unix"], reuse=reuse) as fe:
        checks.check_paths(fe, "/app", root_path="/app")


def test_apache_mod_fcgid_spawns_trioscgi(e2e_dir: Path, tmp_path: Path) -> None:
    """mod_fcgid execs trioscgi with a listening socket on fd 0 and no address."""
    python, env = python_for_apache_user()
    marker_dir = e2e_dir / f"fcgid-{time.monotonic_ns()}"
    marker_dir.mkdir()
    marker_dir.chmod(0o777)
    env = {**env, "E2E_FILE_DIR": str(marker_dir)}
    command = [python, "-m", "trioscgi", "--app-dir", str(APPS), "starlette_app:app"]
    with run_apache_fcgid(command, env=env) as fe:
        for variant, prefix in fe.variants.items():
            # SCRIPT_NAME is the script (or the Alias): the root path, with no setting.
            checks.check_paths(fe, prefix, root_path=prefix)
            checks.check_routes(fe, prefix)
            checks.check_form_urlencoded(fe, prefix)
            checks.check_streaming(fe, prefix)
            assert variant
    # mod_fcgid stops trioscgi with SIGTERM as Apache stops: it exits by itself, and
    # nothing is left to kill.
    assert not fe.app_killed, "mod_fcgid had to SIGKILL trioscgi"
    assert not fe.left_behind


# --- lighttpd ------------------------------------------------------------------------


def test_lighttpd_mod_fastcgi(starlette_server: TrioscgiProcess, e2e_dir: Path) -> None:
    with run_lighttpd_fastcgi(starlette_server.backends["unix"]) as fe:
        checks.check_paths(fe, "", root_path="")
        checks.check_paths(fe, "/app", root_path="/app")
        checks.check_duplicate_headers(fe, "", joined=True)
        check_everything(fe, "/app", e2e_dir)


# --- HAProxy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mpxs_conns": True, "max_reqs": 16, "get_values": True, "http_reuse": "always"},
    ],
    ids=["keep-conn", "mpxs-conns"],
)
def test_haproxy_fcgi_app(
    options: dict[str, Any], starlette_server: TrioscgiProcess, e2e_dir: Path
) -> None:
    with run_haproxy_fastcgi(starlette_server.backends["unix"], **options) as fe:
        checks.check_routes(fe, "")
        checks.check_paths(fe, "/app", root_path="/app")
        checks.check_form_urlencoded(fe, "")
        checks.check_large_body(fe, "", size=1024 * 1024)
        checks.check_streaming(fe, "")
        results: list[int] = []

        def client() -> None:
            for _ in range(20):
                results.append(fe.get("/items/7").status)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [200] * 160
        checks.check_client_abort(fe, "", e2e_dir)


# --- cgi-fcgi: an independent client --------------------------------------------------


def test_cgi_fcgi_reference_client(starlette_server: TrioscgiProcess) -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "REQUEST_URI": "/body",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "CONTENT_TYPE": "application/octet-stream",
        "CONTENT_LENGTH": "11",
    }
    for transport in ("unix", "tcp"):
        out = cgi_fcgi(starlette_server.backends[transport], environ, b"hello world")
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"Status: 200 OK"), out[:300]
        assert json.loads(body)["size"] == 11


# --- WSGI apps over FastCGI ---------------------------------------------------------------


def test_flask_and_django_over_fastcgi(e2e_dir: Path) -> None:
    env = {"E2E_FILE_DIR": str(e2e_dir)}
    with (
        run_trioscgi(
            "flask_app:app", sockdir=e2e_dir, logdir=e2e_dir, env=env, name="flask-fcgi"
        ) as flask,
        run_nginx_fastcgi(flask.backends["unix"], keep_conn=True) as fe,
    ):
        resp = fe.get("/")
        assert (resp.status, resp.body) == (200, b"hello from flask\n")
        got = checks.json_of(fe.get("/echo/caf%C3%A9/x?a=1&a=2"))
        assert (got["script_root"], got["path"]) == ("", "/echo/café/x")
        got = checks.json_of(fe.get("/app/echo/y?b=2"))
        assert (got["script_root"], got["path"]) == ("/app", "/echo/y")
        # A chunked upload streamed with no CONTENT_LENGTH reaches wsgi.input whole.
        chunks = [b"a" * 1000, b"b" * 70000]
        got = checks.json_of(fe.request("POST", "/unbuffered/raw", body=chunks, chunked=True))
        assert got["size"] == 71000
    with (
        run_trioscgi(
            "django_app.wsgi:application", sockdir=e2e_dir, logdir=e2e_dir, name="django-fcgi"
        ) as django,
        run_haproxy_fastcgi(django.backends["tcp"]) as fe,
    ):
        assert fe.get("/").status == 200


# --- graceful shutdown with idle kept-alive connections ----------------------------------


def test_sigterm_closes_idle_kept_alive_connections_at_once(e2e_dir: Path) -> None:
    server = start_trioscgi(
        "starlette_app:app",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        args=["--graceful-timeout", "60"],
        name=f"idle-{time.monotonic_ns()}",
    )
    try:
        with run_nginx_fastcgi(server.backends["unix"], keep_conn=True) as fe:
            for _ in range(10):
                assert http_request(fe.port, "GET", "/").status == 200
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=30) == 0, server.logs()
            # Idle connections don't hold the shutdown for graceful_timeout.
            assert time.monotonic() - start < 20
    finally:
        stop_process(server.proc, signal.SIGKILL)


def test_raw_keep_conn_connection_serves_many_requests(starlette_server: TrioscgiProcess) -> None:
    """Sanity check of the wire over a real socket, outside any front-end."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fcgi_client as fc

    path = starlette_server.backends["unix"][len("unix:") :]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(15)
        for i in range(50):
            s.sendall(fc.request(1, "GET", f"/items/{i}", keep=True))
            data = b""
            while b"\x01\x03\x00\x01" not in data:
                chunk = s.recv(65536)
                assert chunk
                data += chunk
            assert f'"item_id":{i}'.encode() in data.replace(b" ", b"")
    assert os.path.exists(path)
