"""End to end: Flask and Django (WSGI) and Starlette's FileResponse behind real nginx.

The real ``python -m trioscgi`` process serves the apps in tests/apps; nginx (stock
scgi_params, and a prefix location with SCRIPT_NAME/PATH_INFO) is in front. Flask's
paths are also checked behind Apache mod_proxy_scgi and lighttpd mod_scgi.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from frontends import (
    HTTP_TIMEOUT,
    FrontEnd,
    TrioscgiProcess,
    run_apache,
    run_lighttpd,
    run_nginx,
    run_trioscgi,
)

from trioscgi import Config

pytestmark = pytest.mark.e2e

FILE_DATA = bytes(range(256)) * 4096  # what the apps' /file serves (1 MiB)
UPLOAD_SIZE = 50 * 1024 * 1024
# "No memory growth beyond a few MB" for a 50 MB upload: the peak RSS of the trioscgi
# process may grow by at most this much while the upload is served.
UPLOAD_RSS_BUDGET = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def flask_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    env = {"E2E_FILE_DIR": str(e2e_dir)}
    with run_trioscgi(
        "flask_app:app", sockdir=e2e_dir, logdir=e2e_dir, env=env, name="flask"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def django_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    with run_trioscgi(
        "django_app.wsgi:application", sockdir=e2e_dir, logdir=e2e_dir, name="django"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def files_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    env = {"E2E_FILE_DIR": str(e2e_dir)}
    with run_trioscgi(
        "files_app:app", sockdir=e2e_dir, logdir=e2e_dir, env=env, name="files"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def flask_nginx(flask_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx(flask_server.backends["unix"]) as fe:
        yield fe


@pytest.fixture(scope="module")
def django_nginx(django_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx(django_server.backends["tcp"]) as fe:
        yield fe


@pytest.fixture(scope="module")
def files_nginx(files_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx(files_server.backends["unix"]) as fe:
        yield fe


def json_of(resp: Any) -> Any:
    assert resp.status == 200, (resp.status, resp.body[:500])
    return json.loads(resp.body)


def proc_status(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def multipart(fields: dict[str, str], name: str, filename: str, data: bytes) -> tuple[str, bytes]:
    boundary = "trioscgi-e2e-boundary-7d1f"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
    )
    body = b"".join(parts) + data + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def big_payload() -> bytes:
    return (bytes(range(256)) * 4096) * (UPLOAD_SIZE // (1024 * 1024))


def check_upload_memory(fe: FrontEnd, server: TrioscgiProcess, target: str) -> None:
    """A 50 MB multipart upload: hashed right, and the server's peak RSS barely moves."""
    pid = server.proc.pid
    content_type, small = multipart({}, "file", "warm.bin", b"w" * 300_000)
    headers = [("Content-Type", content_type)]
    # Warm up: import the form parser, allocate what every upload allocates.
    assert fe.request("POST", target, body=small, headers=headers).status == 200
    peak_before = proc_status(pid, "VmHWM")
    data = big_payload()
    content_type, body = multipart({"note": "big"}, "file", "big.bin", data)
    resp = fe.request("POST", target, body=body, headers=[("Content-Type", content_type)])
    got = json_of(resp)
    assert got["size"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    growth = proc_status(pid, "VmHWM") - peak_before
    print(f"{target}: 50 MB upload, peak RSS growth {growth / 1024:.0f} KiB")  # for the docs
    assert growth <= UPLOAD_RSS_BUDGET, f"peak RSS grew by {growth / 1048576:.1f} MiB"


# --- Flask -------------------------------------------------------------------------------


def test_flask_routes_and_paths(flask_nginx: FrontEnd) -> None:
    resp = flask_nginx.get("/")
    assert (resp.status, resp.body) == (200, b"hello from flask\n")
    got = json_of(flask_nginx.get("/echo/caf%C3%A9/x?a=1&a=2"))
    assert got["rest"] == "café/x"
    assert (got["script_root"], got["path"]) == ("", "/echo/café/x")
    assert got["query"] == [["a", "1"], ["a", "2"]]
    assert got["multithread"] is True
    # The prefix location passes SCRIPT_NAME=/app and PATH_INFO: Flask sees its mount point.
    got = json_of(flask_nginx.get("/app/echo/y?b=2"))
    assert (got["script_root"], got["path"], got["rest"]) == ("/app", "/echo/y", "y")
    assert got["url"].endswith("/app/echo/y?b=2")
    assert flask_nginx.get("/nope").status == 404


@pytest.mark.parametrize("frontend", ["apache", "lighttpd"])
def test_flask_paths_behind_apache_and_lighttpd(
    frontend: str, flask_server: TrioscgiProcess
) -> None:
    # PEP 3333's SCRIPT_NAME/PATH_INFO follow the scope's rules: Apache's
    # SCRIPT_NAME (the whole path) is never the mount point; lighttpd's prefix
    # mount passes SCRIPT_NAME=/app and PATH_INFO.
    run = run_apache if frontend == "apache" else run_lighttpd
    with run(flask_server.backends["tcp"]) as fe:
        got = json_of(fe.get("/echo/caf%C3%A9/x?a=1"))
        assert (got["script_root"], got["path"], got["rest"]) == ("", "/echo/café/x", "café/x")
        assert got["query"] == [["a", "1"]]
        resp = fe.request(
            "POST",
            "/form",
            body=b"a=1&b=two+words",
            headers=[("Content-Type", "application/x-www-form-urlencoded")],
        )
        assert json_of(resp)["fields"] == [["a", "1"], ["b", "two words"]]
        assert fe.get("/boom").status == 500
        if frontend == "lighttpd":
            got = json_of(fe.get("/app/echo/y?b=2"))
            assert (got["script_root"], got["path"], got["rest"]) == ("/app", "/echo/y", "y")


def test_flask_form(flask_nginx: FrontEnd) -> None:
    resp = flask_nginx.request(
        "POST",
        "/form",
        body=b"a=1&b=two+words&a=3",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
    )
    assert json_of(resp)["fields"] == [["a", "1"], ["a", "3"], ["b", "two words"]]


def test_flask_upload_50mb_without_memory_growth(
    flask_nginx: FrontEnd, flask_server: TrioscgiProcess
) -> None:
    check_upload_memory(flask_nginx, flask_server, "/upload")


def test_flask_raw_stream_50mb(flask_nginx: FrontEnd, flask_server: TrioscgiProcess) -> None:
    data = big_payload()
    peak_before = proc_status(flask_server.proc.pid, "VmHWM")
    got = json_of(flask_nginx.request("POST", "/raw", body=data))
    assert (got["size"], got["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert proc_status(flask_server.proc.pid, "VmHWM") - peak_before <= UPLOAD_RSS_BUDGET


def test_flask_streaming(flask_nginx: FrontEnd) -> None:
    resp = flask_nginx.get("/stream?n=300")
    assert resp.status == 200
    assert resp.body == b"".join(f"chunk {i}\n".encode() for i in range(300))


def test_flask_exception_is_a_500(flask_nginx: FrontEnd, flask_server: TrioscgiProcess) -> None:
    assert flask_nginx.get("/boom").status == 500
    assert flask_nginx.get("/").status == 200
    assert "boom from flask" in flask_server.logs()


def test_flask_send_file(flask_nginx: FrontEnd) -> None:
    # werkzeug's send_file wraps the file in wsgi.file_wrapper: sent with sendfile.
    resp = flask_nginx.get("/file")
    assert resp.status == 200
    assert resp.body == FILE_DATA


def test_flask_client_abort_closes_the_iterable(flask_nginx: FrontEnd, e2e_dir: Path) -> None:
    marker = e2e_dir / f"flask-abort-{time.monotonic_ns()}"
    request = f"GET /endless?marker={marker} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", flask_nginx.port), timeout=HTTP_TIMEOUT) as s:
        s.sendall(request)
        received = 0
        while received < 512 * 1024:
            data = s.recv(65536)
            assert data, "the stream ended before the client aborted"
            received += len(data)
        # RST, like a browser tab closed mid-download.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + HTTP_TIMEOUT
    while not marker.exists():
        assert time.monotonic() < deadline, "the WSGI iterable was never closed"
        time.sleep(0.05)
    # The thread is free: the server keeps serving.
    assert flask_nginx.get("/").status == 200


def test_flask_threads_serve_concurrently(flask_nginx: FrontEnd) -> None:
    # wsgi_threads defaults to 16: 16 requests are all inside a view at once. Each
    # view waits at a barrier for the other 15 (the barrier's timeout only bounds a
    # failure), so one request queued behind another breaks the meeting for all.
    import concurrent.futures

    n = Config().wsgi_threads
    target = f"/meet?n={n}&key={time.monotonic_ns()}"
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(lambda _: flask_nginx.get(target), range(n)))
    assert [r.status for r in responses] == [200] * n, [r.body for r in responses]
    assert len({r.body for r in responses}) == n  # n different threads


# --- Django -------------------------------------------------------------------------------


def test_django_routes_and_paths(django_nginx: FrontEnd) -> None:
    resp = django_nginx.get("/")
    assert (resp.status, resp.body) == (200, b"hello from django\n")
    got = json_of(django_nginx.get("/echo/a%20b?q=1"))
    assert (got["rest"], got["path"], got["script_name"]) == ("a b", "/echo/a b", "")
    got = json_of(django_nginx.get("/app/echo/z?q=2"))
    assert (got["script_name"], got["path"], got["path_info"]) == ("/app", "/app/echo/z", "/echo/z")
    assert got["absolute_uri"].endswith("/app/echo/z?q=2")
    assert django_nginx.get("/missing").status == 404


def test_django_form(django_nginx: FrontEnd) -> None:
    resp = django_nginx.request(
        "POST",
        "/form",
        body=b"x=1&y=%C3%A9&x=2",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
    )
    assert json_of(resp)["fields"] == [["x", "1"], ["x", "2"], ["y", "é"]]


def test_django_upload_50mb_without_memory_growth(
    django_nginx: FrontEnd, django_server: TrioscgiProcess
) -> None:
    check_upload_memory(django_nginx, django_server, "/upload")


def test_django_streaming(django_nginx: FrontEnd) -> None:
    resp = django_nginx.get("/stream?n=250")
    assert resp.status == 200
    assert resp.body == b"".join(f"chunk {i}\n".encode() for i in range(250))


def test_django_exception_is_a_500(django_nginx: FrontEnd, django_server: TrioscgiProcess) -> None:
    assert django_nginx.get("/boom").status == 500
    assert django_nginx.get("/").status == 200
    assert "boom from django" in django_server.logs()


# --- Starlette FileResponse: pathsend -------------------------------------------------------


def test_starlette_file_response_uses_pathsend(files_nginx: FrontEnd) -> None:
    resp = files_nginx.get("/file")
    assert resp.status == 200
    assert resp.header("Content-Length") == str(len(FILE_DATA))
    assert resp.body == FILE_DATA
    got = json_of(files_nginx.get("/kinds"))
    assert got["kinds"] == ["http.response.start", "http.response.pathsend"]
    assert {"http.response.pathsend", "http.response.zerocopysend"} <= set(got["extensions"])


def test_pathsend_repeated(files_nginx: FrontEnd) -> None:
    # Many in a row: no fd left open (the server opens and closes the file each time).
    for _ in range(20):
        assert files_nginx.get("/file").body == FILE_DATA


def test_files_server_fds_do_not_leak(files_nginx: FrontEnd, files_server: TrioscgiProcess) -> None:
    fd_dir = f"/proc/{files_server.proc.pid}/fd"
    files_nginx.get("/file")
    before = len(os.listdir(fd_dir))
    for _ in range(30):
        files_nginx.get("/file")
    assert len(os.listdir(fd_dir)) <= before
